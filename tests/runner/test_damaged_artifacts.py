"""Damaged exports that crashed the runners (segfault, abort, a C++ stack trace), each refused now with
one line and exit 1, by aoti_run / et_run (and their ASan/UBSan builds when built) and by the Python CLI.
The artifacts are real exports of a tiny random llama (scripts/corruption_campaign.py build), damaged
the way the corruption campaign found."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from native_helpers import BUILD_DIRS, ROOT, assert_clean_failure, run_tool

pytestmark = pytest.mark.export  # exports a tiny model to .so, .pt2 and .pte

sys.path.insert(0, str(ROOT / "scripts"))
import corruption_campaign  # noqa: E402

RUN_ARGS = ["-i", "Once upon", "-n", "8", "-t", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return corruption_campaign.build(tmp_path_factory.mktemp("tiny"),
                                     {"model.so", "model.pt2", "model.pte", "tokenizer.bin", "tokenizer.model"})


def runners(name: str) -> list[Path]:
    found = [d / name for d in BUILD_DIRS.values() if (d / name).exists()]
    if not found:
        pytest.skip(f"cmake-out/{name} is not built (./scripts/build_native.sh {name.split('_')[0]})")
    return found


def python_cli(flag: str, model: Path, tiny) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "torchchat.py"), "generate", flag, str(model), "--tokenizer-path",
                           str(tiny["tokenizer.model"]), "--prompt", "Once upon", "--max-new-tokens", "8",
                           "--temperature", "0"], capture_output=True, text=True, errors="replace", timeout=600)


def assert_python_refuses(p: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit 1, the last line of stderr 'error: ...' matching `pattern`, and no traceback."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 1 and lines and lines[-1].startswith("error: "), f"exit {p.returncode}: {p.stderr[-2000:]}"
    assert "Traceback" not in p.stderr and pattern in lines[-1], p.stderr[-2000:]


def damaged(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    edit(data)
    dst.write_bytes(bytes(data))
    return dst


def rename_constant(data: bytearray) -> None:
    """One letter of a constant's name in the stored constants index, as a bit flip would."""
    name = b'"layers_1_feed_forward_w2_panels"'
    at = data.index(name)
    data[at + len(name) - 2] = ord("z")


@pytest.mark.parametrize("fmt, flag", [("so", "--dso-path"), ("pt2", "--aoti-package-path")])
def test_constant_missing_from_the_index(tiny, tmp_path, fmt, flag):
    # AOT Inductor only warned ("Found constant ... not provided by user!") and the model called our
    # kernel with a null tensor: segfault.
    model = damaged(tiny[f"model.{fmt}"], tmp_path / f"renamed.{fmt}", rename_constant)
    for runner in runners("aoti_run"):
        p = run_tool(runner, [model, "-z", tiny["tokenizer.bin"], *RUN_ARGS])
        assert_clean_failure(p)
        assert "damaged constants" in p.stderr and "layers_1_feed_forward_w2_panels" in p.stderr
    assert_python_refuses(python_cli(flag, model, tiny), "damaged constants")


def so_block(data: bytes) -> tuple[int, int]:
    """(start of the metadata block, start of its checksum record) in an exported .so."""
    start = data.index(b"TCHMETA1")
    n = struct.unpack_from("<Q", data, start + 8)[0]
    return start, start + 16 + n


def test_metadata_that_promises_more_context_than_the_compiled_cache(tiny, tmp_path):
    # 80 positions where the KV cache and rotary table hold 64: a long prompt indexed past the
    # rotary table in an OpenMP worker (terminate, or a C++ stack trace).
    def longer_context(data: bytearray) -> None:
        at = data.index(b'"max_seq_len": 64')
        data[at:at + 17] = b'"max_seq_len": 80'
        start, record = so_block(data)
        json_crc = zlib.crc32(bytes(data[start + 16:record]))
        data[record + 12:record + 16] = struct.pack("<I", json_crc)  # edited consistently, not damaged

    model = damaged(tiny["model.so"], tmp_path / "longer.so", longer_context)
    prompt = "Once upon a time there was a little dog. " * 6  # about 70 tokens
    for runner in runners("aoti_run"):
        p = run_tool(runner, [model, "-z", tiny["tokenizer.bin"], "-i", prompt, "-n", "78", "-t", "0"])
        assert_clean_failure(p)
        assert "max_seq_len 80 exceeds the compiled model's context of 64" in p.stderr
    assert_python_refuses(python_cli("--dso-path", model, tiny), "exceeds the compiled model's context of 64")


def flip_in_library(fmt: str):
    """A byte flipped inside the compiled code: the .so's ELF content, the .pt2's shared library."""
    def edit(data: bytearray) -> None:
        if fmt == "so":
            data[so_block(data)[0] // 2] ^= 0x5A
            return
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            info = next(i for i in z.infolist() if i.filename.endswith(".so"))
        data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0x5A
    return edit


@pytest.mark.parametrize("fmt, flag", [("so", "--dso-path"), ("pt2", "--aoti-package-path")])
def test_damaged_library_code_is_refused_before_it_runs(tiny, tmp_path, fmt, flag):
    model = damaged(tiny[f"model.{fmt}"], tmp_path / f"code.{fmt}", flip_in_library(fmt))
    for runner in runners("aoti_run"):
        p = run_tool(runner, [model, "-z", tiny["tokenizer.bin"], *RUN_ARGS])
        assert_clean_failure(p)
        assert "checksum" in p.stderr
    assert_python_refuses(python_cli(flag, model, tiny), "damaged")


def rewritten_program(src: Path, dst: Path, edit) -> Path:
    """The .pte deserialized, its forward plan edited, serialized again: passes ExecuTorch's verifier."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte = deserialize_pte_binary(src.read_bytes())
    edit(next(p for p in pte.program.execution_plan if p.name == "forward"))
    dst.write_bytes(bytes(serialize_pte_binary(pte, extract_delegate_segments=True)))
    return dst


def kernel_calls(plan) -> list:
    return [i.instr_args for i in plan.chains[0].instructions if hasattr(i.instr_args, "op_index")]


def operator_index_out_of_range(plan) -> None:
    # ExecuTorch 1.5.1 logs "Op index ... out of range" and returns Ok once a later instruction
    # resolves: that instruction's kernel was garbage (segfault).
    calls = kernel_calls(plan)
    calls[len(calls) // 2].op_index = 40970


def int_where_a_tensor_goes(plan) -> None:
    # The attention call's input_pos becomes an Int value: a fatal check in EValue::toTensor
    # (abort, a bare "Aborted" with our log handler).
    call = next(c for c in kernel_calls(plan) if plan.operators[c.op_index].name == "torchchat::cache_attention")
    call.args[3] = next(i for i, v in enumerate(plan.values) if type(v.val).__name__ == "Int")


@pytest.mark.parametrize("edit, pattern", [(operator_index_out_of_range, "Op index 40970 out of range"),
                                           (int_where_a_tensor_goes, "EValue is not a Tensor")])
def test_program_that_passes_verification_but_cannot_run(tiny, tmp_path, edit, pattern):
    model = rewritten_program(tiny["model.pte"], tmp_path / "damaged.pte", edit)
    for runner in runners("et_run"):
        p = run_tool(runner, [model, "-z", tiny["tokenizer.bin"], *RUN_ARGS])
        assert_clean_failure(p)
        assert pattern in p.stderr
    assert_python_refuses(python_cli("--pte-path", model, tiny), pattern)
