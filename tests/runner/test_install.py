"""cmake --install puts libtorchchat, torchchat.h, a CMake package and a pkg-config file into a
prefix, and a C program outside the project builds against it both ways and runs; the library
exports the C API and nothing else."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "cmake-out"
CONSUMER = Path(__file__).resolve().parent / "install_consumer"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    if not (BUILD / "libtorchchat.so").exists():
        pytest.skip("cmake-out/libtorchchat.so is not built (scripts/build_native.sh core)")
    prefix = tmp_path_factory.mktemp("prefix")
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True, capture_output=True)
    return prefix


def run(args, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return p


def test_the_prefix_holds_header_library_and_packages(prefix):
    lib = next(d for d in ("lib", "lib64") if (prefix / d).is_dir())
    assert (prefix / "include" / "torchchat.h").is_file()
    assert (prefix / lib / "libtorchchat.so.1").exists() and (prefix / lib / "libtorchchat.so").is_symlink()
    assert (prefix / lib / "cmake" / "torchchat" / "torchchat-config.cmake").is_file()
    assert (prefix / lib / "pkgconfig" / "torchchat.pc").is_file()


def test_find_package_builds_a_c_program(prefix, tmp_path):
    build = tmp_path / "build"
    run(["cmake", "-S", CONSUMER, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"])
    run(["cmake", "--build", build])
    out = run([build / "consumer"]).stdout
    assert out == "torchchat 1 (header 1)\n"


def test_pkg_config_builds_a_c_program(prefix, tmp_path):
    if shutil.which("pkg-config") is None or shutil.which("cc") is None:
        pytest.skip("pkg-config or cc is missing")
    lib = next(d for d in ("lib", "lib64") if (prefix / d).is_dir())
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / lib / "pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs", "torchchat"], env=env).stdout.split()
    exe = tmp_path / "consumer"
    run(["cc", "-std=c11", "-Wall", "-Werror", CONSUMER / "consumer.c", "-o", exe, *flags])
    assert run([exe]).stdout == "torchchat 1 (header 1)\n"
    # A wrong file is an error from the installed library too.
    p = subprocess.run([str(exe), str(CONSUMER / "consumer.c")], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "not a model" in p.stderr


def test_only_the_api_is_exported():
    library = BUILD / "libtorchchat.so"
    if not library.exists():
        pytest.skip(f"{library} is not built")
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1].split("@")[0] for line in out.splitlines() if line.split()[1] != "A"]
    assert names and all(n.startswith("tc_") for n in names), [n for n in names if not n.startswith("tc_")]
