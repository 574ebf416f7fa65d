"""AOT Inductor export: eager fp32 = AOTI from Python = aoti_run, token for token, plus bad inputs.

Compiling is the cost (seconds per tiny model), so the artifacts are built once per session:
a llama2-style model (SentencePiece, tokenizer.bin for the runner) as .so and .pt2, and a
llama3-style model (tiktoken, tied embeddings, GQA) as .pt2. Runner tests skip when
./cmake-out/aoti_run has not been built (scripts/build_native.sh aoti).
"""
from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import tiny_hf_model, write_hf, write_llama2c_pt  # noqa: E402
from tiny_tokenizers import write_sentencepiece, write_tiktoken, write_tokenizer_bin  # noqa: E402

from torchchat.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AOTI_RUN = ROOT / "cmake-out" / "aoti_run"
CONTEXT = 256
N_NEW = 64
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Ünïcödé and 日本語 text:"]
SYSTEM, USER = "You are a helpful assistant.", "What is the tallest mountain in the world?"


def model_args(checkpoint: Path, tokenizer: Path, **kw) -> Namespace:
    return Namespace(model=None, checkpoint_path=str(checkpoint), gguf_path=None, params_path=None,
                     tokenizer_path=str(tokenizer), dtype="fp32", max_seq_length=None, **kw)


class Exported:
    """One tiny model: its checkpoint, tokenizer files, exported artifacts and eager reference."""

    def __init__(self, folder: Path, style: str, formats: tuple[str, ...]):
        from torchchat.export import export_model
        from torchchat.loader import load_model

        self.folder, self.style = folder, style
        hf = tiny_hf_model(style)
        if style == "llama2":
            self.checkpoint = write_llama2c_pt(hf, folder / "model.pt")
            self.tokenizer = write_sentencepiece(folder / "sp")
            self.runner_tokenizer = write_tokenizer_bin(self.tokenizer, folder / "tokenizer.bin")
        else:
            self.checkpoint = write_hf(hf, folder / "hf")
            self.tokenizer = self.runner_tokenizer = write_tiktoken(folder / "tokenizer.model")
        loaded = load_model(model_args(self.checkpoint, self.tokenizer))
        self.paths = {f: folder / f"model.{f}" for f in formats}
        export_model(loaded.model, loaded.info, "fp32", CONTEXT, self.paths.get("so"), self.paths.get("pt2"),
                     self.paths.get("pte"))  # .pte: test_et.py
        self.eager = load_model(model_args(self.checkpoint, self.tokenizer))  # fresh: export set up caches

    def eager_decoder(self):
        from torchchat.loader import EagerDecoder

        return EagerDecoder(self.eager.model, CONTEXT)


@pytest.fixture(scope="session")
def llama2(tmp_path_factory) -> Exported:
    return Exported(tmp_path_factory.mktemp("aoti_llama2"), "llama2", ("so", "pt2"))


@pytest.fixture(scope="session")
def llama3(tmp_path_factory) -> Exported:
    return Exported(tmp_path_factory.mktemp("aoti_llama3"), "llama3", ("pt2",))


def greedy(decoder, ids, stop_ids, start_pos=0):
    from torchchat.generate import SamplingConfig, Sampler, generate

    return generate(decoder, ids, N_NEW, Sampler(SamplingConfig(temperature=0)), stop_ids, start_pos=start_pos)


CASES = [("llama2", "so"), ("llama2", "pt2"), ("llama3", "pt2")]


@pytest.fixture
def case(request):
    style, fmt = request.param
    return request.getfixturevalue(style), fmt


# ---------------------------------------------------------------------------------------------
# Python: the artifact against the eager model


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_metadata_round_trips(case):
    from torchchat.exported import AOTIDecoder

    m, fmt = case
    d = AOTIDecoder(m.paths[fmt])
    want = m.eager.info
    assert (d.info.vocab_size, d.info.bos_id, d.info.add_bos, d.info.stop_ids, d.info.tokenizer_kind,
            d.info.chat_template) == (want.vocab_size, want.bos_id, want.add_bos, want.stop_ids,
                                      want.tokenizer_kind, want.chat_template)
    assert d.info.max_seq_len == CONTEXT and d.dtype == "fp32"


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_python_greedy_matches_eager(case):
    from torchchat.exported import AOTIDecoder

    m, fmt = case
    d, e = AOTIDecoder(m.paths[fmt]), m.eager_decoder()
    tok, info = m.eager.tokenizer, m.eager.info
    ids = tok.encode(PROMPTS[0], bos=info.add_bos)
    # Logits first (prefill of T tokens, then one decode step): the same within fp32 noise.
    with torch.no_grad():
        a, b = d(torch.tensor([ids]), torch.arange(len(ids))), e(torch.tensor([ids]), torch.arange(len(ids)))
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-4)
    for prompt in PROMPTS:
        ids = tok.encode(prompt, bos=info.add_bos)
        assert greedy(d, ids, info.stop_ids) == greedy(e, ids, info.stop_ids), prompt


def test_python_chat_with_system_prompt_matches_eager(llama3):
    from torchchat.chat import Conversation
    from torchchat.exported import AOTIDecoder

    tok, info = llama3.eager.tokenizer, llama3.eager.info
    results = []
    for decoder in (AOTIDecoder(llama3.paths["pt2"]), llama3.eager_decoder()):
        conv = Conversation(tok, info.chat_template, info.stop_ids[0], SYSTEM)
        first = conv.turn_tokens(USER)
        reply = greedy(decoder, first, info.stop_ids)
        conv.reply_done(reply, info.stop_ids)
        second = conv.turn_tokens("And the second tallest?")
        results.append((reply, greedy(decoder, second, info.stop_ids, start_pos=len(first) + len(reply) - 1)))
    assert results[0] == results[1]


def test_cli_generate_with_exported_artifacts(llama2):
    common = ["--tokenizer-path", str(llama2.tokenizer), "--prompt", PROMPTS[0], "--temperature", "0",
              "--max-new-tokens", "16"]
    outs = []
    for flag, path in (("--checkpoint-path", llama2.checkpoint), ("--dso-path", llama2.paths["so"]),
                       ("--aoti-package-path", llama2.paths["pt2"])):
        p = subprocess.run([sys.executable, "torchchat.py", "generate", flag, str(path), *common],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] == outs[1] == outs[2]


# ---------------------------------------------------------------------------------------------
# Python: bad input and atomic export


def test_python_rejects_foreign_and_truncated_files(llama2, tmp_path):
    from torchchat.exported import AOTIDecoder

    foreign = tmp_path / "foreign.so"
    foreign.write_bytes(b"hello world, not a library")
    libz = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/libz.so.1"), Path("/lib/x86_64-linux-gnu/libz.so.1"))
                 if p.is_file()), None)
    cut_so, cut_pt2 = tmp_path / "cut.so", tmp_path / "cut.pt2"
    cut_so.write_bytes(llama2.paths["so"].read_bytes()[:100_000])
    cut_pt2.write_bytes(llama2.paths["pt2"].read_bytes()[:100_000])
    for path in [foreign, cut_so, cut_pt2, tmp_path / "missing.so"] + ([libz] if libz else []):
        with pytest.raises(UserError) as e:
            AOTIDecoder(path)
        assert "\n" not in str(e.value)


def test_python_prompt_longer_than_context_is_a_user_error(llama2):
    from torchchat.exported import AOTIDecoder

    d = AOTIDecoder(llama2.paths["so"])
    with pytest.raises(UserError, match="context"):
        greedy(d, [1] * (CONTEXT + 1), [])


def test_tokenizer_larger_than_model_is_refused(llama2, tmp_path):
    from torchchat.exported import load_exported

    big = write_tiktoken(tmp_path / "big.model", n_base=384)  # 640 tokens > the model's 512
    with pytest.raises(UserError, match="tokenizer"):
        load_exported(llama2.paths["pt2"], big)


@pytest.mark.parametrize("error", [RuntimeError("compiler crashed"), KeyboardInterrupt()])
def test_export_is_atomic(tmp_path, monkeypatch, error):
    """A failed or interrupted compile leaves neither the output nor temporary files behind."""
    from torchchat import export
    from torchchat.loader import ModelInfo
    from torchchat.model import ModelArgs, Transformer

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=32)).eval()
    info = ModelInfo(64, 32, 1, True, [2], "sentencepiece", "llama2")

    def broken(gm, args, kwargs=None, options=None):
        out = Path(options["aot_inductor.output_path"])
        out.write_bytes(b"\x7fELF half written")
        raise error

    monkeypatch.setattr(torch._inductor, "aot_compile", broken)
    out = tmp_path / "model.so"
    out.write_bytes(b"previous artifact")
    with pytest.raises(type(error)):
        export.export_model(model, info, "fp32", 16, so_path=out)
    assert out.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so"]


# ---------------------------------------------------------------------------------------------
# The native runner: aoti_run on the same artifacts

needs_runner = pytest.mark.skipif(not AOTI_RUN.is_file(), reason="build it: scripts/build_native.sh aoti")


def aoti_run(model_path, tokenizer, *flags, stdin="", trace=None, timeout=120):
    env = dict(os.environ)
    if trace is not None:
        env["TORCHCHAT_AOTI_TRACE"] = str(trace)
    return subprocess.run([str(AOTI_RUN), str(model_path), "-z", str(tokenizer), *flags], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def fed_tokens(trace: Path) -> list[int]:
    """Everything the runner fed the model, in order (prompt, then each token it sampled but the last)."""
    import json

    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    pos = 0
    out = []
    for c in calls:
        assert c["start_pos"] == pos  # one prefill, then one position at a time, no gaps
        out += c["tokens"]
        pos += len(c["tokens"])
    return out


@needs_runner
@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_runner_greedy_matches_eager(case, tmp_path):
    m, fmt = case
    e = m.eager_decoder()
    tok, info = m.eager.tokenizer, m.eager.info
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt, bos=info.add_bos)
        want = greedy(e, ids, info.stop_ids)
        trace = tmp_path / f"trace{i}.jsonl"
        p = aoti_run(m.paths[fmt], m.runner_tokenizer, "-t", "0", "-n", str(len(ids) + N_NEW), "-i", prompt,
                     trace=trace)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(prompt)
        fed = fed_tokens(trace)
        # -n counts positions; the runner may feed one more token than we compare
        assert fed[:len(ids) + len(want) - 1] == ids + want[:-1], prompt
        assert len(fed) >= len(ids) + len(want) - 1
        assert "tokens/s" in p.stderr


@needs_runner
def test_runner_chat_with_system_prompt_matches_eager(llama3, tmp_path):
    from torchchat.chat import Conversation

    tok, info = llama3.eager.tokenizer, llama3.eager.info
    conv = Conversation(tok, info.chat_template, info.stop_ids[0], SYSTEM)
    first = conv.turn_tokens(USER)
    want = greedy(llama3.eager_decoder(), first, info.stop_ids)
    trace = tmp_path / "chat.jsonl"
    p = aoti_run(llama3.paths["pt2"], llama3.runner_tokenizer, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0",
                 "-n", str(len(first) + N_NEW), trace=trace)
    assert p.returncode == 0, p.stderr
    assert "Assistant: " in p.stdout
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]


def one_line_error(p) -> str:
    assert p.returncode != 0 and p.returncode < 128, (p.returncode, p.stderr)  # an error, not a signal
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@needs_runner
def test_runner_rejects_foreign_and_truncated_artifacts(llama2, tmp_path):
    cut_so, cut_pt2, foreign = tmp_path / "cut.so", tmp_path / "cut.pt2", tmp_path / "notes.so"
    cut_so.write_bytes(llama2.paths["so"].read_bytes()[:200_000])
    cut_pt2.write_bytes(llama2.paths["pt2"].read_bytes()[:200_000])
    foreign.write_text("not a model\n")
    zip_pt2 = tmp_path / "other.pt2"
    import zipfile

    with zipfile.ZipFile(zip_pt2, "w") as z:
        z.writestr("other/data.txt", "hello")
    for path in (cut_so, cut_pt2, foreign, zip_pt2, tmp_path / "missing.so"):
        line = one_line_error(aoti_run(path, llama2.runner_tokenizer, "-i", "hi", "-n", "8"))
        assert str(path) in line


@needs_runner
def test_runner_rejects_tokenizer_that_does_not_fit(llama2, llama3, tmp_path):
    # a tiktoken file for a SentencePiece model, and a tiktoken vocabulary larger than the model's
    one_line_error(aoti_run(llama2.paths["so"], llama3.runner_tokenizer, "-i", "hi", "-n", "8"))
    big = write_tiktoken(tmp_path / "big.model", n_base=400)  # 656 tokens > 640
    assert "tokenizer" in one_line_error(aoti_run(llama3.paths["pt2"], big, "-i", "hi", "-n", "8"))


@needs_runner
def test_runner_prompt_longer_than_context_and_large_n(llama2):
    long_prompt = "Once upon a time " * 200  # > 256 tokens
    assert "context" in one_line_error(aoti_run(llama2.paths["so"], llama2.runner_tokenizer, "-i", long_prompt,
                                                "-t", "0", "-n", "0"))
    # -n above the context is the context (the seed: 0 = max_seq_len): runs to the end, no crash
    p = aoti_run(llama2.paths["pt2"], llama2.runner_tokenizer, "-i", "Once", "-t", "0", "-n", "100000")
    assert p.returncode == 0, p.stderr


def test_so_metadata_survives_weights_appended_to_the_library(llama2, tmp_path, monkeypatch):
    """Over 2 GB of weights, AOTI appends them to the .so and finds them from the file's end
    (on a 16 KiB boundary); the metadata block must not disturb that. Forced here on a tiny model."""
    from torchchat import export
    from torchchat.exported import AOTIDecoder
    from torchchat.loader import load_model

    monkeypatch.setitem(export.INDUCTOR_CONFIGS, "aot_inductor.force_mmap_weights", True)
    loaded = load_model(model_args(llama2.checkpoint, llama2.tokenizer))
    out = tmp_path / "mmap.so"
    export.export_model(loaded.model, loaded.info, "fp32", CONTEXT, so_path=out)
    ids = llama2.eager.tokenizer.encode(PROMPTS[0], bos=True)
    d = AOTIDecoder(out)
    assert d.info.vocab_size == llama2.eager.info.vocab_size
    assert greedy(d, ids, d.info.stop_ids) == greedy(llama2.eager_decoder(), ids, d.info.stop_ids)
    if AOTI_RUN.is_file():
        p = aoti_run(out, llama2.runner_tokenizer, "-t", "0", "-n", "24", "-i", PROMPTS[0])
        assert p.returncode == 0, p.stderr
