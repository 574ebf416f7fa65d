"""End to end on the default model: `torchchat.py export smollm2-135m`, then eager fp32 =
AOTI from Python = aoti_run, token for token (64 greedy tokens, several prompts, and chat
with a system prompt). One export (the .so of the seed; the .pt2 route is covered on tiny
models in test_aoti.py) with a 512-position context to keep the test short.
"""
from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_aoti import AOTI_RUN, N_NEW, ROOT, aoti_run, fed_tokens, greedy  # noqa: E402

pytestmark = pytest.mark.e2e
CONTEXT = 512
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Ünïcödé and 日本語 text:"]
SYSTEM, USER = "You are a helpful assistant.", "What is the tallest mountain in the world?"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from torchchat import registry
    from torchchat.errors import UserError
    from torchchat.exported import AOTIDecoder
    from torchchat.loader import EagerDecoder, load_model

    try:
        folder = registry.where("smollm2-135m")
    except UserError:
        pytest.skip("smollm2-135m is not downloaded (scripts/setup.sh downloads it)")
    out = tmp_path_factory.mktemp("aoti_smollm2") / "model.so"
    p = subprocess.run([sys.executable, "torchchat.py", "export", "smollm2-135m", "--output-dso-path", str(out),
                        "--max-seq-length", str(CONTEXT)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "Compiling" in p.stderr and "done in" in p.stderr  # progress on stderr
    args = Namespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32", max_seq_length=None)
    loaded = load_model(args)
    return Namespace(path=out, tokenizer=Path(folder) / "tokenizer.json", loaded=loaded,
                     eager=EagerDecoder(loaded.model, CONTEXT), aoti=AOTIDecoder(out))


def test_artifact_size_and_metadata(smollm2):
    info = smollm2.aoti.info
    assert (info.vocab_size, info.max_seq_len, info.tokenizer_kind, info.chat_template) == (49152, CONTEXT, "hf_bpe",
                                                                                            "chatml")
    weight_bytes = sum(t.numel() * t.element_size() for t in smollm2.loaded.model.state_dict().values()
                       if t.dim() > 1 or t.numel() > 1) - smollm2.loaded.model.output.weight.nbytes  # tied: once
    # Recorded, not yet a goal met: see bench/README.md (tied output packed twice, KV cache stored).
    print(f"artifact {smollm2.path.stat().st_size / 1e6:.0f} MB, weights {weight_bytes / 1e6:.0f} MB")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_eager_python_aoti_and_runner_agree(smollm2, prompt, tmp_path):
    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    ids = tok.encode(prompt, bos=info.add_bos)
    want = greedy(smollm2.eager, ids, info.stop_ids)
    assert greedy(smollm2.aoti, ids, info.stop_ids) == want
    if not AOTI_RUN.is_file():
        pytest.skip("build it: scripts/build_native.sh aoti")
    trace = tmp_path / "trace.jsonl"
    p = aoti_run(smollm2.path, smollm2.tokenizer, "-t", "0", "-n", str(len(ids) + N_NEW), "-i", prompt, trace=trace)
    assert p.returncode == 0, p.stderr
    fed = fed_tokens(trace)
    assert fed[:len(ids) + len(want) - 1] == ids + want[:-1]


def test_chat_with_system_prompt_agrees(smollm2, tmp_path):
    from torchchat.chat import Conversation

    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    conv = Conversation(tok, info.chat_template, info.stop_ids[0], SYSTEM)
    first = conv.turn_tokens(USER)
    want = greedy(smollm2.eager, first, info.stop_ids)
    assert greedy(smollm2.aoti, first, info.stop_ids) == want
    if not AOTI_RUN.is_file():
        pytest.skip("build it: scripts/build_native.sh aoti")
    trace = tmp_path / "chat.jsonl"
    p = aoti_run(smollm2.path, smollm2.tokenizer, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0",
                 "-n", str(len(first) + N_NEW), trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]
