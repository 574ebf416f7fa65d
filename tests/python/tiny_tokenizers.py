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


def write_llama3_gguf_vocab(tokenizer_model: Path, out: Path) -> Path:
    """Llama 3's vocabulary (llama-models' tokenizer.model) as llama.cpp's converter writes it into a
    GGUF: byte-level spellings, merges recovered from the ranks (every split of a token into two
    tokens, in rank order, as transformers' tiktoken conversion makes them), pre-tokenizer
    llama-bpe, and no add_bos key (llama.cpp's default for llama-bpe is to add BOS)."""
    import gguf

    from torchchat.checkpoints.gguf import _bytes_to_unicode
    from torchchat.tokenizer import llama3_special_tokens, read_tiktoken_ranks

    ranks = read_tiktoken_ranks(tokenizer_model.read_text(), tokenizer_model)
    spelled = _bytes_to_unicode()
    by_id = sorted(ranks, key=ranks.get)
    tokens = ["".join(spelled[b] for b in token) for token in by_id]
    merges = []
    for token in by_id:
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(splits, key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
    merge_text = [" ".join("".join(spelled[b] for b in part) for part in pair) for pair in merges]
    specials = llama3_special_tokens(len(ranks))
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens + list(specials))
    w.add_token_types([1] * len(tokens) + [3] * len(specials))
    w.add_token_merges(merge_text)
    w.add_bos_token_id(specials["<|begin_of_text|>"])
    w.add_eos_token_id(specials["<|end_of_text|>"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def cached_llama3_gguf_vocab(tokenizer_model: Path) -> Path:
    """write_llama3_gguf_vocab once per machine (it takes seconds), kept in the temp folder."""
    import os
    import tempfile

    folder = Path(tempfile.gettempdir()) / "torchchat-tests"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"llama3-vocab-{tokenizer_model.stat().st_size}.gguf"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        write_llama3_gguf_vocab(tokenizer_model, tmp)
        os.replace(tmp, out)
    return out


def write_sentencepiece_gguf(sp_model: Path, out: Path) -> Path:
    """A SentencePiece model's vocabulary as llama.cpp's converter writes it into a GGUF
    (tokenizer.ggml.model "llama": pieces, scores, piece types, special ids)."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    n = sp.vocab_size()
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else
             5 if sp.is_unused(i) else 1 for i in range(n)]
    w.add_token_types(kinds)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
