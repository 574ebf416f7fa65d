"""Quantization quality on a model with a real floating-point weight distribution: the trained
test model (trained_llama.py), eager, perplexity relative to fp32 within our bounds.

The default model's weights are already 4-bit (Q4_1), which flatters requantization; this model
was trained in fp32. The table with every scheme is bench/quant_quality.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from quant_quality import WINDOW, model_args  # noqa: E402

BOUNDS = {  # scheme -> (spec, largest allowed perplexity increase over fp32)
    "linear:int8": ({"linear:int8": {"groupsize": 0}}, 0.01),
    "linear:int8, int8 activations": ({"linear:int8": {"groupsize": 0, "activations": "int8"}}, 0.01),
    "linear:int4 g32": ({"linear:int4": {"groupsize": 32}}, 0.06),
    "linear:int4 g32, int8 activations": ({"linear:int4": {"groupsize": 32, "activations": "int8"}}, 0.06),
    "linear:a8w4dq g32": ({"linear:a8w4dq": {"groupsize": 32}}, 0.08),
}
LIMIT = 12  # windows of 256 tokens of held-out text


def held_out_perplexity(folder: Path, spec) -> float:
    from torchchat.eval import perplexity
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    loaded = load_model(model_args(str(folder), spec))
    text = (folder / "heldout.txt").read_text(encoding="utf-8")
    return perplexity(EagerDecoder(loaded.model, WINDOW), loaded.tokenizer, loaded.info, text, WINDOW,
                      limit=LIMIT, progress=False)["perplexity"]


@pytest.fixture(scope="module")
def fp32(trained_llama):
    return held_out_perplexity(trained_llama, None)


@pytest.mark.e2e
@pytest.mark.parametrize("scheme", list(BOUNDS))
def test_quantized_perplexity_within_bounds(trained_llama, fp32, scheme):
    spec, bound = BOUNDS[scheme]
    ppl = held_out_perplexity(trained_llama, spec)
    assert ppl != fp32  # the scheme did change the weights
    assert ppl <= fp32 * (1 + bound), f"{scheme}: {ppl:.3f} vs fp32 {fp32:.3f} ({100 * (ppl / fp32 - 1):+.2f}%)"
