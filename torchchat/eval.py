"""Perplexity of a model (eager or exported) over a text corpus.

The text is tokenized once and cut into windows of `max_seq_len` tokens; each window is
one forward pass from position 0 (after BOS where the model adds one), and every token
after the first is scored. Token perplexity = exp(mean NLL per scored token); word
perplexity = exp(total NLL / words), comparable across tokenizers, as lm-eval reports it.

The default corpus is the US Declaration of Independence (public domain, shipped in
torchchat/data) so eval works offline.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from torchchat.errors import UserError
from torchchat.output import replace_with

DEFAULT_CORPUS = Path(__file__).parent / "data" / "declaration_of_independence.txt"


def windows(ids: list[int], size: int, bos: Optional[int]) -> list[list[int]]:
    """Consecutive windows; with BOS each holds size-1 text tokens so it fits the context."""
    step = size - 1 if bos is not None else size
    if step < 2:
        raise UserError(f"--max-seq-length {size} is too small to score anything")
    return [([bos] if bos is not None else []) + ids[i:i + step] for i in range(0, len(ids), step)
            if len(ids[i:i + step]) >= 2 or bos is not None]


def perplexity(model, tokenizer, info, text: str, max_seq_len: int, limit: Optional[int] = None,
               progress: bool = True) -> dict:
    if not text.strip():
        raise UserError("the corpus is empty")
    ids = tokenizer.encode(text, bos=False)
    bos = info.bos_id if info.add_bos else None
    chunks = windows(ids, max_seq_len, bos)
    if limit is not None:
        chunks = chunks[:limit]
    if sum(len(c) - 1 for c in chunks) == 0:
        raise UserError(f"the corpus is {len(ids)} token{'s' if len(ids) != 1 else ''}: too short to score "
                        "(perplexity needs a token that follows another)")
    nll, scored = 0.0, 0
    t0 = time.perf_counter()
    for chunk in tqdm(chunks, desc="eval", unit="window", disable=not progress, file=sys.stderr):
        tokens = torch.tensor([chunk])
        with torch.no_grad():
            logits = model(tokens, torch.arange(len(chunk)))[0].float()
        nll += F.cross_entropy(logits[:-1], tokens[0, 1:], reduction="sum").item()
        scored += len(chunk) - 1
    used_text = tokenizer.decode([t for c in chunks for t in c if t != bos])
    words = max(1, len(used_text.split()))
    return {
        "perplexity": math.exp(nll / scored),
        "word_perplexity": math.exp(nll / words),
        "bits_per_byte": nll / math.log(2) / max(1, len(used_text.encode())),
        "tokens": scored,
        "words": words,
        "windows": len(chunks),
        "max_seq_length": max_seq_len,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        replace_with(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_table(results: dict) -> str:
    rows = [("perplexity", f"{results['perplexity']:.4f}"), ("word_perplexity", f"{results['word_perplexity']:.4f}"),
            ("bits_per_byte", f"{results['bits_per_byte']:.4f}"), ("tokens", str(results["tokens"])),
            ("windows", f"{results['windows']} x {results['max_seq_length']}"), ("seconds", str(results["seconds"]))]
    return "\n".join(["| metric | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows])
