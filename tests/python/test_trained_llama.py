"""The trained fixture (trained_llama.py) is a real language model: it loads through the CLI,
and its perplexity on held-out text is far below that of the same model untrained."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trained_llama import init_model, save

ROOT = Path(__file__).resolve().parents[2]


def eval_perplexity(checkpoint: Path, tokenizer: Path, text: Path, out: Path) -> float:
    p = subprocess.run([sys.executable, "torchchat.py", "eval", "--checkpoint-path", str(checkpoint),
                        "--tokenizer-path", str(tokenizer), "--text-file", str(text), "--limit", "8",
                        "--output-json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())["perplexity"]


def test_trained_model_beats_untrained(trained_llama, tmp_path):
    tokenizer, heldout = trained_llama / "tokenizer.model", trained_llama / "heldout.txt"
    untrained = save(init_model(), tmp_path / "untrained.pt")
    trained_ppl = eval_perplexity(trained_llama / "model.pt", tokenizer, heldout, tmp_path / "a.json")
    untrained_ppl = eval_perplexity(untrained, tokenizer, heldout, tmp_path / "b.json")
    # Untrained: about the vocabulary size (1024); a minute of training: tens.
    assert untrained_ppl > 500
    assert trained_ppl < 80 and trained_ppl < untrained_ppl / 10, (trained_ppl, untrained_ppl)


def test_trained_model_generates_words_of_its_text(trained_llama):
    p = subprocess.run([sys.executable, "torchchat.py", "generate", "--checkpoint-path", str(trained_llama / "model.pt"),
                        "--prompt", "And it came to pass that", "--temperature", "0", "--max-new-tokens", "24"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    words = p.stdout.split()[6:]
    assert len(words) >= 8
    # Greedy text of a trained model is made of the corpus's common words, not byte soup.
    common = {"the", "and", "of", "that", "they", "to", "in", "did", "their", "land", "unto", "which", "it", "was"}
    assert sum(w.strip(",.;:").lower() in common for w in words) >= len(words) // 3, p.stdout
