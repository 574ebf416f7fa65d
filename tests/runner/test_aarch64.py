"""et_run cross-built for aarch64 (scripts/build_native.sh et --target aarch64), run under
qemu-aarch64-static: tiny-model programs of every ExecuTorch scheme give eager's tokens and the
x86 et_run's, with each aarch64 kernel level forced (neon-dotprod, neon, generic) and on a CPU
model without the dot-product extension (Cortex-A53); -h and bad input end in one line there too.

Skipped, with the reason, without the cross-built runner or qemu-aarch64-static.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from backend_helpers import (  # noqa: E402
    ET_RUN, ROOT, fed_tokens, greedy, model_args, one_line_error,
)
from tiny_models import tiny_hf_model, write_hf  # noqa: E402
from tiny_tokenizers import write_tiktoken  # noqa: E402

pytestmark = pytest.mark.export

ET_RUN_AARCH64 = ROOT / "cmake-out-aarch64" / "et_run"
QEMU = shutil.which("qemu-aarch64-static")
SYSROOT = "/usr/aarch64-linux-gnu"  # g++-aarch64-linux-gnu's libc, for qemu's -L
# Its C library ahead of the multiarch libc6:arm64 (another glibc build than the cross ld.so:
# together they hang in pthread_create), as in cmake/aarch64-linux-gnu.cmake.
QEMU_ARGS = ["-L", SYSROOT, "-E", f"LD_LIBRARY_PATH={SYSROOT}/lib"]
CONTEXT = 128
N_NEW = 24
PROMPTS = ["Once upon a time", "def fibonacci(n):"]

# The ExecuTorch schemes (torchchat/quantize.py): our kernels run the linears of all but
# a8w4dq (XNNPACK's), and attention in every one.
SCHEMES = {
    "fp32": None,
    "int8": '{"linear:int8": {"groupsize": 0}}',
    "int4": '{"linear:int4": {"groupsize": 32}}',
    "int4-a8": '{"linear:int4": {"groupsize": 32, "activations": "int8"}}',
    "a8w4dq": '{"linear:a8w4dq": {"groupsize": 32}}',
}
# (TORCHCHAT_KERNELS, qemu's CPU model): "max" has the dot-product extension, the Cortex-A53 not.
LEVELS = [("neon-dotprod", "max"), ("neon", "max"), ("generic", "max"), (None, "cortex-a53")]


def runner() -> Path:
    if QEMU is None:
        pytest.skip("qemu-aarch64-static not installed (scripts/install_native_deps.sh)")
    if not ET_RUN_AARCH64.is_file():
        pytest.skip("build it: scripts/build_native.sh et --target aarch64")
    return ET_RUN_AARCH64


def run_aarch64(*args, kernels=None, cpu="max", trace=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TORCHCHAT_KERNELS"}
    if kernels:
        env["TORCHCHAT_KERNELS"] = kernels
    if trace is not None:
        env["TORCHCHAT_TRACE"] = str(trace)
    return subprocess.run([QEMU, "-cpu", cpu, *QEMU_ARGS, str(runner()), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, errors="replace")


def run_x86(*args, trace):
    env = {k: v for k, v in os.environ.items() if k != "TORCHCHAT_KERNELS"}
    env["TORCHCHAT_TRACE"] = str(trace)
    return subprocess.run([str(ET_RUN["release"]), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120, errors="replace")


class Programs:
    """A llama3-style tiny model (tiktoken, GQA) exported once per scheme, with eager's greedy tokens."""

    def __init__(self, folder: Path):
        from torchchat import cli
        from torchchat.backends.eager import EagerDecoder
        from torchchat.load import load_model

        self.checkpoint = write_hf(tiny_hf_model("llama3"), folder / "hf")
        self.tokenizer = write_tiktoken(folder / "tokenizer.model")
        self.pte, self.eager = {}, {}
        for name, spec in SCHEMES.items():
            self.pte[name] = folder / f"{name}.pte"
            quantize = ["--quantize", spec] if spec else []
            argv = ["export", "--checkpoint-path", str(self.checkpoint), "--tokenizer-path", str(self.tokenizer),
                    *quantize, "--max-seq-length", str(CONTEXT), "--output-pte-path", str(self.pte[name])]
            assert cli.main(argv) == 0, name
            loaded = load_model(model_args(self.checkpoint, self.tokenizer, quantize=spec))
            tok, info = loaded.tokenizer, loaded.info
            self.eager[name] = {}
            for prompt in PROMPTS:
                ids = tok.encode(prompt, bos=info.add_bos)
                want = greedy(EagerDecoder(loaded.model, CONTEXT), ids, info.stop_ids)[:N_NEW]
                self.eager[name][prompt] = ids + want[:-1]  # what a runner feeds the model


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> Programs:
    runner()
    return Programs(tmp_path_factory.mktemp("aarch64"))


def fed(run, pte, tokenizer, prompt, trace, **kw) -> list[int]:
    p = run(pte, "-z", tokenizer, "-t", "0", "-n", len(prompt) + N_NEW, "-i", prompt, trace=trace, **kw)
    assert p.returncode == 0, p.stderr
    return fed_tokens(trace)


def test_help():
    p = run_aarch64("-h")
    assert p.returncode == 0 and "Usage:   et_run <model_path>" in p.stdout + p.stderr


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tokens_equal_eager_and_x86_at_every_level(programs, scheme, tmp_path):
    x86 = ET_RUN["release"].is_file()
    if scheme == "a8w4dq" and not x86:
        pytest.skip("a8w4dq is checked against the x86 et_run: build it (scripts/build_native.sh et)")
    for i, prompt in enumerate(PROMPTS):
        want = programs.eager[scheme][prompt]
        if x86:
            got = fed(run_x86, programs.pte[scheme], programs.tokenizer, prompt, tmp_path / f"x86-{i}.jsonl")
            if scheme == "a8w4dq":
                # XNNPACK's linears quantize the activations with their own rounding, not eager's
                # (tests/python/test_quantize.py): the x86 program's tokens are the reference.
                want = got
            assert got[:len(want)] == want, (scheme, prompt, "x86 et_run")
        for kernels, cpu in LEVELS:
            trace = tmp_path / f"{kernels}-{cpu}-{i}.jsonl"
            got = fed(run_aarch64, programs.pte[scheme], programs.tokenizer, prompt, trace, kernels=kernels, cpu=cpu)
            assert got[:len(want)] == want, (scheme, prompt, kernels, cpu)
    if not x86:
        pytest.skip("checked against eager only: build the x86 et_run too (scripts/build_native.sh et)")


def test_the_model_line_names_the_level(programs):
    for kernels, cpu, level in [(None, "max", "neon-dotprod"), (None, "cortex-a53", "neon"), ("neon", "max", "neon")]:
        p = run_aarch64(programs.pte["int4"], "-z", programs.tokenizer, "-t", "0", "-n", 8, "-i", "Hi",
                        kernels=kernels, cpu=cpu)
        assert p.returncode == 0, p.stderr
        assert f"kernels {level}" in p.stderr, (kernels, cpu, p.stderr)


def test_neon_dotprod_forced_without_it_is_refused_in_one_line(programs):
    p = run_aarch64(programs.pte["int4"], "-z", programs.tokenizer, "-i", "Hi", kernels="neon-dotprod",
                    cpu="cortex-a53")
    assert one_line_error(p) == ("error: TORCHCHAT_KERNELS=neon-dotprod: this CPU lacks the dot-product extension "
                                 "(asimddp)")
    p = run_aarch64(programs.pte["int4"], "-z", programs.tokenizer, "-i", "Hi", kernels="avx2")
    assert one_line_error(p) == "error: TORCHCHAT_KERNELS=avx2: unknown kernels (expected generic, neon or neon-dotprod)"


def test_bad_input_is_one_line(programs, tmp_path):
    data = programs.pte["fp32"].read_bytes()
    cut = tmp_path / "cut.pte"
    cut.write_bytes(data[: len(data) // 2])
    assert str(cut) in one_line_error(run_aarch64(cut, "-z", programs.tokenizer, "-i", "Hi"))
    wrong = tmp_path / "tokenizer.json"
    wrong.write_text("{not json")
    assert one_line_error(run_aarch64(programs.pte["fp32"], "-z", wrong, "-i", "Hi")).startswith("error: ")
    missing = tmp_path / "none.pte"
    assert str(missing) in one_line_error(run_aarch64(missing, "-z", programs.tokenizer, "-i", "Hi"))
