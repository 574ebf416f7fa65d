"""Artifacts that run on any x86-64 (`export --target-cpu`), and the kernels' level in the runners.

A tiny llama2-style model is exported with the default target (avx2) as .so, .pt2 and .pte, and
for avx512 as .so and .pt2. The avx2 artifacts must hold no AVX-512 code (by disassembly) and run
under ../shared/tools/avx2-cpu (QEMU as a Haswell: no AVX-512), giving eager's tokens; the
avx512 ones must be refused there in one line, before their code is loaded. QEMU is slow (about
20 s for a few tokens of the tiny model), so those runs are short and few.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import AOTI_RUN, CONTEXT, ET_RUN, Exported, cli, fed_tokens, greedy, one_line_error, shared_folder  # noqa: E402

from torchchat import metadata, target_cpu  # noqa: E402
from torchchat.errors import UserError  # noqa: E402

# ../shared/tools/avx2-cpu beside the checkout: runs a program as an AVX2-only CPU would (QEMU).
AVX2_CPU = Path(os.environ.get("TORCHCHAT_AVX2_CPU", Path(__file__).resolve().parents[3] / "shared" / "tools" / "avx2-cpu"))
pytestmark = pytest.mark.export
PROMPT = "Once upon a time"
QEMU_NEW = 4  # tokens generated under QEMU

needs_aoti_run = pytest.mark.skipif(not AOTI_RUN.is_file(), reason="build it: scripts/build_native.sh aoti")
needs_et_run = pytest.mark.skipif(not ET_RUN["release"].is_file(), reason="build it: scripts/build_native.sh et")
needs_qemu = pytest.mark.skipif(not AVX2_CPU.is_file() or shutil.which("qemu-x86_64-static") is None,
                                reason="needs qemu-x86_64-static and the avx2-cpu wrapper")
needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
has_avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= target_cpu.cpu_features()


@pytest.fixture(scope="module")
def llama2(tmp_path_factory) -> Exported:
    return Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ("so", "pt2", "pte"))


@pytest.fixture(scope="module")
def avx512(llama2, tmp_path_factory) -> dict[str, Path]:
    """The same model's .so and .pt2 for --target-cpu avx512 (exported on any machine; run where it fits)."""
    from backend_helpers import model_args

    from torchchat.export import export_model
    from torchchat.load import load_model

    folder = tmp_path_factory.mktemp("target_avx512")
    loaded = load_model(model_args(llama2.checkpoint, llama2.tokenizer))
    paths = {"so": folder / "model.so", "pt2": folder / "model.pt2"}
    export_model(loaded.model, loaded.info, "fp32", CONTEXT, paths["so"], paths["pt2"], target="avx512")
    return paths


def run(runner: Path, model: Path, tokenizer: Path, *flags, env: dict | None = None, qemu: bool = False,
        trace: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """aoti_run or et_run, natively or under the AVX2 CPU, with extra environment."""
    env = {**os.environ, **(env or {})}
    if trace is not None:
        env["TORCHCHAT_TRACE"] = str(trace)
    prefix = [str(AVX2_CPU)] if qemu else []
    return subprocess.run([*prefix, str(runner), str(model), "-z", str(tokenizer), *map(str, flags)],
                          capture_output=True, text=True, timeout=timeout, env=env, errors="replace")


def shared_libraries(path: Path, tmp_path: Path) -> list[Path]:
    """The compiled code of an AOTI artifact: the .so itself, or the libraries inside a .pt2."""
    if path.suffix == ".so":
        return [path]
    out = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".so"):
                out.append(tmp_path / Path(name).name)
                out[-1].write_bytes(z.read(name))
    assert out, f"no shared library in {path}"
    return out


# AVX-512 in a disassembly: 512-bit registers, the mask registers, the 16 upper xmm/ymm registers
# (EVEX only); and AVX-VNNI's vpdpbusd/vpdpwssd, which Haswell-class AVX2 CPUs lack.
AVX512_OR_VNNI = r"%zmm|%k[0-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])\b|vpdpbusd|vpdpwssd|\{evex\}"


def avx512_instructions(library: Path) -> int:
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout
    import re

    pattern = re.compile(AVX512_OR_VNNI)
    return sum(1 for line in dump.splitlines() if pattern.search(line))


# ---------------------------------------------------------------------------------------------
# What the artifacts record and contain


def test_metadata_records_the_target(llama2, avx512):
    so = json.loads(metadata.read_so_metadata(llama2.paths["so"]))
    assert (so["target_cpu"], so["cpu_features"]) == ("avx2", ["avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt"])
    pt2 = json.loads(target_cpu.pt2_metadata(llama2.paths["pt2"], metadata.PT2_KEY))
    assert pt2["target_cpu"] == "avx2"
    wide = json.loads(target_cpu.pt2_metadata(avx512["pt2"], metadata.PT2_KEY))
    assert wide["target_cpu"] == "avx512" and {"avx512f", "avx512bw", "avx512vl"} <= set(wide["cpu_features"])


def test_pte_records_no_cpu_and_holds_no_machine_code(llama2):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(llama2.paths["pte"])
    (text,) = program.load_method("get_metadata_json").execute([])
    meta = json.loads(str(text))
    assert (meta["target_cpu"], meta["cpu_features"]) == ("any", [])
    # XNNPACK's part is a serialized graph, our kernels are linked into the runner: no library inside.
    assert b"\x7fELF" not in llama2.paths["pte"].read_bytes()


@needs_objdump
@pytest.mark.parametrize("fmt", ["so", "pt2"])
def test_avx2_artifact_has_no_avx512_code(llama2, avx512, fmt, tmp_path):
    for library in shared_libraries(llama2.paths[fmt], tmp_path):
        assert avx512_instructions(library) == 0, library
    # The same check finds the AVX-512 code of the avx512 export (and so can fail).
    assert sum(avx512_instructions(lib) for lib in shared_libraries(avx512[fmt], tmp_path / "wide")) > 0


def test_native_exports_have_what_inductor_picks_here():
    """`native` is Inductor's default: no -march or vector ISA imposed; the features recorded are the CPU's."""
    native = target_cpu.target("native")
    assert native.march is None and native.simdlen is None
    assert set(native.features) == target_cpu.cpu_features() and {"avx2", "fma"} <= set(native.features)


def test_unknown_target_is_a_user_error():
    with pytest.raises(UserError, match="--target-cpu"):
        target_cpu.target("avx10")


# ---------------------------------------------------------------------------------------------
# Python refuses what this CPU cannot run, before loading it


@pytest.mark.parametrize("fmt", ["so", "pt2"])
def test_python_refuses_an_artifact_for_features_this_cpu_lacks(avx512, fmt, monkeypatch):
    from torchchat.backends.aoti import AOTIDecoder

    # This CPU as an AVX2 one; loading the library would be the failure this check prevents.
    monkeypatch.setattr(target_cpu, "cpu_features", lambda: set(target_cpu.TARGETS["avx2"].features))
    monkeypatch.setattr(torch._C._aoti, "AOTIModelContainerRunnerCpu", None)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", None)
    with pytest.raises(UserError, match=r"compiled for avx512 CPUs; this CPU lacks avx512f, avx512bw, avx512cd"):
        AOTIDecoder(avx512[fmt])


def test_cli_refuses_in_one_line(llama2, avx512, monkeypatch, capsys):
    monkeypatch.setattr(target_cpu, "cpu_features", lambda: set(target_cpu.TARGETS["avx2"].features))
    p = cli("generate", "--dso-path", avx512["so"], "--tokenizer-path", llama2.tokenizer, "--prompt", "hi",
            capsys=capsys)
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: {avx512['so']}: compiled for avx512 CPUs; this CPU lacks avx512f")
    assert p.stderr.count("\n") == 1


def test_unknown_feature_is_refused():
    with pytest.raises(UserError, match="cannot check: avx99"):
        target_cpu.check(json.dumps({"target_cpu": "native", "cpu_features": ["avx2", "avx99"]}), "m.so")
    target_cpu.check(json.dumps({"format_version": 1}), "old.so")  # not recorded: not checked


@pytest.mark.skipif(not has_avx512, reason="this CPU lacks AVX-512")
def test_python_avx512_artifact_matches_eager_where_it_fits(llama2, avx512):
    from torchchat.backends.aoti import AOTIDecoder

    tok, info = llama2.eager.tokenizer, llama2.eager.info
    ids = tok.encode(PROMPT, bos=info.add_bos)
    want = greedy(llama2.eager_decoder(), ids, info.stop_ids)
    for fmt in ("so", "pt2"):
        assert greedy(AOTIDecoder(avx512[fmt]), ids, info.stop_ids) == want, fmt


# ---------------------------------------------------------------------------------------------
# The runners on an AVX2 CPU (QEMU)


def eager_tokens(llama2, n_new: int) -> tuple[list[int], list[int]]:
    tok, info = llama2.eager.tokenizer, llama2.eager.info
    ids = tok.encode(PROMPT, bos=info.add_bos)
    return ids, greedy(llama2.eager_decoder(), ids, info.stop_ids)[:n_new]


@needs_aoti_run
@needs_qemu
def test_aoti_run_avx2_artifact_on_an_avx2_cpu_matches_eager(llama2, tmp_path):
    ids, want = eager_tokens(llama2, QEMU_NEW)
    trace = tmp_path / "trace.jsonl"
    p = run(AOTI_RUN, llama2.paths["so"], llama2.runner_tokenizer, "-t", "0", "-n", len(ids) + QEMU_NEW, "-i", PROMPT,
            qemu=True, trace=trace)
    assert p.returncode == 0, p.stderr  # 132 would be SIGILL
    assert "kernels avx2" in p.stderr  # the CPU has no AVX-512 and, as QEMU's Haswell, no AVX-VNNI
    assert fed_tokens(trace)[:len(ids) + QEMU_NEW - 1] == ids + want[:-1]


@needs_aoti_run
@needs_qemu
@pytest.mark.parametrize("fmt", ["so", "pt2"])
def test_aoti_run_refuses_avx512_artifact_on_an_avx2_cpu(llama2, avx512, fmt):
    line = one_line_error(run(AOTI_RUN, avx512[fmt], llama2.runner_tokenizer, "-i", "hi", "-n", 8, qemu=True))
    assert f"{avx512[fmt]}: compiled for avx512 CPUs; this CPU lacks avx512f" in line


@needs_aoti_run
@pytest.mark.skipif(not has_avx512, reason="this CPU lacks AVX-512")
def test_aoti_run_avx512_artifact_where_it_fits(llama2, avx512, tmp_path):
    ids, want = eager_tokens(llama2, 8)
    trace = tmp_path / "trace.jsonl"
    p = run(AOTI_RUN, avx512["so"], llama2.runner_tokenizer, "-t", "0", "-n", len(ids) + 8, "-i", PROMPT, trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(ids) + 7] == ids + want[:-1]


# ---------------------------------------------------------------------------------------------
# The kernels' level: named in the description line; TORCHCHAT_KERNELS errors refused


def runners():
    return [pytest.param(AOTI_RUN, "so", marks=needs_aoti_run, id="aoti_run"),
            pytest.param(ET_RUN["release"], "pte", marks=needs_et_run, id="et_run")]


@pytest.mark.parametrize("runner,fmt", runners())
def test_runner_names_the_kernels_in_use(llama2, runner, fmt):
    from torchchat import kernels

    p = run(runner, llama2.paths[fmt], llama2.runner_tokenizer, "-i", "hi", "-n", 8)
    assert p.returncode == 0, p.stderr
    assert f", kernels {kernels.isa()}\n" in p.stderr  # the same dispatch as in this process
    p = run(runner, llama2.paths[fmt], llama2.runner_tokenizer, "-i", "hi", "-n", 8, env={"TORCHCHAT_KERNELS": "avx2"})
    assert p.returncode == 0, p.stderr
    assert ", kernels avx2\n" in p.stderr


@pytest.mark.parametrize("runner,fmt", runners())
def test_runner_refuses_unknown_kernels(llama2, runner, fmt):
    line = one_line_error(run(runner, llama2.paths[fmt], llama2.runner_tokenizer, "-i", "hi", "-n", 8,
                              env={"TORCHCHAT_KERNELS": "bogus"}))
    assert line == ("error: TORCHCHAT_KERNELS=bogus: unknown kernels "
                    "(expected generic, avx2, avx2-vnni, avx512 or avx512-vnni)")


@needs_qemu
@pytest.mark.parametrize("runner,fmt", runners())
def test_runner_refuses_kernels_the_cpu_lacks(llama2, runner, fmt):
    line = one_line_error(run(runner, llama2.paths[fmt], llama2.runner_tokenizer, "-i", "hi", "-n", 8,
                              env={"TORCHCHAT_KERNELS": "avx512"}, qemu=True))
    assert line == "error: TORCHCHAT_KERNELS=avx512: this CPU lacks AVX-512 F/BW/VL, FMA and F16C"


@pytest.mark.parametrize("flag,fmt", [("--dso-path", "so"), ("--pte-path", "pte")])
def test_python_refuses_unknown_kernels(llama2, flag, fmt):
    # A fresh process: the kernels choose their level once per process.
    p = cli("generate", flag, llama2.paths[fmt], "--tokenizer-path", llama2.tokenizer, "--prompt", "hi",
            "--max-new-tokens", "2", env={**os.environ, "TORCHCHAT_KERNELS": "bogus"})
    assert p.returncode == 1
    # (after "Compiling torchchat kernels..." when the library is built for the first time)
    assert p.stderr.strip().splitlines()[-1] == ("error: TORCHCHAT_KERNELS=bogus: unknown kernels "
                                                 "(expected generic, avx2, avx2-vnni, avx512 or avx512-vnni)")
    assert "Traceback" not in p.stderr


LEVEL_NEEDS = {"avx2-vnni": {"avx2", "fma", "f16c", "avxvnni"},
               "avx512": {"avx512f", "avx512bw", "avx512vl"},
               "avx512-vnni": {"avx512f", "avx512bw", "avx512vl", "avx512vnni"}}
LACKING = [level for level, needs in LEVEL_NEEDS.items() if not needs <= target_cpu.cpu_features()]


@pytest.mark.skipif(not LACKING, reason="this CPU has every kernel level (the runner test covers one it lacks, in QEMU)")
def test_python_refuses_kernels_the_cpu_lacks(llama2):
    p = cli("generate", "--dso-path", llama2.paths["so"], "--tokenizer-path", llama2.tokenizer, "--prompt", "hi",
            "--max-new-tokens", "2", env={**os.environ, "TORCHCHAT_KERNELS": LACKING[0]})
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: TORCHCHAT_KERNELS={LACKING[0]}: this CPU lacks ")
    assert "Traceback" not in p.stderr
