"""End to end on the default model, once per backend: `torchchat.py export smollm2-135m` to an
AOT Inductor .so (`--output-dso-path`, the documented route; the .pt2 route is covered on tiny models in
test_aoti.py) or an ExecuTorch .pte (`--output-pte-path`), then eager fp32 = the artifact from
Python = its runner (aoti_run, et_run), token for token (64 greedy tokens, several prompts, and
chat with a system prompt). One export per backend with a 512-position context to keep the test
short; for ExecuTorch the lowering (XNNPACK preprocesses each delegated subgraph in Python) is most
of the time.
"""
from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import (  # noqa: E402
    AOTI_RUN, ET_RUN, N_NEW, PROMPTS, ROOT, SYSTEM, USER, aoti_run, et_run, fed_tokens, greedy, system_chat_turn,
)

pytestmark = pytest.mark.e2e
CONTEXT = 512

# What differs between the backends: the export (flag, file, time limit, the progress word on
# stderr), the runner and its build hint, what the artifact is called in the size line.
BACKENDS = {
    "aoti": Namespace(flag="--output-dso-path", file="model.so", timeout=900, progress="Compiling", runner=AOTI_RUN,
                      run=aoti_run, build="scripts/build_native.sh aoti", noun="artifact"),
    "et": Namespace(flag="--output-pte-path", file="model.pte", timeout=1200, progress="Lowering",
                    runner=ET_RUN["release"], run=et_run, build="scripts/build_native.sh et", noun="program"),
}


@pytest.fixture(scope="module")
def eager():
    """The eager fp32 reference, loaded once for both backends."""
    from torchchat import registry
    from torchchat.errors import UserError
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    try:
        folder = registry.where("smollm2-135m")
    except UserError:
        pytest.skip("smollm2-135m is not downloaded (scripts/setup.sh downloads it)")
    args = Namespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32", max_seq_length=None)
    loaded = load_model(args)
    return Namespace(tokenizer=Path(folder) / "tokenizer.json", loaded=loaded,
                     eager=EagerDecoder(loaded.model, CONTEXT))


@pytest.fixture(scope="module", params=list(BACKENDS))
def smollm2(request, eager, tmp_path_factory):
    """smollm2-135m exported for one backend, with its Python decoder and the eager reference."""
    backend = BACKENDS[request.param]
    out = tmp_path_factory.mktemp(f"{request.param}_smollm2") / backend.file
    p = subprocess.run([sys.executable, "torchchat.py", "export", "smollm2-135m", backend.flag, str(out),
                        "--max-seq-length", str(CONTEXT)], cwd=ROOT, capture_output=True, text=True,
                       timeout=backend.timeout)
    assert p.returncode == 0, p.stderr
    assert backend.progress in p.stderr and "done in" in p.stderr  # progress on stderr
    if request.param == "aoti":
        from torchchat.backends.aoti import AOTIDecoder as decoder_class
    else:
        from torchchat.backends.executorch import PTEDecoder as decoder_class
    return Namespace(name=request.param, backend=backend, path=out, exported=decoder_class(out), **vars(eager))


def run_runner(smollm2, *flags, trace):
    """The backend's runner on the exported model (a skip when it is not built)."""
    if not smollm2.backend.runner.is_file():
        pytest.skip(f"build it: {smollm2.backend.build}")
    return smollm2.backend.run(smollm2.path, smollm2.tokenizer, *flags, trace=trace)


def test_artifact_size_and_metadata(smollm2):
    info = smollm2.exported.info
    assert (info.vocab_size, info.max_seq_len, info.tokenizer_kind, info.chat_template) == (49152, CONTEXT, "hf_bpe",
                                                                                            "chatml")
    model = smollm2.loaded.model
    weights = sum(t.nbytes for t in model.state_dict().values()) - model.output.weight.nbytes  # tied: once
    size = smollm2.path.stat().st_size
    print(f"{smollm2.backend.noun} {size / 1e6:.0f} MB, weights {weights / 1e6:.0f} MB")
    if smollm2.name == "et":
        assert size < 1.25 * weights  # at most the tied matrix twice (embedding + XNNPACK's output copy)
    else:  # AOTI: the tied matrix once (torchchat/export/program.py TiedOutput), no KV cache stored: the bound
        assert size < 1.15 * weights


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_eager_python_exported_and_runner_agree(smollm2, prompt, tmp_path):
    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    ids = tok.encode(prompt, bos=info.add_bos)
    want = greedy(smollm2.eager, ids, info.stop_ids)
    assert greedy(smollm2.exported, ids, info.stop_ids) == want
    trace = tmp_path / "trace.jsonl"
    p = run_runner(smollm2, "-t", "0", "-n", len(ids) + N_NEW, "-i", prompt, trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(ids) + len(want) - 1] == ids + want[:-1]


def test_chat_with_system_prompt_agrees(smollm2, tmp_path):
    tok, info = smollm2.loaded.tokenizer, smollm2.loaded.info
    first = system_chat_turn(tok, info)
    want = greedy(smollm2.eager, first, info.stop_ids)
    assert greedy(smollm2.exported, first, info.stop_ids) == want
    trace = tmp_path / "chat.jsonl"
    p = run_runner(smollm2, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0", "-n", len(first) + N_NEW, trace=trace)
    assert p.returncode == 0, p.stderr
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]
