"""--quantize on the default model: perplexity relative to fp32 within our bounds.

`eval smollm2-135m --quantize ...` over the whole default corpus (7 windows of 256 tokens:
fewer windows swing the deltas by a point or two), run in one process so the model is read once per scheme. Eager only: the backends' parity
with eager is test_quantize.py's. SmolLM2's weights ship as Q4_1 (asymmetric 4-bit blocks
of 32), which decides what requantizing them costs:
- linear:int4 g32 is asymmetric on the same blocks: lossless on them (the +0.3% is the output
  layer at int8; at int4 it alone costs +6.5%, which is why linear:int4 keeps it at int8); with
  int8 activations (per block of 32, llama.cpp's Q8_1) +1.0%;
- linear:int8 per output channel: one scale per 576-wide row spans blocks of very different
  ranges, +1.7% over the whole corpus, above the +1% bound; with a scale per group of 32
  weights (Q4_1's blocks) it is -0.8%, inside it (g64 -0.7%; 128 and 256 do not divide 576);
- linear:a8w4dq's weights are symmetric (XNNPACK's 4-bit kernel has no zero point), which
  cannot follow the blocks' offsets: perplexity doubles (the weights alone do that, with or
  without the int8 activations; torchao's HQQ scale search does not save it).
The two misses are strict xfails: they fail loudly if a change makes them meet the bound.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from torchchat import kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import AOTI_RUN, ET_RUN, aoti_run, et_run, fed_tokens, greedy  # noqa: E402

pytestmark = pytest.mark.e2e

LIMIT = None
BOUNDS = [  # (spec, max relative perplexity increase over fp32: our bounds)
    ('{"linear:int4": {"groupsize": 32}}', 0.06),
    ('{"linear:int4": {"groupsize": 32, "activations": "int8"}}', 0.06),
    ('{"linear:int8": {"groupsize": 32}}', 0.01),
    ('{"linear:int8": {"groupsize": 32, "activations": "int8"}}', 0.01),
    pytest.param('{"linear:int8": {"groupsize": 0}}', 0.01, marks=pytest.mark.xfail(
        strict=True, reason="measured +1.7% on the whole corpus: per-channel int8 of Q4_1-derived weights")),
    pytest.param('{"linear:int8": {"groupsize": 0, "activations": "int8"}}', 0.01, marks=pytest.mark.xfail(
        strict=True, reason="measured +2.2%: the per-channel int8 weights above, +0.4% from int8 activations")),
    pytest.param('{"linear:a8w4dq": {"groupsize": 32}}', 0.08, marks=pytest.mark.xfail(
        strict=True, reason="measured +105%: symmetric 4-bit weights cannot follow Q4_1's asymmetric blocks")),
]


def perplexity(quantize=None) -> float:
    from torchchat.eval import DEFAULT_CORPUS, perplexity
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

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


# ---------------------------------------------------------------------------------------------
# Our kernels (kernels/) on the default model: the same perplexity as the reference math, and
# the same greedy tokens in eager, AOTI from Python and aoti_run, ExecuTorch from Python and et_run.

INT4, INT4A8 = '{"linear:int4": {"groupsize": 32}}', '{"linear:int4": {"groupsize": 32, "activations": "int8"}}'
INT8, INT8A8 = '{"linear:int8": {"groupsize": 0}}', '{"linear:int8": {"groupsize": 0, "activations": "int8"}}'
KERNEL_SCHEMES = [INT8, INT4, '{"linear:int8": {"groupsize": 32}}', INT4A8, INT8A8]
# int8 activations: the reference starts from the same codes, in the fp32-activation layers
# (linear:int4's int8 output layer among them).
SAME_CODES = {INT4A8: (INT4, ("Int4Linear", "Int8Linear")), INT8A8: (INT8, ("Int8Linear",))}


class ReferenceLinear(torch.nn.Module):
    """F.linear over a dequantized weight."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return F.linear(x, self.weight)


class ReferenceInt8ActivationLinear(torch.nn.Module):
    """int4 or int8 weights times int8 activations as kernels/quant_linear.h defines it, step by
    step in PyTorch: activations to int8 per block of 32 (s = max|x| / 127 in fp32, round half to
    even), exact integer dot products per block, then per block in order acc = fma(dot, scale * s,
    acc) and (int4) acc = fma(min, s * sum(xq), acc), each fma done in float64 and rounded to fp32.

    Why not F.linear on dequantized values: quantizing activations is a step function, so any
    other rounding of a layer's output moves some later block's int8 codes by one, and over 30
    layers that alone moves perplexity by ~0.3 %. Following the kernel's arithmetic keeps the
    next layer's input the same bits, so the comparison can be tight."""

    def __init__(self, layer):
        super().__init__()
        if type(layer).__name__ == "Int4Linear":
            q, scales_mins = layer.codes()
            self.q = q.double()
            sm = scales_mins.float().repeat_interleave(layer.groupsize // 32, dim=1)  # [N, K / 32, 2]
            self.scale, self.min = sm[..., 0], sm[..., 1]
        else:  # Int8Linear: one scale per row or per group, no min
            q, scale = layer.codes()
            self.q = q.double()
            n, k = self.q.shape
            scale = scale.float().reshape(n, -1)
            self.scale, self.min = scale.repeat_interleave(k // 32 // scale.shape[1], dim=1), None

    def forward(self, x):
        shape, (n, k) = x.shape, self.q.shape
        xb = x.float().reshape(-1, k // 32, 32)
        s = xb.abs().amax(-1) / 127
        xq = torch.where(s[..., None] > 0, torch.round(xb / s[..., None]), 0.0)
        scaled_sum = s * xq.sum(-1)
        dots = torch.einsum("mbk,nbk->mnb", xq.double(), self.q.reshape(n, k // 32, 32))
        acc = torch.zeros(xb.shape[0], n)
        for b in range(k // 32):
            factor = self.scale[None, :, b] * s[:, b, None]  # fp32 product, as the kernel's
            acc = (dots[:, :, b] * factor.double() + acc.double()).float()
            if self.min is not None:
                acc = (self.min[None, :, b].double() * scaled_sum[:, b, None].double() + acc.double()).float()
        return acc.reshape(*shape[:-1], n)


def dequantized_reference(model) -> None:
    """Replace each kernel-backed linear by its reference: plain F.linear over the dequantized
    weight, or for int8 activations the step-by-step arithmetic above."""
    from torchchat.quantize import Int4A8Linear, Int4Linear, Int8A8Linear, Int8Linear

    for parent in list(model.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, (Int4A8Linear, Int8A8Linear)):
                raise AssertionError("build the reference from the fp32-activation layers (the same codes)")
            if isinstance(m, Int8Linear):
                setattr(parent, name, ReferenceLinear(kernels.dequantize_int8(*m.codes())))
            elif isinstance(m, Int4Linear):
                q, scales_mins = m.codes()
                setattr(parent, name, ReferenceLinear(kernels.dequantize_int4(kernels.pack_int4(q), scales_mins,
                                                                              m.groupsize)))


@pytest.mark.parametrize("spec", KERNEL_SCHEMES, ids=["int8", "int4", "int8g32", "int4a8", "int8a8"])
def test_kernels_perplexity_equals_the_reference_math(spec):
    from torchchat.eval import DEFAULT_CORPUS, perplexity
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    def load(quantize):
        return load_model(SimpleNamespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                                          tokenizer_path=None, dtype="fp32", quantize=quantize))

    text = DEFAULT_CORPUS.read_text()

    def ppl(loaded):
        return perplexity(EagerDecoder(loaded.model, 256), loaded.tokenizer, loaded.info, text, 256, limit=3,
                          progress=False)["perplexity"]

    loaded = load(spec)
    ours = ppl(loaded)
    if spec in SAME_CODES:
        same, layers = SAME_CODES[spec]
        loaded = load(same)
        for parent in list(loaded.model.modules()):
            for name, m in list(parent.named_children()):
                if type(m).__name__ in layers:
                    setattr(parent, name, ReferenceInt8ActivationLinear(m))
    dequantized_reference(loaded.model)
    reference = ppl(loaded)
    assert ours == pytest.approx(reference, rel=1e-3), (ours, reference)


# (export flag, file, runner binary, runner): our kernels in an AOT Inductor .so (through its C
# shims) and in an ExecuTorch .pte (kernels/executorch_ops.cpp).
EXPORTS = {"aoti": ("--output-dso-path", "int8.so", AOTI_RUN, aoti_run),
           "et": ("--output-pte-path", "int8.pte", ET_RUN["release"], et_run)}


@pytest.mark.parametrize("backend", list(EXPORTS))
def test_int8_greedy_eager_exported_and_runner_agree(tmp_path, backend):
    import subprocess

    from torchchat import registry
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    flag, name, binary, run = EXPORTS[backend]
    spec = KERNEL_SCHEMES[0]
    args = SimpleNamespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                           tokenizer_path=None, dtype="fp32", quantize=spec)
    try:
        loaded = load_model(args)
    except Exception as e:  # not downloaded: scripts/setup.sh does it
        pytest.skip(f"smollm2-135m is not in the cache: {e}")
    out = tmp_path / name
    p = subprocess.run([sys.executable, "torchchat.py", "export", "smollm2-135m", "--quantize", spec,
                        "--max-seq-length", "128", flag, str(out)], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    if backend == "et":
        from torchchat.backends.executorch import PTEDecoder

        exported = PTEDecoder(out)
    else:
        from torchchat.backends.aoti import AOTIDecoder

        exported = AOTIDecoder(out)
    tok, info = loaded.tokenizer, loaded.info
    for i, prompt in enumerate(["Once upon a time", "The capital of France is"]):
        ids = tok.encode(prompt, bos=info.add_bos)
        want = greedy(EagerDecoder(loaded.model, 128), ids, info.stop_ids)
        assert greedy(exported, ids, info.stop_ids) == want, prompt
        if binary.is_file():
            trace = tmp_path / f"trace{i}.jsonl"
            r = run(out, Path(registry.where("smollm2-135m")) / "tokenizer.json", "-t", "0",
                    "-n", len(ids) + len(want), "-i", prompt, trace=trace)
            assert r.returncode == 0, r.stderr
            assert "quantize linear:int8" in r.stderr
            assert fed_tokens(trace)[:len(ids) + len(want) - 1] == ids + want[:-1], prompt
