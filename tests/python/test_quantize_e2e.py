"""--quantize on the default model: perplexity relative to fp32 within the issue's bounds.

`eval smollm2-135m --quantize ...` over the whole default corpus (7 windows of 256 tokens:
fewer windows swing the deltas by a point or two), run in one process so the model is read once per scheme. Eager only: the backends' parity
with eager is test_quantize.py's. SmolLM2's weights ship as Q4_1 (asymmetric 4-bit blocks
of 32), which decides what requantizing them costs:
- linear:int4 g32 is asymmetric on the same blocks: close to lossless;
- linear:int8 is per output channel: one scale per 576-wide row spans blocks of very different
  ranges, +1.7% over the whole corpus, above the issue's +1%;
- linear:a8w4dq's weights are symmetric (XNNPACK's 4-bit kernel has no zero point), which
  cannot follow the blocks' offsets: perplexity doubles (the weights alone do that, with or
  without the int8 activations; torchao's HQQ scale search does not save it).
The two misses are strict xfails: they fail loudly if a change makes them meet the bound.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.e2e

LIMIT = None
BOUNDS = [  # (spec, max relative perplexity increase over fp32: the bounds)
    ('{"linear:int4": {"groupsize": 32}}', 0.06),
    pytest.param('{"linear:int8": {"groupsize": 0}}', 0.01, marks=pytest.mark.xfail(
        strict=True, reason="measured +1.7% on the whole corpus: per-channel int8 of Q4_1-derived weights")),
    pytest.param('{"linear:a8w4dq": {"groupsize": 32}}', 0.08, marks=pytest.mark.xfail(
        strict=True, reason="measured +105%: symmetric 4-bit weights cannot follow Q4_1's asymmetric blocks")),
]


def perplexity(quantize=None) -> float:
    from torchchat.eval import DEFAULT_CORPUS, perplexity
    from torchchat.loader import EagerDecoder, load_model

    args = SimpleNamespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                           tokenizer_path=None, dtype="fp32", quantize=quantize)
    loaded = load_model(args)
    return perplexity(EagerDecoder(loaded.model, 256), loaded.tokenizer, loaded.info, DEFAULT_CORPUS.read_text(),
                      256, limit=LIMIT, progress=False)["perplexity"]


@pytest.fixture(scope="module")
def fp32() -> float:
    from torchchat import registry

    try:
        registry.model_files("smollm2-135m")
    except Exception as e:  # not downloaded: scripts/setup.sh does it
        pytest.skip(f"smollm2-135m is not in the cache: {e}")
    return perplexity()


@pytest.mark.parametrize("spec,bound", BOUNDS)
def test_perplexity_within_bound(fp32, spec, bound):
    got = perplexity(spec)
    assert got <= fp32 * (1 + bound), f"{spec}: {got:.3f} vs fp32 {fp32:.3f} ({(got / fp32 - 1) * 100:+.2f}%)"
