"""Our linear kernels (kernels/, torchchat/kernels.py): each against its reference
math on random shapes (odd sizes included), every kernel level this CPU has (TORCHCHAT_KERNELS)
against this process's, bit for bit, bad weights, and the kernels inside AOT Inductor models and ExecuTorch
programs: eager = AOTI from Python = aoti_run and eager = ExecuTorch from Python = et_run,
token for token, on a tiny model quantized int8 (per channel and g32), int4, and int4 and int8 with
int8 activations. Then each kernel level this CPU has, forced (TORCHCHAT_KERNELS), end to end: the
greedy tokens of eager (on our kernels, as generate runs it), aoti_run and et_run, for fp32 and every
quantized scheme, equal the reference's. (The C++ test tests/kernels/test_linear_isa.cpp compares the
implementations of the fp32-activation linears directly, on more shapes.)

The reference is written here from the formats' definitions (kernels/quant_linear.h):
dequantize, then a float64 matmul; the kernels accumulate in fp32, so they must agree within
fp32 rounding of a K-term dot product.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import (  # noqa: E402
    AOTI_RUN, CONTEXT, PROMPTS, Exported, aoti_run, et_run, fed_tokens, greedy, model_args, pte_kernel_calls,
    shared_folder,
)
from tiny_models import tiny_hf_model, write_llama2c_pt  # noqa: E402
from tiny_tokenizers import write_sentencepiece, write_tokenizer_bin  # noqa: E402

from torchchat import kernels  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def loaded():
    kernels.load()


def ref_int8(x, q, scale):  # w = q * scale, per output row (scale [N]) or per group of G weights ([N, K / G])
    scale = scale.double().reshape(len(q), -1)
    return x.double() @ (q.double() * scale.repeat_interleave(q.shape[1] // scale.shape[1], dim=1)).T


def ref_int4(x, packed, scales_mins, g):  # per 32 weights, byte j = q[j] | q[j + 16] << 4; w = q * scale + min
    n, half = packed.shape
    blocks = packed.reshape(n, half // 16, 16).long()
    q = torch.stack([blocks & 15, blocks >> 4], dim=2).reshape(n, 2 * half).double()
    sm = scales_mins.double()
    w = q.reshape(n, -1, g) * sm[..., :1] + sm[..., 1:]
    return x.double() @ w.reshape(n, -1).T


def unpack_int4_panels(panels, n, g):
    """(q [N, K], scales_mins [N, K / g, 2]) back from [ceil(N / 16), K / g, 8g + 64] panels: per
    group, blocks of 32 k as 4 chunks of 64 bytes (byte 4l + i of chunk c: low nibble q[l, 4c + i],
    high nibble q[l, 16 + 4c + i]), then 16 fp16 scales and 16 fp16 mins."""
    p, groups, _ = panels.shape
    codes = panels[..., :8 * g].reshape(p, groups * g // 32, 4, 16, 4).long()  # [p, block, c, l, i]
    q = torch.stack([codes & 15, codes >> 4], dim=2)  # [p, block, half, c, l, i]
    q = q.permute(0, 4, 1, 2, 3, 5).reshape(p * 16, groups * g)[:n]
    sm = panels[..., 8 * g:].contiguous().view(torch.float16).reshape(p, groups, 2, 16)
    return q, sm.permute(0, 3, 1, 2).reshape(p * 16, groups, 2)[:n]


def unpack_int8_panels(panels, n):
    """(q [N, K], scale [N, K / g]) back from [ceil(N / 16), K / g, 16g + 64] panels: per group,
    blocks of 32 k as 8 chunks of 64 bytes (byte 4l + i of chunk c: q[l, 4c + i] + 128), then 16
    fp32 scales."""
    p, groups, size = panels.shape
    g = (size - 64) // 16
    codes = panels[..., :16 * g].reshape(p, groups * g // 32, 8, 16, 4).long() - 128  # [p, block, c, l, i]
    q = codes.permute(0, 3, 1, 2, 4).reshape(p * 16, groups * g)[:n]
    scale = panels[..., 16 * g:].contiguous().view(torch.float32).reshape(p, groups, 16)
    return q, scale.permute(0, 2, 1).reshape(p * 16, groups)[:n]


def quantize_activations_ref(x):
    """Activations to int8 per 32 values (s = max|x| / 127, round half to even): (xq, s) in float64."""
    m, k = x.shape
    xb = x.double().reshape(m, k // 32, 32)
    s = (x.reshape(m, k // 32, 32).abs().amax(-1) / 127).double()  # in fp32, as the kernel
    return torch.where(s[..., None] > 0, torch.round(xb / s[..., None]), 0.0), s


def ref_int4_a8(x, q, scales_mins, g):
    """The exact integer dot product per block of 32, scaled by the weights' scale and the
    activations' s, and the weights' min times s * sum(xq): in float64."""
    m, k = x.shape
    xq, s = quantize_activations_ref(x)
    qb = q.double().reshape(len(q), k // 32, 32)
    sm = scales_mins.double().repeat_interleave(g // 32, dim=1)
    dots = torch.einsum("mbk,nbk->mnb", xq, qb)
    return (dots * sm[None, :, :, 0] * s[:, None] + sm[None, :, :, 1] * (s * xq.sum(-1))[:, None]).sum(-1)


def ref_int8_a8(x, q, scale):
    """The exact integer dot product per block of 32, times the weights' scale (per row or group)
    and the activations' s: in float64."""
    m, k = x.shape
    xq, s = quantize_activations_ref(x)
    qb = q.double().reshape(len(q), k // 32, 32)
    sc = scale.double().reshape(len(q), -1).repeat_interleave(k // 32 // scale.reshape(len(q), -1).shape[1], dim=1)
    return (torch.einsum("mbk,nbk->mnb", xq, qb) * sc[None] * s[:, None]).sum(-1)


def tolerance(x, w_abs_max, k):
    # fp32 accumulation of K products: error <= ~K * eps * sum|x * w|; bound it generously.
    return 1e-6 * k * (x.abs().double().sum(-1, keepdim=True) * w_abs_max).clamp(min=1e-6)


INT8_SHAPES = [(1, 1, 1), (1, 7, 15), (2, 5, 17), (3, 130, 64), (5, 33, 577), (9, 4, 1536), (1, 576, 576),
               (128, 67, 96)]
INT8_GROUP_SHAPES = [(1, 1, 32, 32), (2, 5, 64, 32), (3, 130, 96, 32), (5, 33, 576, 64), (7, 13, 256, 128),
                     (4, 3, 768, 256), (128, 67, 576, 32), (1, 576, 1536, 64), (11, 9, 512, 512)]
INT4_SHAPES = [(1, 1, 32, 32), (2, 5, 64, 32), (3, 130, 96, 32), (5, 33, 256, 64), (9, 7, 512, 128),
               (4, 3, 768, 256), (128, 67, 576, 32), (1, 576, 1536, 32)]


@pytest.mark.parametrize("m,n,k", INT8_SHAPES)
def test_int8_matches_reference(m, n, k):
    torch.manual_seed(m * 1000 + n + k)
    w, x = torch.randn(n, k), torch.randn(m, k)
    q, scale = kernels.quantize_int8(w)
    got = torch.ops.torchchat.int8_weight_linear(x, q, scale)
    want = ref_int8(x, q, scale)
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= tolerance(x, (q.double().abs() * scale[:, None]).max(), k)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", INT8_SHAPES)
def test_float_matches_reference(m, n, k, dtype):
    torch.manual_seed(m * 1000 + n + k)
    w, x = torch.randn(n, k, dtype=dtype), torch.randn(m, k)
    got = torch.ops.torchchat.float_weight_linear(x, w)
    want = x.double() @ w.double().T
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= tolerance(x, w.double().abs().max(), k)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", INT8_SHAPES + [(25, 100, 64), (13, 32, 3)])
def test_panels_match_reference(m, n, k, dtype):
    """Column panels of 32 outputs, [ceil(N / 32), K, 32], zero-padded (kernels/quant_linear.h)."""
    torch.manual_seed(m * 1000 + n + k)
    w, x = torch.randn(n, k, dtype=dtype), torch.randn(m, k)
    panels = kernels.pack_panels(w)
    assert panels.shape == (-(-n // 32), k, 32)
    assert torch.equal(panels.transpose(1, 2).reshape(-1, k)[:n], w)
    got = torch.ops.torchchat.panel_weight_linear(x, panels, n)
    want = x.double() @ w.double().T
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= tolerance(x, w.double().abs().max(), k)).all()


@pytest.mark.parametrize("m,n,k,g", INT8_GROUP_SHAPES)
def test_int8_groupwise_quantization(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g)
    w = torch.randn(n, k)
    w[:, :g] *= 50  # groups of very different ranges: a per-row scale would lose the others
    q, scale = kernels.quantize_int8(w, g)
    assert q.shape == (n, k) and scale.shape == (n, k // g) and scale.dtype == torch.float32
    # symmetric per group: every weight within half of its group's step
    step = scale.repeat_interleave(g, dim=1)
    assert ((kernels.dequantize_int8(q, scale) - w).abs() <= step * 0.501).all()


def test_int8_row_scales_as_a_column():
    torch.manual_seed(2)
    w, x = torch.randn(5, 33), torch.randn(3, 33)
    q, s = kernels.quantize_int8(w)
    assert torch.equal(torch.ops.torchchat.int8_weight_linear(x, q, s[:, None]),
                       torch.ops.torchchat.int8_weight_linear(x, q, s))


@pytest.mark.parametrize("m,n,k,g", INT4_SHAPES)
def test_int4_quantization_is_min_max(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g)
    w = torch.randn(n, k)
    q, scales_mins = kernels.quantize_int4(w, g)
    packed = kernels.pack_int4(q)
    assert packed.shape == (n, k // 2) and torch.equal(kernels.unpack_int4(packed), q)
    # every weight within half a step of its code
    step = scales_mins[..., 0].float().repeat_interleave(g, dim=1)
    assert ((kernels.dequantize_int4(packed, scales_mins, g) - w).abs() <= step * 0.51 + 1e-3).all()


INT4_A8_SHAPES = INT4_SHAPES + [(3, 37, 96, 32), (20, 50, 256, 128), (1, 49152 // 64, 576, 32)]


@pytest.mark.parametrize("m,n,k,g", INT4_A8_SHAPES)
def test_int4_a8_matches_reference(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g)
    w, x = torch.randn(n, k), torch.randn(m, k)
    x[0, 32:64] = 0  # a block of zeros: s = 0
    x[-1, :32] *= 1000  # a block far larger than the others
    q, scales_mins = kernels.quantize_int4(w, g)
    panels = kernels.pack_int4_panels(q, scales_mins, g)
    assert panels.shape == (-(-n // 16), k // g, 8 * g + 64)
    q_back, sm_back = unpack_int4_panels(panels, n, g)
    assert torch.equal(q_back, q.long()) and torch.equal(sm_back, scales_mins)
    got = torch.ops.torchchat.int4_a8_weight_linear(x, panels, n, g).double()
    want = ref_int4_a8(x, q, scales_mins, g)
    # The integer part is exact; the scaling rounds once or twice per block of 32.
    assert ((got - want).abs() <= 1e-6 * (k // 32) * (x.abs().sum(-1, keepdim=True).double() * 4)).all()
    # and it is the int4 layer's math on slightly rounded activations: close to the fp32-activation kernel
    exact = ref_int4(x, kernels.pack_int4(q), scales_mins, g)
    assert ((got - exact).abs() <= 0.02 * exact.abs().max(-1, keepdim=True).values + 1e-3).all()


INT8_A8_SHAPES = [(1, 1, 32, 0), (2, 5, 64, 0), (3, 37, 96, 0), (5, 33, 576, 0), (9, 16, 1536, 0),
                  (128, 67, 576, 0), (1, 49152 // 64, 576, 0), (3, 130, 96, 32), (5, 33, 576, 64),
                  (20, 50, 256, 128), (4, 3, 768, 256)]


@pytest.mark.parametrize("m,n,k,g", INT8_A8_SHAPES)
def test_int8_a8_matches_reference(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g)
    w, x = torch.randn(n, k), torch.randn(m, k)
    if k >= 64:
        x[0, 32:64] = 0  # a block of zeros: s = 0
    x[-1, :32] *= 1000  # a block far larger than the others
    w[:, :32] *= 50
    q, scale = kernels.quantize_int8(w, g)
    panels = kernels.pack_int8_panels(q, scale)
    gs = g or k
    assert panels.shape == (-(-n // 16), k // gs, 16 * gs + 64)
    q_back, scale_back = unpack_int8_panels(panels, n)
    assert torch.equal(q_back, q.long()) and torch.equal(scale_back, scale.reshape(n, -1))
    got = torch.ops.torchchat.int8_a8_weight_linear(x, panels, n).double()
    want = ref_int8_a8(x, q, scale)
    # The integer part is exact; the scaling rounds twice per block of 32.
    w_max = (q.double().abs() * scale.reshape(n, -1).double().repeat_interleave(gs, dim=1)).max()
    assert ((got - want).abs() <= 1e-6 * (k // 32) * (x.abs().sum(-1, keepdim=True).double() * w_max)).all()
    # and it is the int8 layer's math on slightly rounded activations
    exact = ref_int8(x, q, scale)
    assert ((got - exact).abs() <= 0.02 * exact.abs().max(-1, keepdim=True).values + 1e-3).all()


def hard_activations(m, k):
    """Random activations with the blocks that test the int8 slices: zeros (s = 0), one 1000x the
    others, and one that carries (s = 1 and x / s = 2i + 1/2: the first slice rounds down to even,
    leaving +s/2 for the second, which rounds to 128)."""
    x = torch.randn(m, k)
    if k >= 64:
        x[0, 32:64] = 0
    x[-1, :32] *= 1000
    if k >= 96:
        x[m // 2, 64:96] = torch.arange(32) * 2 + 0.5
        x[m // 2, 95] = 127
    return x


def exact_error_bound(x, w):
    """fp32 accuracy: a few roundings of 2^-24 relative to sum |x| |w| (the int8-activation kernels
    are ~1e5 times further off)."""
    return 2.0 ** -20 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize("m,n,k,g", INT4_A8_SHAPES)
def test_int4_fp32_activations_in_three_slices_are_fp32_accurate(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g + 1)
    w, x = torch.randn(n, k), hard_activations(m, k)
    q, scales_mins = kernels.quantize_int4(w, g)
    panels = kernels.pack_int4_panels(q, scales_mins, g)
    assert [torch.equal(a, b) for a, b in zip(kernels.unpack_int4_panels(panels, n, g), (q, scales_mins))] == [True] * 2
    got = torch.ops.torchchat.int4_panel_weight_linear(x, panels, n, g).double()
    assert got.shape == (m, n)
    wd = kernels.dequantize_int4(kernels.pack_int4(q), scales_mins, g)
    assert ((got - x.double() @ wd.double().T).abs() <= exact_error_bound(x, wd)).all()


@pytest.mark.parametrize("m,n,k,g", INT8_A8_SHAPES)
def test_int8_fp32_activations_in_three_slices_are_fp32_accurate(m, n, k, g):
    torch.manual_seed(m * 1000 + n + k + g + 1)
    w, x = torch.randn(n, k), hard_activations(m, k)
    w[:, :32] *= 50
    q, scale = kernels.quantize_int8(w, g)
    panels = kernels.pack_int8_panels(q, scale)
    q_back, scale_back = kernels.unpack_int8_panels(panels, n)
    assert torch.equal(q_back, q) and torch.equal(scale_back, scale.reshape(n, -1))
    got = torch.ops.torchchat.int8_panel_weight_linear(x, panels, n).double()
    wd = kernels.dequantize_int8(q, scale)
    assert ((got - x.double() @ wd.double().T).abs() <= exact_error_bound(x, wd)).all()


def test_quantized_layers_keep_their_codes():
    from torchchat.quantize import Int4Linear, Int8Linear

    torch.manual_seed(3)
    w = torch.randn(40, 96)
    for g in (0, 32):
        layer = Int8Linear(w, g)
        assert layer.panels and [torch.equal(a, b) for a, b in zip(layer.codes(), kernels.quantize_int8(w, g))] == [True] * 2
    odd = Int8Linear(torch.randn(5, 33))  # not a multiple of 32: row-major weights, fp32 kernel
    assert not odd.panels and odd(torch.randn(2, 33)).shape == (2, 5)
    layer = Int4Linear(w, 32)
    assert [torch.equal(a, b) for a, b in zip(layer.codes(), kernels.quantize_int4(w, 32))] == [True] * 2


def test_a_token_gets_the_same_bits_alone_or_in_a_prompt():
    """Prefill and decode must agree exactly: the logits of a position do not depend on T."""
    torch.manual_seed(1)
    w, x = torch.randn(70, 576), torch.randn(11, 576)
    q8, s8 = kernels.quantize_int8(w)
    g8, gs8 = kernels.quantize_int8(w, 64)
    q4, sm = kernels.quantize_int4(w, 32)
    batch8 = torch.ops.torchchat.int8_weight_linear(x, q8, s8)
    panels4 = kernels.pack_int4_panels(q4, sm, 32)
    batch4a8 = torch.ops.torchchat.int4_a8_weight_linear(x, panels4, 70, 32)
    panels8, panels8g = kernels.pack_int8_panels(q8, s8), kernels.pack_int8_panels(g8, gs8)
    batch8a8 = torch.ops.torchchat.int8_a8_weight_linear(x, panels8, 70)
    batch8a8g = torch.ops.torchchat.int8_a8_weight_linear(x, panels8g, 70)
    batch4p = torch.ops.torchchat.int4_panel_weight_linear(x, panels4, 70, 32)
    batch8p = torch.ops.torchchat.int8_panel_weight_linear(x, panels8, 70)
    batch8pg = torch.ops.torchchat.int8_panel_weight_linear(x, panels8g, 70)
    batch32 = torch.ops.torchchat.float_weight_linear(x, w)
    panels = kernels.pack_panels(w)
    batch_panels = torch.ops.torchchat.panel_weight_linear(x, panels, 70)
    for i in range(len(x)):
        assert torch.equal(torch.ops.torchchat.panel_weight_linear(x[i:i + 1], panels, 70), batch_panels[i:i + 1])
        assert torch.equal(torch.ops.torchchat.float_weight_linear(x[i:i + 1], w), batch32[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int8_weight_linear(x[i:i + 1], q8, s8), batch8[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int4_a8_weight_linear(x[i:i + 1], panels4, 70, 32), batch4a8[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int8_a8_weight_linear(x[i:i + 1], panels8, 70), batch8a8[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int8_a8_weight_linear(x[i:i + 1], panels8g, 70), batch8a8g[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int4_panel_weight_linear(x[i:i + 1], panels4, 70, 32), batch4p[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int8_panel_weight_linear(x[i:i + 1], panels8, 70), batch8p[i:i + 1])
        assert torch.equal(torch.ops.torchchat.int8_panel_weight_linear(x[i:i + 1], panels8g, 70), batch8pg[i:i + 1])


def test_shapes_and_dtypes_follow_the_input():
    q, s = kernels.quantize_int8(torch.randn(12, 64))
    y = torch.ops.torchchat.int8_weight_linear(torch.randn(2, 3, 64, dtype=torch.bfloat16), q, s)
    assert y.shape == (2, 3, 12) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("call,pattern", [
    (lambda: torch.ops.torchchat.panel_weight_linear(torch.randn(1, 64), torch.zeros(2, 64, 16), 64),
     "panels must be a contiguous fp32 or bf16"),
    (lambda: torch.ops.torchchat.panel_weight_linear(torch.randn(1, 64), torch.zeros(2, 64, 32), 65),
     "2 panels do not hold N = 65 outputs"),
    (lambda: torch.ops.torchchat.float_weight_linear(torch.randn(1, 64), torch.zeros(4, 64, dtype=torch.half)),
     "weight must be a contiguous fp32 or bf16"),
    (lambda: torch.ops.torchchat.float_weight_linear(torch.randn(1, 64), torch.zeros(64, 4).T),
     "weight must be a contiguous fp32 or bf16"),
    (lambda: torch.ops.torchchat.int8_weight_linear(torch.randn(1, 64), torch.zeros(4, 64), torch.ones(4)),
     "weight must be a contiguous int8"),
    (lambda: torch.ops.torchchat.int8_weight_linear(torch.randn(1, 63), torch.zeros(4, 64, dtype=torch.int8),
                                                    torch.ones(4)), "x has 63 features, the weight 64"),
    (lambda: torch.ops.torchchat.int8_weight_linear(torch.randn(1, 64), torch.zeros(4, 64, dtype=torch.int8),
                                                    torch.ones(4, 3)), "scales must be contiguous fp32"),
    (lambda: torch.ops.torchchat.int8_weight_linear(torch.randn(1, 64), torch.zeros(4, 64, dtype=torch.int8),
                                                    torch.ones(4, 2)), r"scales must be contiguous fp32 \[N\] or \[N, 1\]"),
    (lambda: torch.ops.torchchat.int8_weight_linear(torch.randn(1, 64), torch.zeros(4, 64, dtype=torch.int8),
                                                    torch.ones(3)), "scales must be contiguous fp32"),
    (lambda: torch.ops.torchchat.int4_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 320, dtype=torch.uint8),
                                                       16, 48), "groupsize must be a multiple of 32"),
    (lambda: torch.ops.torchchat.int4_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 320, dtype=torch.uint8),
                                                       17, 32), r"panels must be a contiguous uint8 \[ceil\(N / 16\)"),
    (lambda: torch.ops.torchchat.int4_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 300, dtype=torch.uint8),
                                                       16, 32), "panels must be"),
    (lambda: torch.ops.torchchat.int4_a8_weight_linear(torch.randn(1, 0), torch.zeros(1, 0, 320, dtype=torch.uint8),
                                                       16, 32), "panels must be"),
    (lambda: torch.ops.torchchat.int4_a8_weight_linear(torch.randn(1, 96), torch.zeros(1, 2, 320, dtype=torch.uint8),
                                                       16, 32), "x has 96 features, the weight 64"),
    (lambda: torch.ops.torchchat.int8_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 576, dtype=torch.uint8),
                                                       17), r"panels must be a contiguous uint8 \[ceil\(N / 16\), K / G, 16G"),
    (lambda: torch.ops.torchchat.int8_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 560, dtype=torch.uint8),
                                                       16), "panels must be"),  # G = 31
    (lambda: torch.ops.torchchat.int8_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 0, 576, dtype=torch.uint8),
                                                       16), "panels must be"),
    (lambda: torch.ops.torchchat.int8_a8_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 576, dtype=torch.int8),
                                                       16), "panels must be"),
    (lambda: torch.ops.torchchat.int8_a8_weight_linear(torch.randn(1, 96), torch.zeros(1, 2, 576, dtype=torch.uint8),
                                                       16), "x has 96 features, the weight 64"),
    (lambda: torch.ops.torchchat.int4_panel_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 320, dtype=torch.uint8),
                                                          17, 32), r"int4_panel_weight_linear: panels must be"),
    (lambda: torch.ops.torchchat.int4_panel_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 320, dtype=torch.uint8),
                                                          16, 0), "groupsize must be a multiple of 32"),
    (lambda: torch.ops.torchchat.int8_panel_weight_linear(torch.randn(1, 64), torch.zeros(1, 2, 560, dtype=torch.uint8),
                                                          16), r"int8_panel_weight_linear: panels must be"),
    (lambda: torch.ops.torchchat.int8_panel_weight_linear(torch.randn(1, 96), torch.zeros(1, 2, 576, dtype=torch.uint8),
                                                          16), "x has 96 features, the weight 64"),
])
def test_bad_weights_are_refused(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


LEVEL_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from torchchat import kernels
print(kernels.isa())
torch.manual_seed(0)
x, w = torch.randn(3, 96), torch.randn(37, 96)
xh = x.clone()  # for the sliced kernels: a block whose second int8 slice carries, one 1000x the others,
xh[1, 64:96] = torch.arange(32) * 2 + 0.5  # one of subnormal values (too small to split)
xh[1, 95] = 127
xh[2, :32] *= 1000
xh[0, 32:64] *= 1e-40
xo, wo = torch.randn(13, 83), torch.randn(45, 83)  # K not a multiple of 16, N not of 32 or 4
q8, s8 = kernels.quantize_int8(w)
qo, so = kernels.quantize_int8(wo)
q4, sm = kernels.quantize_int4(w, 32)
wb, wob = w.bfloat16(), wo.bfloat16()
ops = torch.ops.torchchat
torch.save({"x": x, "w": w, "q8": q8, "s8": s8, "sm": sm, "q4": q4, "xh": xh, "xo": xo, "wo": wo,
            "y32": ops.float_weight_linear(x, w),
            "ybf16": ops.float_weight_linear(x, wb),
            "ypanels": ops.panel_weight_linear(x, kernels.pack_panels(wb), 37),
            "y8": ops.int8_weight_linear(x, q8, s8),
            "yo32": ops.float_weight_linear(xo, wo),
            "yobf16": ops.float_weight_linear(xo, wob),
            "yopanels": ops.panel_weight_linear(xo, kernels.pack_panels(wo), 45),
            "yobf16panels": ops.panel_weight_linear(xo, kernels.pack_panels(wob), 45),
            "yo8": ops.int8_weight_linear(xo, qo, so),
            "y4a8": ops.int4_a8_weight_linear(x, kernels.pack_int4_panels(q4, sm, 32), 37, 32),
            "y8a8": ops.int8_a8_weight_linear(x, kernels.pack_int8_panels(q8, s8), 37),
            "y4p": ops.int4_panel_weight_linear(xh, kernels.pack_int4_panels(q4, sm, 32), 37, 32),
            "y8p": ops.int8_panel_weight_linear(xh, kernels.pack_int8_panels(q8, s8), 37)}, sys.argv[2])
"""

LEVELS = ("generic", "avx2", "avx2-vnni", "avx512", "avx512-vnni")  # worst to best (kernels/quant_linear.h)


def cpu_levels() -> list[str]:
    """The kernel levels this CPU can run, worst to best, from the kernel's own flags (/proc/cpuinfo):
    an independent account of what kernels/quant_linear.cpp detects."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    avx2 = {"avx2", "fma", "f16c"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl"} <= flags
    runs = {"generic": True, "avx2": avx2, "avx2-vnni": avx2 and "avx_vnni" in flags, "avx512": avx512,
            "avx512-vnni": avx512 and "avx512_vnni" in flags}
    return [level for level in LEVELS if runs[level]]


@pytest.mark.parametrize("level", LEVELS)
def test_each_level_says_so_and_computes_the_same_bits(level, tmp_path):
    """TORCHCHAT_KERNELS=<level> in a child process: the level it names runs, and every kernel gives
    this process's bits (every level follows one order of float operations)."""
    if level not in cpu_levels():
        pytest.skip(f"this CPU cannot run the {level} kernels")
    out = tmp_path / f"{level}.pt"
    p = subprocess.run([sys.executable, "-c", LEVEL_SCRIPT, str(ROOT), str(out)], capture_output=True, text=True,
                       env=dict(os.environ, TORCHCHAT_KERNELS=level), timeout=600)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [level]
    assert ("torchchat kernels: portable fallback (TORCHCHAT_KERNELS=generic)" in p.stderr) == (level == "generic")
    r = torch.load(out)
    x, w, xo, wo, xh = r["x"], r["w"], r["xo"], r["wo"], r["xh"]
    # right, within fp32 rounding of float64 references
    assert ((r["y32"].double() - x.double() @ w.double().T).abs() <= tolerance(x, 6.0, 96)).all()
    assert ((r["ybf16"].double() - x.double() @ w.bfloat16().double().T).abs() <= tolerance(x, 6.0, 96)).all()
    assert ((r["ypanels"].double() - x.double() @ w.bfloat16().double().T).abs() <= tolerance(x, 6.0, 96)).all()
    assert ((r["yo32"].double() - xo.double() @ wo.double().T).abs() <= tolerance(xo, 6.0, 83)).all()
    assert ((r["y8"].double() - ref_int8(x, r["q8"], r["s8"])).abs() <= tolerance(x, 4.0, 96)).all()
    assert ((r["y4a8"].double() - ref_int4_a8(x, r["q4"], r["sm"], 32)).abs() <= tolerance(x, 4.0, 96)).all()
    assert ((r["y8a8"].double() - ref_int8_a8(x, r["q8"], r["s8"])).abs() <= tolerance(x, 4.0, 96)).all()
    w4 = kernels.dequantize_int4(kernels.pack_int4(r["q4"]), r["sm"], 32)
    w8 = kernels.dequantize_int8(r["q8"], r["s8"])
    assert ((r["y4p"].double() - xh.double() @ w4.double().T).abs() <= exact_error_bound(xh, w4)).all()
    assert ((r["y8p"].double() - xh.double() @ w8.double().T).abs() <= exact_error_bound(xh, w8)).all()
    # and the same bits as this process (the best level the CPU has, unless TORCHCHAT_KERNELS says otherwise)
    ops = torch.ops.torchchat
    qo, so = kernels.quantize_int8(wo)
    here = {"y32": ops.float_weight_linear(x, w),
            "ybf16": ops.float_weight_linear(x, w.bfloat16()),
            "ypanels": ops.panel_weight_linear(x, kernels.pack_panels(w.bfloat16()), 37),
            "y8": ops.int8_weight_linear(x, r["q8"], r["s8"]),
            "yo32": ops.float_weight_linear(xo, wo),
            "yobf16": ops.float_weight_linear(xo, wo.bfloat16()),
            "yopanels": ops.panel_weight_linear(xo, kernels.pack_panels(wo), 45),
            "yobf16panels": ops.panel_weight_linear(xo, kernels.pack_panels(wo.bfloat16()), 45),
            "yo8": ops.int8_weight_linear(xo, qo, so),
            "y4a8": ops.int4_a8_weight_linear(x, kernels.pack_int4_panels(r["q4"], r["sm"], 32), 37, 32),
            "y8a8": ops.int8_a8_weight_linear(x, kernels.pack_int8_panels(r["q8"], r["s8"]), 37),
            "y4p": ops.int4_panel_weight_linear(xh, kernels.pack_int4_panels(r["q4"], r["sm"], 32), 37, 32),
            "y8p": ops.int8_panel_weight_linear(xh, kernels.pack_int8_panels(r["q8"], r["s8"]), 37)}
    for name, y in here.items():
        assert torch.equal(y, r[name]), f"{name}: {level} and {kernels.isa()} differ"


def test_isa_is_the_best_this_cpu_has():
    if os.environ.get("TORCHCHAT_KERNELS"):
        pytest.skip("TORCHCHAT_KERNELS is set")
    assert kernels.isa() == cpu_levels()[-1]


# ---------------------------------------------------------------------------------------------
# Inside AOT Inductor models and ExecuTorch programs

# (spec, format): one artifact per scheme and backend keeps the compile time down; the AOTI
# formats (so, pt2) are both covered; ExecuTorch calls the out variants (kernels/executorch_ops.cpp).
INT8, INT8G32, INT4 = ('{"linear:int8": {"groupsize": 0}}', '{"linear:int8": {"groupsize": 32}}',
                      '{"linear:int4": {"groupsize": 32}}')
INT4A8 = '{"linear:int4": {"groupsize": 32, "activations": "int8", "output": "int4"}}'
INT8A8, INT8G32A8 = ('{"linear:int8": {"groupsize": 0, "activations": "int8"}}',
                     '{"linear:int8": {"groupsize": 32, "activations": "int8"}}')
SCHEMES = {"int8-so": (INT8, "so"), "int4-pt2": (INT4, "pt2"), "int8g32-so": (INT8G32, "so"),
           "int4a8-so": (INT4A8, "so"), "int4a8-pte": (INT4A8, "pte"), "int8-pte": (INT8, "pte"),
           "int8g32-pte": (INT8G32, "pte"), "int4-pte": (INT4, "pte"), "int8a8-so": (INT8A8, "so"),
           "int8g32a8-pte": (INT8G32A8, "pte")}


class QuantizedTiny:
    """A tiny llama2-style model quantized with `spec`: eager, and exported as `fmt` (so, pt2 or pte)."""

    def __init__(self, folder: Path, spec: str, fmt: str):
        from torchchat.export import export_model
        from torchchat.load import load_model

        hf = tiny_hf_model("llama2")
        self.checkpoint = write_llama2c_pt(hf, folder / "model.pt")
        self.tokenizer = write_sentencepiece(folder / "sp")
        self.runner_tokenizer = write_tokenizer_bin(self.tokenizer, folder / "tokenizer.bin")
        args = model_args(self.checkpoint, self.tokenizer, quantize=spec)
        loaded = load_model(args, "et" if fmt == "pte" else "aoti")
        self.spec, self.fmt, self.path = spec, fmt, folder / f"model.{fmt}"
        export_model(loaded.model, loaded.info, "fp32", CONTEXT, *(self.path if fmt == f else None
                                                                   for f in ("so", "pt2", "pte")))
        self.eager = load_model(args)
        self.references: dict[str, list[int]] = {}

    def decoder(self):
        """The artifact run from Python: AOT Inductor's runtime, or ExecuTorch's."""
        from torchchat.backends.executorch import PTEDecoder
        from torchchat.backends.aoti import AOTIDecoder

        return PTEDecoder(self.path) if self.fmt == "pte" else AOTIDecoder(self.path)

    def run(self, *flags, trace: Path, env: dict | None = None):
        """The artifact's native runner (aoti_run or et_run), skipped when it is not built."""
        return run_artifact(self.path, self.runner_tokenizer, *flags, trace=trace, env=env)

    def reference(self, prompt: str) -> list[int]:
        """The greedy tokens the runner must give after `prompt`: eager's; with int8 activations the
        same artifact's run from Python (test_exported_from_python_equals_eager says why)."""
        from torchchat.backends.eager import EagerDecoder

        if prompt not in self.references:
            tok, info = self.eager.tokenizer, self.eager.info
            decoder = self.decoder() if int8_activations(self.spec) else EagerDecoder(self.eager.model, CONTEXT)
            self.references[prompt] = greedy(decoder, tok.encode(prompt, bos=info.add_bos), info.stop_ids)
        return self.references[prompt]


def run_artifact(path: Path, tokenizer: Path, *flags, trace: Path, env: dict | None = None):
    """aoti_run for a .so or .pt2, et_run for a .pte (with `env` over this process's environment),
    skipped when it is not built."""
    if path.suffix == ".pte":
        return et_run(path, tokenizer, *flags, trace=trace, env=env)
    if not AOTI_RUN.is_file():
        pytest.skip("build it: scripts/build_native.sh aoti")
    return aoti_run(path, tokenizer, *flags, trace=trace, env=env)


@pytest.fixture(scope="module", params=list(SCHEMES))
def quantized(request, tmp_path_factory):
    return QuantizedTiny(tmp_path_factory.mktemp(f"kernels_{request.param}"), *SCHEMES[request.param])


def int8_activations(spec: str) -> bool:
    return any(options.get("activations") == "int8" for options in json.loads(spec).values())


@pytest.mark.export
def test_exported_from_python_equals_eager(quantized):
    from torchchat.backends.eager import EagerDecoder

    tok, info = quantized.eager.tokenizer, quantized.eager.info
    decoder = quantized.decoder()
    assert decoder.info.quantize == info.quantize
    for prompt in PROMPTS:
        ids = tok.encode(prompt, bos=info.add_bos)
        want = greedy(EagerDecoder(quantized.eager.model, CONTEXT), ids, info.stop_ids)
        if not int8_activations(quantized.spec):
            assert greedy(decoder, ids, info.stop_ids) == want, prompt
            continue
        # Quantizing activations is a step function: inductor's fused norms round a value an ulp
        # away from eager's now and then, a block's int8 code moves by one and a later token can
        # differ on this deliberately hot model. So: the same logits along eager's sequence, within
        # a thousandth of their spread (one flipped code), and the same top token everywhere but rarely.
        seq = torch.tensor([ids + want])
        pos = torch.arange(seq.shape[1])
        with torch.no_grad():
            got, ref = decoder(seq, pos)[0], EagerDecoder(quantized.eager.model, CONTEXT)(seq, pos)[0]
        assert (got - ref).abs().mean() <= 1e-2 * ref.std(), prompt
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95, prompt


@pytest.mark.export
def test_program_rotates_q_and_k_as_one(quantized):
    """Quantizing fuses each layer's q, k and v projections (quantize.fuse_projections), and the
    model then rotates q's and k's heads as one tensor: 2 + 2 selects per layer in an ExecuTorch
    program (each a copying kernel call; SmolLM2's decode step went from 859 to 647
    instructions with the mean below). No portable mean: RMSNorm's is in XNNPACK's delegate."""
    if quantized.fmt != "pte":
        pytest.skip("an ExecuTorch program's instructions")
    kernels = pte_kernel_calls(quantized.path)
    assert kernels["aten::select_copy"] == 2 + 2 * quantized.eager.model.args.n_layers
    assert kernels["aten::mean"] == 0


@pytest.mark.export
def test_runner_equals_eager(quantized, tmp_path):
    tok, info = quantized.eager.tokenizer, quantized.eager.info
    for i, prompt in enumerate(PROMPTS[:2]):
        ids = tok.encode(prompt, bos=info.add_bos)
        want = quantized.reference(prompt)
        trace = tmp_path / f"{i}.jsonl"
        p = quantized.run("-t", "0", "-n", str(len(ids) + len(want)), "-i", prompt, trace=trace)
        assert p.returncode == 0, p.stderr
        assert f"quantize {next(iter(info.quantize))}" in p.stderr
        assert fed_tokens(trace)[:len(ids) + len(want) - 1] == ids + want[:-1], prompt


# ---------------------------------------------------------------------------------------------
# Each kernel level forced, end to end: the same greedy tokens in eager, aoti_run and et_run
#
# One prompt: a runner's start (~0.3 s) is most of a run. With 5 levels, the 12 artifacts' 60 runs
# and 5 eager processes of 7 models each take ~35 s on 2 cores shared with other work.

LEVEL_PROMPT = PROMPTS[0]


def check_runner_at_each_level(path: Path, tokenizer: Path, ids: list[int], want: list[int], tmp_path: Path) -> None:
    """With TORCHCHAT_KERNELS=<level> for each level this CPU has, the runner of `path` names the
    level on its description line and continues LEVEL_PROMPT (`ids`) greedily with `want`."""
    wrong = []
    for level in cpu_levels():
        trace = tmp_path / f"{level}.jsonl"
        p = run_artifact(path, tokenizer, "-t", "0", "-n", len(ids) + len(want), "-i", LEVEL_PROMPT, trace=trace,
                         env={"TORCHCHAT_KERNELS": level})
        assert p.returncode == 0, f"{level}: {p.stderr}"
        assert f", kernels {level}\n" in p.stderr, p.stderr
        if fed_tokens(trace)[:len(ids) + len(want) - 1] != ids + want[:-1]:
            wrong.append(level)
    assert not wrong, f"other tokens on the {', '.join(wrong)} kernels"


@pytest.mark.export
def test_runner_equals_eager_with_each_level_forced(quantized, tmp_path):
    tok, info = quantized.eager.tokenizer, quantized.eager.info
    ids = tok.encode(LEVEL_PROMPT, bos=info.add_bos)
    check_runner_at_each_level(quantized.path, quantized.runner_tokenizer, ids, quantized.reference(LEVEL_PROMPT),
                               tmp_path)


@pytest.fixture(scope="module")
def fp32_tiny(tmp_path_factory) -> Exported:
    """The fp32 tiny model of test_aoti, test_et and test_target_cpu (exported once per test run)."""
    return Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ("so", "pte"))


@pytest.mark.export
@pytest.mark.parametrize("fmt", ["so", "pte"])
def test_fp32_runner_equals_eager_with_each_level_forced(fp32_tiny, fmt, tmp_path):
    """fp32 programs call our float linears (AOT Inductor) and our attention (both runners)."""
    tok, info = fp32_tiny.eager.tokenizer, fp32_tiny.eager.info
    ids = tok.encode(LEVEL_PROMPT, bos=info.add_bos)
    want = greedy(fp32_tiny.eager_decoder(), ids, info.stop_ids)
    check_runner_at_each_level(fp32_tiny.paths[fmt], fp32_tiny.runner_tokenizer, ids, want, tmp_path)


# fp32 and the schemes of SCHEMES, each once: what eager runs at each level.
EAGER_SPECS = {"fp32": None, **{name.rsplit("-", 1)[0]: spec for name, (spec, _) in SCHEMES.items()}}


def eager_greedy(checkpoint: Path, tokenizer: Path, specs: dict[str, str | None],
                 on_our_kernels: bool = True) -> dict[str, list[int]]:
    """Per scheme, eager's greedy tokens after LEVEL_PROMPT: the model loaded and quantized here, on
    our kernels as generate and chat run it (EagerDecoder(kernels=True)), or else on ATen's."""
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    out = {}
    for name, spec in specs.items():
        loaded = load_model(model_args(checkpoint, tokenizer, quantize=spec))
        decoder = EagerDecoder(loaded.model, CONTEXT, kernels=on_our_kernels)
        info = loaded.info
        out[name] = greedy(decoder, loaded.tokenizer.encode(LEVEL_PROMPT, bos=info.add_bos), info.stop_ids)
    return out


EAGER_SCRIPT = """
import json, sys
sys.path[:0] = sys.argv[1:3]  # tests/python, the repository
from test_kernels import eager_greedy
from torchchat import kernels
tokens = eager_greedy(sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
print(json.dumps({"isa": kernels.isa(), "tokens": tokens}))
"""


@pytest.fixture(scope="module")
def eager_references(tmp_path_factory) -> tuple[Exported, dict[str, list[int]]]:
    """The tiny model's files, and the tokens eager must give: ATen's eager (the runners' reference);
    with int8 activations, eager on our kernels in this process (a flipped activation code can move
    a token between the two)."""
    files = Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ())
    a8 = {name: spec for name, spec in EAGER_SPECS.items() if spec and int8_activations(spec)}
    plain = {name: spec for name, spec in EAGER_SPECS.items() if name not in a8}
    return files, {**eager_greedy(files.checkpoint, files.tokenizer, plain, on_our_kernels=False),
                   **eager_greedy(files.checkpoint, files.tokenizer, a8)}


@pytest.mark.parametrize("level", LEVELS)
def test_eager_equals_the_reference_with_each_level_forced(level, eager_references):
    """One child process per level runs every scheme (the level is chosen once per process)."""
    if level not in cpu_levels():
        pytest.skip(f"this CPU cannot run the {level} kernels")
    files, want = eager_references
    p = subprocess.run([sys.executable, "-c", EAGER_SCRIPT, str(Path(__file__).resolve().parent), str(ROOT),
                        str(files.checkpoint), str(files.tokenizer), json.dumps(EAGER_SPECS)],
                       capture_output=True, text=True, env=dict(os.environ, TORCHCHAT_KERNELS=level), timeout=600)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["isa"] == level
    wrong = [name for name in EAGER_SPECS if got["tokens"][name] != want[name]]
    assert not wrong, f"other tokens on the {level} kernels for {', '.join(wrong)}"
