"""The command line as a user meets it: real subprocesses, tiny models, one-line errors."""
import pytest
import torch

from backend_helpers import cli
from tiny_models import tiny_llama2_files
from tiny_tokenizers import write_sentencepiece


def assert_one_line_error(proc, pattern):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert pattern in lines[-1], lines[-1]
    assert sum(l.startswith("error:") for l in lines) == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama2-style checkpoint (512 embeddings) with a 400-piece SentencePiece tokenizer: a padded vocabulary."""
    t = tiny_llama2_files(tmp_path_factory.mktemp("tiny"), vocab_size=400)
    return t.hf, t.ckpt, t.tok


def test_generate_from_checkpoint_matches_transformers(tiny):
    import sentencepiece

    model, ckpt, tok = tiny
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok))
    prompt = "Once upon a time"
    ids = [1] + sp.encode(prompt)
    with torch.no_grad():
        want = hf_greedy_in_vocab(model, ids, 40, sp.vocab_size())
    if 2 in want:  # our generate stops at eos like the runner
        want = want[: want.index(2) + 1]
    proc = cli("generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--prompt", prompt,
               "--temperature", "0", "--max-new-tokens", "40")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == sp.decode(ids[1:] + [t for t in want if t != 2]) + "\n"


def hf_greedy_in_vocab(model, ids, n, vocab):
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids + out])).logits[0, -1, :vocab]
        out.append(int(logits.argmax()))
    return out


def test_seeded_sampling_is_reproducible(tiny):
    _, ckpt, tok = tiny
    args = ("generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--prompt", "The",
            "--temperature", "1.0", "--seed", "42", "--max-new-tokens", "30", "--num-samples", "2")
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    samples = a.stdout.splitlines()
    assert len(samples) >= 2


def test_unknown_alias():
    assert_one_line_error(cli("generate", "no-such-model"), "unknown model 'no-such-model'")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(cli("generate", "--checkpoint-path", str(tmp_path / "nope.pt")), "nope.pt")


def test_truncated_checkpoint(tiny, tmp_path):
    _, ckpt, tok = tiny
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert_one_line_error(cli("generate", "--checkpoint-path", str(cut), "--tokenizer-path", str(tok)), "cut.pt")


def test_tokenizer_too_big_for_model(tiny, tmp_path):
    _, ckpt, _ = tiny
    big = write_sentencepiece(tmp_path / "big", vocab_size=700)  # the model has 512 embeddings
    assert_one_line_error(cli("generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(big)), "tokenizer has 700 tokens")


def test_prompt_longer_than_context(tiny):
    _, ckpt, tok = tiny
    proc = cli("generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--max-seq-length", "8",
               "--prompt", "Once upon a time there was a little girl who lived in a village")
    assert_one_line_error(proc, "context")


@pytest.mark.parametrize("flags,pattern", [
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "-0.5"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_sampling_options(tiny, flags, pattern):
    _, ckpt, tok = tiny
    assert_one_line_error(cli("generate", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), *flags), pattern)


def test_chat_reads_turns_from_stdin(tiny):
    _, ckpt, tok = tiny
    proc = cli("chat", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--temperature", "0",
               "--max-new-tokens", "10", "--system-prompt", "Be brief.", stdin="Hello\nWho are you?\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant: ") == 2


def test_chat_message_longer_than_the_context_is_an_error(tiny):
    _, ckpt, tok = tiny
    proc = cli("chat", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--max-seq-length", "16",
               "--max-new-tokens", "4", stdin="Once upon a time there was a little girl who lived in a village\n")
    assert_one_line_error(proc, "the message is too long")


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_output_that_cannot_be_written_is_an_error(tiny, command):
    """Generated words lost to a full disk are a failure, not a success."""
    import subprocess
    import sys

    from backend_helpers import ROOT

    _, ckpt, tok = tiny
    prompt = ["--prompt", "Once"] if command == "generate" else []  # chat reads its turn from stdin
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "torchchat.py", command, "--checkpoint-path", str(ckpt),
                               "--tokenizer-path", str(tok), "--max-new-tokens", "5", *prompt],
                              cwd=ROOT, input="Hello\n", stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert_one_line_error(proc, "cannot write the output: No space left on device")
