"""Helpers for the native runner tests: where the binaries are, how to run them.

The binaries come from ./scripts/build_native.sh core (cmake-out/) and, when it
has been built, ./scripts/build_native.sh core --sanitize (cmake-out-asan/).
Tests skip with a reason when what they need is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner_corpus import make_corpus

ROOT = Path(__file__).resolve().parents[2]

BUILD_DIRS = {"release": ROOT / "cmake-out", "asan": ROOT / "cmake-out-asan"}

# The special tokens of Llama 3's tiktoken tokenizer (llama_models/llama3/tokenizer.py).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>",
]


def binary(name: str, build: str = "release") -> Path:
    path = BUILD_DIRS[build] / name
    if not path.exists():
        hint = "./scripts/build_native.sh core" + (" --sanitize" if build == "asan" else "")
        pytest.skip(f"{path.relative_to(ROOT)} is not built (run {hint})")
    return path


def available_builds() -> list[str]:
    return [b for b, d in BUILD_DIRS.items() if (d / "tokenize").exists()] or ["release"]


def run_tool(tool: Path, args: list, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.run(
        [str(tool), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=timeout,
        env=env, errors="replace",
    )


def tokenize_lines(tool: Path, tokenizer: Path, mode: str, items: list) -> list:
    """Runs `tokenize TOKENIZER MODE` over JSON lines; returns the parsed output lines."""
    stdin = "".join(json.dumps(item) + "\n" for item in items)
    result = run_tool(tool, [tokenizer, mode], stdin)
    assert result.returncode == 0, result.stderr
    # Split on "\n" only: JSON output may hold raw U+2028 / U+0085, which splitlines() would cut at.
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == len(items)
    return [json.loads(line) for line in lines]


def train_sentencepiece(directory: Path, name: str, **options) -> Path:
    """Trains a small SentencePiece model on generated text; returns the .model path."""
    import sentencepiece as spm

    text = directory / "train.txt"
    if not text.exists():
        lines = [s.replace("\n", " ") for s in make_corpus(seed=1234, size=3000) if s.strip()]
        text.write_text("\n".join(lines), encoding="utf-8")
    settings = dict(
        input=str(text), model_prefix=str(directory / name), vocab_size=1000, character_coverage=0.995,
        num_threads=2, minloglevel=2, max_sentence_length=100000,
    )
    settings.update(options)
    spm.SentencePieceTrainer.train(**settings)
    return directory / f"{name}.model"


# Llama 2's own tokenizer.model settings.
LLAMA2_LIKE = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
    remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
)


def convert(model: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "utils" / "tokenizer.py"), f"--tokenizer-model={model}", *args],
        capture_output=True, text=True, timeout=60,
    )


def assert_clean_failure(result: subprocess.CompletedProcess) -> None:
    """Exit 1 with exactly one line, 'error: ...', on stderr; no crash, no sanitizer report."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "Sanitizer" not in result.stderr and "runtime error:" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.split("\n")
    assert len(lines) == 2 and lines[1] == "" and lines[0].startswith("error: "), result.stderr[-2000:]
