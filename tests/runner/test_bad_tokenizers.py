"""Missing, empty, truncated and garbage tokenizer files: a one-line error and
exit 1 from the tokenize tool and from a runner, never a crash; also under the
ASan+UBSan build when it has been built (./scripts/build_native.sh core --sanitize)."""

from __future__ import annotations

import random

import pytest
from native_helpers import assert_clean_failure, available_builds, binary, run_tool


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, sentencepiece_models, small_tiktoken_model, small_hf_tokenizer_json):
    directory = tmp_path_factory.mktemp("bad")
    sp_model, sp_bin = sentencepiece_models["llama2_like"]
    rng = random.Random(5)
    files = {"missing": directory / "does-not-exist.bin", "directory": directory}

    def write(name, data):
        files[name] = directory / name
        files[name].write_bytes(data)

    write("empty", b"")
    write("one_byte", b"\x01")
    write("garbage_random", bytes(rng.randrange(256) for _ in range(4096)))
    write("garbage_text", b"this is not a tokenizer at all\n" * 20)
    write("garbage_json_array", b"[1, 2, 3]")
    write("json_wrong_types", b'{"model": {"type": "BPE", "vocab": [1, 2], "merges": 7}}')
    write("sentencepiece_model_unconverted", sp_model.read_bytes())

    data = sp_bin.read_bytes()
    write("bin_header_only", data[:4])
    write("bin_cut_in_header", data[:4 + 5])
    write("bin_cut_mid_piece", data[:-1])
    write("bin_cut_half", cut_mid_record(data))
    write("bin_bad_length", data[:4] + b"\x00\x00\x00\x00" + b"\xff\xff\xff\x7f" + data[12:])

    lines = small_tiktoken_model.read_bytes().split(b"\n")
    write("tiktoken_cut_mid_line", b"\n".join(lines[:500]) + b"\n" + lines[500][:3])
    write("tiktoken_bad_base64", b"\n".join(lines[:10] + [b"!!!! 10"] + lines[11:]))
    write("tiktoken_bad_rank", b"\n".join(lines[:10] + [lines[10].split(b" ")[0] + b" -4"] + lines[11:]))

    nested = b'{"type":"Sequence","pretokenizers":[' * 50000 + b"]}" * 50000
    write("json_deeply_nested", b'{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":' + nested + b"}")
    write("json_deep_arrays", b'{"model":' + b"[" * 500000 + b"]" * 500000 + b"}")

    text = small_hf_tokenizer_json.read_bytes()
    write("json_cut", text[: len(text) // 2])
    write("json_cut_early", text[:40])
    # One spelling, two ids (as two vocabulary tokens spelled the same would give): ambiguous.
    at = text.index(b"{", text.index(b'"vocab"')) + 1
    write("json_duplicate_vocab_key", text[:at] + '"\u0120\u0120dup": 0, "\u0120\u0120dup": 1, '.encode() + text[at:])
    return files


def cut_mid_record(data: bytes) -> bytes:
    """A cut of a tokenizer.bin that does not fall on a record boundary."""
    import struct

    pos, boundaries = 4, set()
    while pos < len(data):
        _, length = struct.unpack_from("<fi", data, pos)
        pos += 8 + length
        boundaries.add(pos)
    cut = len(data) // 2
    while cut in boundaries:
        cut += 1
    return data[:cut]


BAD = [
    "missing", "directory", "empty", "one_byte", "garbage_random", "garbage_text", "garbage_json_array",
    "json_wrong_types", "sentencepiece_model_unconverted", "bin_header_only", "bin_cut_in_header",
    "bin_cut_mid_piece", "bin_cut_half", "bin_bad_length", "tiktoken_cut_mid_line", "tiktoken_bad_base64",
    "tiktoken_bad_rank", "json_cut", "json_cut_early", "json_deeply_nested", "json_deep_arrays", "json_duplicate_vocab_key",
]


@pytest.mark.parametrize("build", available_builds())
@pytest.mark.parametrize("name", BAD)
def test_tokenize_tool_fails_cleanly(bad_files, name, build):
    tool = binary("tokenize", build)
    result = run_tool(tool, [bad_files[name], "encode"], '"hello"\n')
    assert_clean_failure(result)


def test_messages_say_what_is_wrong(bad_files):
    tool = binary("tokenize")
    expectations = {
        "missing": "No such file",
        "directory": "is a directory",
        "empty": "is empty",
        "sentencepiece_model_unconverted": "utils/tokenizer.py",
        "bin_cut_mid_piece": "truncated",
        "bin_cut_half": "truncated",
        "json_cut": "not valid JSON",
        "tiktoken_bad_base64": "base64",
        "json_duplicate_vocab_key": "appears twice",
    }
    for name, words in expectations.items():
        result = run_tool(tool, [bad_files[name], "info"])
        assert words in result.stderr, (name, result.stderr)


@pytest.mark.parametrize("build", available_builds())
@pytest.mark.parametrize("name", ["missing", "empty", "garbage_random", "bin_cut_half", "json_cut"])
def test_runner_fails_cleanly(bad_files, name, build, tmp_path):
    runner = binary("toy_run", build)
    model = tmp_path / "toy.json"
    model.write_text('{"max_seq_len": 32, "vocab_size": 1000}')
    result = run_tool(runner, [model, "-z", bad_files[name], "-i", "hi"])
    assert_clean_failure(result)
