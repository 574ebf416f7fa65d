"""Tiny tokenizers for tiny models: a SentencePiece BPE (tokenizer.model + llama2.c's tokenizer.bin)
and a Llama 3 style tiktoken file, small enough for the tiny configs in tiny_models.py.

    sp_model = write_sentencepiece(tmp_path, vocab_size=512)   # tokenizer.model
    write_tokenizer_bin(sp_model, tmp_path / "tokenizer.bin")   # what the C++ runner reads
    write_tiktoken(tmp_path / "tokenizer.model", n_base=384)    # + 256 Llama 3 special tokens
"""
from __future__ import annotations

import base64
import struct
from collections import Counter
from pathlib import Path

CORPUS = """Once upon a time there was a little girl who lived in a village near the forest.
Whenever she went out, the little girl wore a red riding cloak, so everyone in the village called her Little Red Riding Hood.
The capital of France is Paris. The tallest mountain in the world is Mount Everest.
def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)
You are a helpful assistant. What is the weather like today? It is sunny and warm.
The quick brown fox jumps over the lazy dog while the cat sleeps on the mat.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " '
"""


def write_sentencepiece(folder: Path, vocab_size: int = 512) -> Path:
    """Train a BPE SentencePiece model with byte fallback (every byte encodable) -> tokenizer.model."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, minloglevel=2, num_threads=1,
    )
    return folder / "tokenizer.model"


def write_tokenizer_bin(model_path: Path, out: Path) -> Path:
    """llama2.c's tokenizer.bin: max_token_length, then per id: float score, int len, bytes."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tokens, scores = [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        tokens.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(out, "wb") as f:
        f.write(struct.pack("I", max(len(t) for t in tokens)))
        for t, s in zip(tokens, scores):
            f.write(struct.pack("fI", s, len(t)))
            f.write(t)
    return out


def write_tiktoken(out: Path, n_base: int = 384) -> Path:
    """A byte-level BPE in tiktoken's format: 256 single bytes, then merges learned from CORPUS."""
    ranks: list[bytes] = [bytes([b]) for b in range(256)]
    words = [w.encode() for w in CORPUS.replace("\n", " ").split(" ") if w]
    seqs = [[bytes([b]) for b in (b" " + w)] for w in words]
    while len(ranks) < n_base:
        pairs = Counter((a, b) for s in seqs for a, b in zip(s, s[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks.append(a + b)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if s[i] == a and s[i + 1] == b:
                    s[i:i + 2] = [a + b]
                i += 1
    out.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    return out
