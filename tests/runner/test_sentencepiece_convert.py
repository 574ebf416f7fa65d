"""utils/tokenizer.py: SentencePiece tokenizer.model -> llama2.c tokenizer.bin.

Models are trained here by the sentencepiece library. Llama 2-like models (BPE,
identity normalization, no whitespace collapsing, digit splitting, byte
fallback) convert and then tokenize exactly as sentencepiece does (see
test_tokenizer_parity.py); models the format cannot represent are refused.
"""

from __future__ import annotations

import struct

import pytest
from native_helpers import LLAMA2_LIKE, convert, run_tool, train_sentencepiece


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    return tmp_path_factory.mktemp("convert")


def read_bin(path):
    data = path.read_bytes()
    (max_len,) = struct.unpack_from("<i", data, 0)
    pos, pieces = 4, []
    while pos < len(data):
        score, length = struct.unpack_from("<fi", data, pos)
        pos += 8
        pieces.append((score, data[pos : pos + length]))
        pos += length
    return max_len, pieces


def test_writes_llama2c_format_beside_the_model(sentencepiece_models):
    import sentencepiece as spm

    model, bin_path = sentencepiece_models["llama2_like"]
    assert bin_path == model.parent / "llama2_like.bin" and bin_path.exists()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    max_len, pieces = read_bin(bin_path)
    assert len(pieces) == sp.get_piece_size()
    assert max_len == max(len(p) for _, p in pieces)
    # llama2.c conventions: <unk>, BOS/EOS inside newlines, byte pieces, U+2581 as a space.
    assert pieces[sp.unk_id()][1] == b"<unk>"
    assert pieces[sp.bos_id()][1] == b"\n<s>\n"
    assert pieces[sp.eos_id()][1] == b"\n</s>\n"
    assert pieces[sp.piece_to_id("<0x41>")][1] == b"<0x41>"
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
            continue
        assert pieces[i][1] == sp.id_to_piece(i).replace("\u2581", " ").encode()
        assert pieces[i][0] == pytest.approx(sp.get_score(i))


def test_tokenizer_tool_reads_it(tokenize_tool, sentencepiece_models):
    model, bin_path = sentencepiece_models["llama2_like"]
    result = run_tool(tokenize_tool, [bin_path, "info"])
    assert result.returncode == 0, result.stderr
    assert '"kind":"sentencepiece"' in result.stdout


REFUSED = {
    "unigram": (dict(LLAMA2_LIKE, model_type="unigram"), "Unigram"),
    "nfkc": (dict(LLAMA2_LIKE, normalization_rule_name="nfkc"), "normaliz"),
    "collapses_whitespace": (dict(LLAMA2_LIKE, remove_extra_whitespaces=True), "collapses whitespace"),
    "user_defined_symbols": (dict(LLAMA2_LIKE, user_defined_symbols=["<tool>"]), "user-defined"),
    "no_dummy_prefix": (dict(LLAMA2_LIKE, add_dummy_prefix=False), "add_dummy_prefix"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refuses_models_it_cannot_represent(workdir, name):
    options, reason = REFUSED[name]
    model = train_sentencepiece(workdir, name, **options)
    result = convert(model)
    assert result.returncode == 1
    assert not model.with_suffix(".bin").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot convert"), result.stderr
    assert reason in lines[0]


@pytest.mark.parametrize("content", [b"", b"garbage that is not protobuf \xff\xff", b"\x0a\xff\xff\xff\xff\x0f"])
def test_refuses_files_that_are_not_models(tmp_path, content):
    model = tmp_path / "tokenizer.model"
    model.write_bytes(content)
    result = convert(model)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot convert") and result.stderr.count("\n") == 1


def test_missing_model_is_an_error(tmp_path):
    result = convert(tmp_path / "nope.model")
    assert result.returncode == 1 and result.stderr.startswith("error: cannot read")


def test_never_writes_over_its_input_or_into_nowhere(sentencepiece_models, tmp_path):
    model, _ = sentencepiece_models["llama2_like"]
    named_bin = tmp_path / "tokenizer.bin"  # a model whose own name ends in .bin
    named_bin.write_bytes(model.read_bytes())
    for args, reason in [((), "is the input"), ((f"--output={named_bin}",), "is the input"),
                         ((f"--output={tmp_path}",), "is a directory"),
                         ((f"--output={tmp_path / 'missing' / 'tokenizer.bin'}",), "no directory")]:
        result = convert(named_bin, *args)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
        assert named_bin.read_bytes() == model.read_bytes()
    out = tmp_path / "out.bin"
    assert convert(named_bin, f"--output={out}").returncode == 0 and out.stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))
