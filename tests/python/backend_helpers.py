"""Helpers shared by the test files (not tests themselves): the command line, exported tiny
models, greedy decoding and chat on any decoder, and the native runners (aoti_run, et_run)
with their traces of what they fed the model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import tiny_hf_model, write_hf, write_llama2c_pt  # noqa: E402
from tiny_tokenizers import write_sentencepiece, write_tiktoken, write_tokenizer_bin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AOTI_RUN = ROOT / "cmake-out" / "aoti_run"
ET_RUN = {"release": ROOT / "cmake-out" / "et_run", "asan": ROOT / "cmake-out-asan" / "et_run"}
CONTEXT = 256
N_NEW = 64
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Ünïcödé and 日本語 text:"]
SYSTEM, USER = "You are a helpful assistant.", "What is the tallest mountain in the world?"


# ---------------------------------------------------------------------------------------------
# The command line


def cli(*args, stdin: str | None = None, env: dict | None = None, capsys=None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """`python3 torchchat.py ARGS` from the repository root: returncode, stdout and stderr (str).

    In a subprocess (stdin, env and timeout apply), or, given pytest's `capsys`, in this
    process through torchchat.cli.main (much faster; the cwd is the caller's)."""
    argv = [str(a) for a in args]
    if capsys is not None:
        from torchchat import cli as torchchat_cli

        assert stdin is None and env is None, "in-process runs take neither stdin nor env"
        code = torchchat_cli.main(argv)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)
    # Bytes, decoded by hand: text mode would turn a generated "\r" into "\n".
    p = subprocess.run([sys.executable, "torchchat.py", *argv], cwd=ROOT, capture_output=True, timeout=timeout, env=env,
                       input=None if stdin is None else stdin.encode())
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


# ---------------------------------------------------------------------------------------------
# Exported tiny models, and decoding on any decoder (eager, AOTI, ExecuTorch)


def model_args(checkpoint: Path, tokenizer: Path, **kw) -> Namespace:
    return Namespace(model=None, checkpoint_path=str(checkpoint), gguf_path=None, params_path=None,
                     tokenizer_path=str(tokenizer), dtype="fp32", max_seq_length=None, **kw)


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder that every test file of this pytest run sees, in every pytest-xdist worker."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared" / name


class Exported:
    """One tiny model: its checkpoint, tokenizer files, exported artifacts and eager reference.

    In a shared_folder, each style's files and each format's artifact are made once per test
    run, whichever test file asks first (the others wait on the folder's lock): exports are most
    of the tests' time. Tests copy an artifact before changing it."""

    def __init__(self, folder: Path, style: str, formats: tuple[str, ...]):
        from filelock import FileLock

        from torchchat.export import export_model
        from torchchat.load import load_model

        self.folder, self.style = folder, style
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):
            if style == "llama2":
                self.checkpoint, self.tokenizer = folder / "model.pt", folder / "sp" / "tokenizer.model"
                self.runner_tokenizer = folder / "tokenizer.bin"
            else:
                self.checkpoint, self.tokenizer = folder / "hf", folder / "tokenizer.model"
                self.runner_tokenizer = self.tokenizer
            if not (folder / "files-written").exists():
                hf = tiny_hf_model(style)
                if style == "llama2":
                    write_llama2c_pt(hf, self.checkpoint)
                    write_sentencepiece(folder / "sp")
                    write_tokenizer_bin(self.tokenizer, self.runner_tokenizer)
                else:
                    write_hf(hf, self.checkpoint)
                    write_tiktoken(self.tokenizer)
                (folder / "files-written").touch()
            self.paths = {f: folder / f"model.{f}" for f in formats}
            missing = {f: p for f, p in self.paths.items() if not p.exists()}  # exports are written whole
            if missing:
                loaded = load_model(model_args(self.checkpoint, self.tokenizer))
                export_model(loaded.model, loaded.info, "fp32", CONTEXT, missing.get("so"), missing.get("pt2"),
                             missing.get("pte"))
        self.eager = load_model(model_args(self.checkpoint, self.tokenizer))  # fresh: export set up caches

    def eager_decoder(self):
        from torchchat.backends.eager import EagerDecoder

        return EagerDecoder(self.eager.model, CONTEXT)


def older_version_copy(path: Path, out: Path) -> Path:
    """A copy of an artifact whose metadata says the previous format version (the JSON rewritten
    in place, same length, so everything after it stays where the loaders look for it)."""
    data = path.read_bytes()
    from torchchat.metadata import FORMAT_VERSION, SO_CHECKSUMS, read_so_metadata

    now, older = (f'"format_version": {v}'.encode() for v in (FORMAT_VERSION, FORMAT_VERSION - 1))
    assert data.count(now) == 1, f"{path}: the metadata JSON should appear once"
    data = data.replace(now, older)
    if data.count(SO_CHECKSUMS) == 1:  # a .so's block: the JSON's CRC-32 follows it, as its exporter wrote it
        import struct
        import zlib

        end = data.index(SO_CHECKSUMS)
        json = data[end - len(read_so_metadata(path).encode()):end]
        data = data[:end + 12] + struct.pack("<I", zlib.crc32(json)) + data[end + 16:]
    out.write_bytes(data)
    return out


def pte_kernel_calls(path: Path):
    """Counter of the portable (non-delegated) kernel calls in a .pte's forward, by operator name.
    In an ExecuTorch program each is a call that copies its output, and splits a delegate's work."""
    from collections import Counter

    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(path).read_bytes())
    program = getattr(pte, "program", pte)
    plan = next(p for p in program.execution_plan if p.name == "forward")
    return Counter(plan.operators[i.instr_args.op_index].name for chain in plan.chains for i in chain.instructions
                   if type(i.instr_args).__name__ == "KernelCall")


def greedy(decoder, ids, stop_ids, start_pos=0):
    from torchchat.generate import SamplingConfig, Sampler, generate

    return generate(decoder, ids, N_NEW, Sampler(SamplingConfig(temperature=0)), stop_ids, start_pos=start_pos)


def assert_same_greedy(decoder, reference, tok, info) -> None:
    """`decoder` continues every one of PROMPTS greedily as `reference` does, token for token."""
    for prompt in PROMPTS:
        ids = tok.encode(prompt, bos=info.add_bos)
        assert greedy(decoder, ids, info.stop_ids) == greedy(reference, ids, info.stop_ids), prompt


def system_chat_turn(tok, info) -> list[int]:
    """The first turn of a chat with SYSTEM as system prompt and USER as message, in the model's template."""
    from torchchat.chat import conversation

    return conversation(tok, info, SYSTEM).turn_tokens(USER)


def two_turn_chat(decoder, tok, info) -> tuple[list[int], list[int]]:
    """Greedy replies to USER (with SYSTEM) and then to a second question, the conversation
    kept in the decoder's KV cache as the Python chat keeps it."""
    from torchchat.chat import conversation

    conv = conversation(tok, info, SYSTEM)
    first = conv.turn_tokens(USER)
    reply = greedy(decoder, first, info.stop_ids)
    conv.reply_done(reply, info.stop_ids)
    second = conv.turn_tokens("And the second tallest?")
    return reply, greedy(decoder, second, info.stop_ids, start_pos=len(first) + len(reply) - 1)


# ---------------------------------------------------------------------------------------------
# The native runners


def aoti_run(model_path, tokenizer, *flags, stdin="", trace=None, env=None, timeout=120):
    env = {**os.environ, **(env or {})}
    if trace is not None:
        env["TORCHCHAT_AOTI_TRACE"] = str(trace)
    return subprocess.run([str(AOTI_RUN), str(model_path), "-z", str(tokenizer), *map(str, flags)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def et_runner(build: str = "release") -> Path:
    path = ET_RUN[build]
    if not path.is_file():
        pytest.skip(f"build it: scripts/build_native.sh et{' --sanitize' if build == 'asan' else ''}")
    return path


def et_run(model_path, tokenizer, *flags, stdin="", trace=None, env=None, build="release", timeout=120):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1",
           **(env or {})}
    if trace is not None:
        env["TORCHCHAT_TRACE"] = str(trace)
    return subprocess.run([str(et_runner(build)), str(model_path), "-z", str(tokenizer), *map(str, flags)],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env, errors="replace")


def fed_tokens(trace: Path) -> list[int]:
    """Everything the runner fed the model, in order (prompt, then each token it sampled but the last)."""
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    pos = 0
    out = []
    for c in calls:
        assert c["start_pos"] == pos  # one prefill, then one position at a time, no gaps
        out += c["tokens"]
        pos += len(c["tokens"])
    return out


def one_line_error(p) -> str:
    assert p.returncode != 0 and p.returncode < 128, (p.returncode, p.stderr)  # an error, not a signal
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def check_runner_chat_follows_the_models_template(run, model_path, exported, trace: Path, **kw) -> None:
    """Without -y, a runner (aoti_run, et_run) opens chat with the turn the model's own template (cut
    at export into the artifact's chat_turns) opens with, token for token as Python's chat builds it
    (held to transformers in test_chat_template.py)."""
    from torchchat.chat import conversation

    tok, info = exported.eager.tokenizer, exported.eager.info
    assert info.chat_turns is not None
    first = conversation(tok, info).turn_tokens(USER)
    p = run(model_path, exported.runner_tokenizer, "-m", "chat", "-i", USER, "-t", "0", "-n", len(first) + 4,
            trace=trace, **kw)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(first)] == first


def check_long_prompt_and_large_n(run, model_path, other_path, tokenizer) -> None:
    """A runner (aoti_run, et_run) refuses a prompt longer than the context in one line, and takes
    -n above the context as the context (the runner's -n: 0 = max_seq_len): runs to the end, no crash."""
    long_prompt = "Once upon a time " * 200  # > 256 tokens
    assert "context" in one_line_error(run(model_path, tokenizer, "-i", long_prompt, "-t", "0", "-n", "0"))
    p = run(other_path, tokenizer, "-i", "Once", "-t", "0", "-n", "100000")
    assert p.returncode == 0, p.stderr
