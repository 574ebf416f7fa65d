"""Perplexity: ours against transformers' loss on the same windows, and the eval command."""
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tiny_models import tiny_hf_model, write_llama2c_pt
from tiny_tokenizers import write_sentencepiece
from torchchat.eval import DEFAULT_CORPUS, perplexity, windows

ROOT = Path(__file__).resolve().parents[2]


def test_windows_cover_every_token_once():
    ids = list(range(100, 110))
    assert windows(ids, 4, bos=1) == [[1, 100, 101, 102], [1, 103, 104, 105], [1, 106, 107, 108], [1, 109]]
    assert windows(ids, 4, bos=None) == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_eval")
    model = tiny_hf_model("llama2")
    return model, write_llama2c_pt(model, folder / "model.pt"), write_sentencepiece(folder / "sp", vocab_size=512)


def test_perplexity_matches_transformers_loss(tiny):
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    hf, ckpt, tok = tiny
    args = SimpleNamespace(model=None, checkpoint_path=str(ckpt), gguf_path=None, params_path=None,
                           tokenizer_path=str(tok), dtype="fp32")
    loaded = load_model(args)
    text = DEFAULT_CORPUS.read_text()
    got = perplexity(EagerDecoder(loaded.model, 64), loaded.tokenizer, loaded.info, text, 64, limit=5, progress=False)

    ids = loaded.tokenizer.encode(text, bos=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows(ids, 64, bos=1)[:5]:
            out = hf(torch.tensor([w]), labels=torch.tensor([w]))  # mean NLL over len(w)-1 predictions
            total += out.loss.item() * (len(w) - 1)
            count += len(w) - 1
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert got["word_perplexity"] > got["perplexity"]  # more tokens than words in this text


def run(*args):
    return subprocess.run([sys.executable, "torchchat.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_eval_command_writes_json(tiny, tmp_path):
    _, ckpt, tok = tiny
    out = tmp_path / "results.json"
    proc = run("eval", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--max-seq-length", "64",
               "--limit", "3", "--output-json", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert {"perplexity", "word_perplexity", "tokens"} <= results.keys()
    assert results["windows"] == 3 and results["tokens"] == 3 * 63
    assert f"{results['perplexity']:.4f}" in proc.stdout


@pytest.mark.parametrize("flags,pattern", [
    (["--text-file", "/no/such/file.txt"], "cannot read --text-file"),
    (["--limit", "0"], "--limit"),
    (["--max-seq-length", "1"], "--max-seq-length"),
])
def test_eval_bad_input(tiny, flags, pattern):
    _, ckpt, tok = tiny
    proc = run("eval", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), *flags)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and pattern in proc.stderr


def test_eval_keeps_existing_json_on_failure(tiny, tmp_path):
    _, ckpt, tok = tiny
    out = tmp_path / "results.json"
    out.write_text('{"old": true}')
    proc = run("eval", "--checkpoint-path", str(ckpt), "--tokenizer-path", str(tok), "--text-file", str(tmp_path / "none"),
               "--output-json", str(out))
    assert proc.returncode == 1
    assert json.loads(out.read_text()) == {"old": True}
