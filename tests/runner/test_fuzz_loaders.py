"""A short fuzz run of each tokenizer loader: random mutations of valid files
(byte flips, cuts, insertions, and for JSON, values of the wrong type or
range). Each run must load and encode, or fail with a one-line error; never
crash. About 3 seconds per loader and build (ASan build too when present)."""

from __future__ import annotations

import json
import random
import time

import pytest
from native_helpers import available_builds, binary, run_tool

SECONDS_PER_LOADER = 3.0
PROBE = "".join(json.dumps(s) + "\n" for s in ["hello world", "<|im_end|> 12345 😀", "", "  \n\t x"])


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(data)) if data else 0
        if op < 0.35 and data:
            data[pos] = rng.randrange(256)
        elif op < 0.5:
            del data[pos:]
        elif op < 0.7:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op < 0.85 and data:
            end = min(len(data), pos + rng.randint(1, 64))
            data[pos:pos] = data[pos:end]
        elif data:
            del data[pos : pos + rng.randint(1, 64)]
    return bytes(data)


WEIRD_VALUES = [None, -1, 0, 2**31, 2**40, -(2**40), 1.5, "", "x", "ByteLevel", [], {}, [1, 2], {"type": "Nope"}, True]


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    root = json.loads(data)
    slots = []

    def walk(node, depth):
        if depth > 4:
            return
        if isinstance(node, dict):
            for key in list(node)[:50]:
                slots.append((node, key))
                walk(node[key], depth + 1)
        elif isinstance(node, list):
            for index in rng.sample(range(len(node)), min(len(node), 20)):
                slots.append((node, index))
                walk(node[index], depth + 1)

    walk(root, 0)
    for _ in range(rng.randint(1, 3)):
        container, key = rng.choice(slots)
        try:
            if isinstance(container, dict) and rng.random() < 0.3:
                del container[key]
            else:
                container[key] = rng.choice(WEIRD_VALUES)
        except (KeyError, IndexError):
            pass
    return json.dumps(root).encode()


def fuzz(tool, seed_file, tmp_path, mutate, seconds):
    rng = random.Random(seed_file.name)
    original = seed_file.read_bytes()
    path = tmp_path / ("fuzz" + seed_file.suffix)
    deadline = time.monotonic() + seconds
    runs = loaded = 0
    while time.monotonic() < deadline:
        path.write_bytes(mutate(original, rng))
        result = run_tool(tool, [path, "encode"], PROBE, timeout=30)
        runs += 1
        assert result.returncode in (0, 1), f"exit {result.returncode} on a mutation of {seed_file.name}:\n{result.stderr[-3000:]}"
        assert "Sanitizer" not in result.stderr and "runtime error:" not in result.stderr, result.stderr[-3000:]
        if result.returncode == 0:
            loaded += 1
            assert len(result.stdout.split("\n")) == 5
        else:
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert runs >= 10
    return runs, loaded


@pytest.mark.parametrize("build", available_builds())
def test_fuzz_sentencepiece_bin(build, sentencepiece_models, tmp_path):
    fuzz(binary("tokenize", build), sentencepiece_models["llama2_like"][1], tmp_path, mutate_bytes, SECONDS_PER_LOADER)


@pytest.mark.parametrize("build", available_builds())
def test_fuzz_tiktoken(build, small_tiktoken_model, tmp_path):
    fuzz(binary("tokenize", build), small_tiktoken_model, tmp_path, mutate_bytes, SECONDS_PER_LOADER)


@pytest.mark.parametrize("build", available_builds())
@pytest.mark.parametrize("mutate", [mutate_bytes, mutate_json], ids=["bytes", "json_values"])
def test_fuzz_tokenizer_json(build, small_hf_tokenizer_json, tmp_path, mutate):
    fuzz(binary("tokenize", build), small_hf_tokenizer_json, tmp_path, mutate, SECONDS_PER_LOADER / 2)
