"""End to end on the default model: `torchchat.py export smollm2-135m --output-pte-path`, then
eager fp32 = ExecuTorch from Python = et_run, token for token (64 greedy tokens, several prompts,
and chat with a system prompt). One export with a 512-position context; the lowering (XNNPACK
preprocesses each delegated subgraph in Python) is most of this file's time.
"""
from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_aoti import N_NEW, PROMPTS, ROOT, SYSTEM, USER, fed_tokens, greedy  # noqa: E402
from test_et import ET_RUN, et_run  # noqa: E402

pytestmark = pytest.mark.e2e
CONTEXT = 512


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from torchchat import registry
    from torchchat.errors import UserError
    from torchchat.et import PTEDecoder
    from torchchat.loader import EagerDecoder, load_model

    try:
        folder = registry.where("smollm2-135m")
    except UserError:
        pytest.skip("smollm2-135m is not downloaded (scripts/setup.sh downloads it)")
    out = tmp_path_factory.mktemp("et_smollm2") / "model.pte"
    p = subprocess.run([sys.executable, "torchchat.py", "export", "smollm2-135m", "--output-pte-path", str(out),
                        "--max-seq-length", str(CONTEXT)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr
    assert "Lowering" in p.stderr and "done in" in p.stderr  # progress on stderr
    args = Namespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32", max_seq_length=None)
    loaded = load_model(args)
    return Namespace(path=out, tokenizer=Path(folder) / "tokenizer.json", loaded=loaded,
                     eager=EagerDecoder(loaded.model, CONTEXT), et=PTEDecoder(out))


def test_program_size_and_metadata(smollm2):
    info = smollm2.et.info
    assert (info.vocab_size, info.max_seq_len, info.tokenizer_kind, info.chat_template) == (49152, CONTEXT, "hf_bpe",
                                                                                            "chatml")
    model = smollm2.loaded.model
    weights = sum(t.nbytes for t in model.state_dict().values()) - model.output.weight.nbytes  # tied: once
    size = smollm2.path.stat().st_size
    print(f"program {size / 1e6:.0f} MB, weights {weights / 1e6:.0f} MB")
    assert size < 1.25 * weights  # at most the tied matrix twice (embedding + XNNPACK's output copy)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_eager_python_et_and_runner_agree(smollm2, prompt, tmp_path):
    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    ids = tok.encode(prompt, bos=info.add_bos)
    want = greedy(smollm2.eager, ids, info.stop_ids)
    assert greedy(smollm2.et, ids, info.stop_ids) == want
    if not ET_RUN["release"].is_file():
        pytest.skip("build it: scripts/build_native.sh et")
    trace = tmp_path / "trace.jsonl"
    p = et_run(smollm2.path, smollm2.tokenizer, "-t", "0", "-n", len(ids) + N_NEW, "-i", prompt, trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(ids) + len(want) - 1] == ids + want[:-1]


def test_chat_with_system_prompt_agrees(smollm2, tmp_path):
    from torchchat.chat import Conversation

    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    conv = Conversation(tok, info.chat_template, info.stop_ids[0], SYSTEM)
    first = conv.turn_tokens(USER)
    want = greedy(smollm2.eager, first, info.stop_ids)
    assert greedy(smollm2.et, first, info.stop_ids) == want
    if not ET_RUN["release"].is_file():
        pytest.skip("build it: scripts/build_native.sh et")
    trace = tmp_path / "chat.jsonl"
    p = et_run(smollm2.path, smollm2.tokenizer, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0",
               "-n", len(first) + N_NEW, trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]
