"""Our attention kernel (kernels/attention.h, torch.ops.torchchat.cache_attention) against the
definition computed in float64, and against ATen's SDPA with the model's mask; every level the CPU
has (generic, AVX2, AVX-512) giving the same bits; positions past a token's never read; bad input refused;
and the exports that use it (AOT Inductor and ExecuTorch graphs call it for fp32 and bf16 caches).
The models' own tests (test_aoti, test_et, test_kernels) check exported = eager token for token
with it in place."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchchat import kernels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def loaded():
    kernels.load()


def attention(q, k, v, pos):
    return torch.ops.torchchat.cache_attention(q, k, v, pos)


def reference(q, k, v, pos):
    """out[t, h] = softmax over p <= pos[t] of q[t, h] . k[h / G, p] / sqrt(D), times v; float64."""
    _, T, H, D = q.shape
    G = H // k.shape[1]
    out = torch.empty(1, T, H, D, dtype=torch.float64)
    for t in range(T):
        n = int(pos[t]) + 1
        for h in range(H):
            keys, values = k[0, h // G, :n].double(), v[0, h // G, :n].double()
            w = torch.softmax(keys @ q[0, t, h].double() / math.sqrt(D), dim=0)
            out[0, t, h] = w @ values
    return out


def random_case(T, H, Hkv, D, S, start, spare=0, seed=0):
    """q [1, T, H, D] for positions start.., caches [1, Hkv, S, D] as views of longer ones (spare
    positions more), so the head stride is not S * D."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, D, generator=g)
    k = (torch.randn(1, Hkv, S + spare, D, generator=g) * 2)[:, :, :S]
    v = torch.randn(1, Hkv, S + spare, D, generator=g)[:, :, :S]
    return q, k, v, torch.arange(start, start + T)


# (T, H, Hkv, D, S, start): decode and prompts, grouped-query (SmolLM2's 9 on 3, llama3's 32 on 8),
# one KV head, plain multi-head, head sizes that are and are not multiples of 16 (the vector
# code takes D = 16..128 in steps of 16, the portable code the rest), a prompt starting mid-cache
# (chunked prefill), and decode far enough in to split positions across threads.
SHAPES = [
    (1, 9, 3, 64, 256, 0), (1, 9, 3, 64, 256, 130), (1, 9, 3, 64, 2048, 1899), (128, 9, 3, 64, 256, 0),
    (7, 9, 3, 64, 256, 40), (1, 32, 8, 128, 300, 299), (5, 32, 8, 128, 64, 3), (3, 8, 1, 64, 600, 500),
    (17, 4, 4, 32, 64, 0), (2, 6, 2, 48, 100, 60), (33, 12, 3, 16, 100, 0), (4, 6, 3, 40, 50, 10),
    (1, 5, 5, 96, 200, 199), (9, 4, 2, 144, 20, 3),
]


@pytest.mark.parametrize("T,H,Hkv,D,S,start", SHAPES)
def test_matches_the_definition(T, H, Hkv, D, S, start):
    q, k, v, pos = random_case(T, H, Hkv, D, S, start, spare=5)
    got = attention(q, k, v, pos)
    assert got.shape == q.shape and got.dtype == torch.float32 and got.is_contiguous()
    # fp32 dot products of D terms and a softmax-weighted sum: a few ulps of the values' scale
    assert (got.double() - reference(q, k, v, pos)).abs().max() < 2e-5


@pytest.mark.parametrize("T,H,Hkv,D,S,start", SHAPES[:8])
def test_matches_aten_sdpa_with_the_models_mask(T, H, Hkv, D, S, start):
    q, k, v, pos = random_case(T, H, Hkv, D, S, start)
    mask = (torch.arange(S).view(1, S) <= pos.view(-1, 1)).view(1, 1, T, S)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=H != Hkv)
    assert torch.allclose(attention(q, k, v, pos), want.transpose(1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,H,Hkv,D,S,start", SHAPES[:4] + SHAPES[-4:])
def test_a_bf16_cache_matches_the_definition(T, H, Hkv, D, S, start):
    """A bf16 model's cache is read as bf16 and computed in fp32: with an fp32 q, the result is the
    definition over the cache's bf16 values to fp32 rounding; with a bf16 q, that of the bf16 q,
    rounded to bf16."""
    q, k, v, pos = random_case(T, H, Hkv, D, S, start, spare=5)
    k, v = k.bfloat16(), v.bfloat16()
    got = attention(q, k, v, pos)
    assert got.dtype == torch.float32
    assert (got.double() - reference(q, k.float(), v.float(), pos)).abs().max() < 2e-5
    qb = q.bfloat16()
    got = attention(qb, k, v, pos)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    want = reference(qb.float(), k.float(), v.float(), pos)
    assert torch.allclose(got.double(), want, rtol=2 ** -8, atol=1e-6)  # bf16's rounding: 2^-9


def test_positions_past_a_token_are_never_read():
    """The mask is implied by the positions: whatever lies after them (here NaN) changes nothing."""
    q, k, v, pos = random_case(6, 9, 3, 64, 256, 100)
    want = attention(q, k, v, pos)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 106:] = float("nan")
    v2[:, :, 106:] = float("nan")
    assert torch.equal(attention(q, k2, v2, pos), want)
    # and each token sees only up to its own position: the first token's row equals it alone
    k3, v3 = k.clone(), v.clone()
    k3[:, :, 101:] = float("nan")
    v3[:, :, 101:] = float("nan")
    assert torch.allclose(attention(q[:, :1].contiguous(), k3, v3, pos[:1]), want[:, :1], rtol=1e-6, atol=1e-6)


def test_a_token_alone_or_in_a_prompt_and_with_one_thread_or_two():
    q, k, v, pos = random_case(12, 9, 3, 64, 1024, 900)
    prompt = attention(q, k, v, pos)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for t in range(12):  # alone, decode splits the positions across threads (merged at the end)
                got = attention(q[:, t:t + 1].contiguous(), k, v, pos[t:t + 1])
                assert torch.allclose(got, prompt[:, t:t + 1], rtol=1e-5, atol=1e-6), (n, t)
    finally:
        torch.set_num_threads(threads)


def test_a_strided_q_as_the_model_passes_it():
    """The model rotates q's and k's heads as one tensor and passes q as a view of it (AOT
    Inductor keeps the view): a prompt's q strided by H + Hkv heads per token. Also a q whose
    heads are not contiguous."""
    q, k, v, pos = random_case(6, 9, 3, 64, 256, 100)
    want = attention(q, k, v, pos)
    qk = torch.cat([q, torch.randn(1, 6, 3, 64)], dim=2)
    assert torch.equal(attention(qk[:, :, :9], k, v, pos), want)
    assert torch.equal(attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, pos), want)


@pytest.mark.parametrize("call,pattern", [
    (lambda: attention(torch.randn(1, 2, 9, 64).double(), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64),
                       torch.arange(2)), "q must be an fp32"),
    (lambda: attention(torch.randn(2, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64), torch.arange(2)),
     "q must be an fp32 or bf16 \\[1, T, H, D\\]"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 32), torch.randn(1, 3, 8, 32), torch.arange(2)),
     "the caches must be fp32 or bf16 \\[1, Hkv, S, D\\]"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 9, 64), torch.arange(2)),
     "the caches must be"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 64, 8).transpose(2, 3),
                       torch.randn(1, 3, 64, 8).transpose(2, 3), torch.arange(2)), "the caches must be"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64).half(), torch.randn(1, 3, 8, 64).half(),
                       torch.arange(2)), "the caches must be"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64).bfloat16(),
                       torch.arange(2)), "the caches must be fp32 or bf16 \\[1, Hkv, S, D\\] tensors alike"),
    (lambda: attention(torch.randn(1, 2, 8, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64), torch.arange(2)),
     "8 query heads do not share 3 KV heads evenly"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64), torch.arange(3)),
     "input_pos must be int64 \\[T = 2\\]"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64),
                       torch.arange(2, dtype=torch.int32)), "input_pos must be int64"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64),
                       torch.tensor([7, 8])), "position 8 is outside the cache of 8"),
    (lambda: attention(torch.randn(1, 2, 9, 64), torch.randn(1, 3, 8, 64), torch.randn(1, 3, 8, 64),
                       torch.tensor([-1, 0])), "position -1 is outside the cache of 8"),
])
def test_bad_input_is_refused(call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        call()


LEVEL_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from torchchat import kernels
print(kernels.isa())
torch.set_num_threads(int(sys.argv[4]))
cases = torch.load(sys.argv[2])
torch.save([torch.ops.torchchat.cache_attention(*c) for c in cases], sys.argv[3])
"""


def level_cases():
    """The cases, and how many of them (the first) the generic code is checked on against the
    definition."""
    cases = [random_case(*shape, spare=3, seed=i) for i, shape in enumerate(SHAPES)]
    cases += [(q, k.bfloat16(), v.bfloat16(), pos) for q, k, v, pos in cases[:3] + cases[-2:]]  # bf16 caches
    checked = len(cases)
    cases += [(q.bfloat16(), k.bfloat16(), v.bfloat16(), pos) for q, k, v, pos in cases[:2]]  # a bf16 model's
    # scores far apart: most weights under the exp(-87) clamp, across blocks of 64 positions
    cases += [(q * 40, k, v, pos) for q, k, v, pos in [random_case(3, 9, 3, 64, 300, 150, seed=99)]]
    return cases, checked


# Each level's attention (avx2-vnni and avx512-vnni run the avx2 and avx512 code), forced in a
# child process (the choice is made once per process) with this process's threads (they set the
# position splits): the same bits as this process's, whichever level it runs.
@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_every_level_computes_the_same_bits(tmp_path, level):
    cases, checked = level_cases()
    torch.save(cases, tmp_path / "cases.pt")
    p = subprocess.run([sys.executable, "-c", LEVEL_SCRIPT, str(ROOT), str(tmp_path / "cases.pt"),
                        str(tmp_path / "out.pt"), str(torch.get_num_threads())], capture_output=True, text=True,
                       env=dict(os.environ, TORCHCHAT_KERNELS=level), timeout=600)
    if "this CPU lacks" in p.stderr:
        pytest.skip(f"this CPU cannot run {level}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [level]
    for i, (case, got) in enumerate(zip(cases, torch.load(tmp_path / "out.pt"))):
        if level == "generic" and i < checked:  # the safety net is also right on its own
            assert (got.double() - reference(*case)).abs().max() < 2e-5
        want = attention(*case)
        assert got.dtype == want.dtype and torch.equal(got, want), (i, (got.double() - want.double()).abs().max())


def test_exports_call_it_for_fp32_and_bf16_caches():
    from torchchat.export import export_program
    from torchchat.model import ModelArgs, Transformer

    def calls(dtype, aoti):
        torch.manual_seed(0)
        model = Transformer(ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32))
        model = model.to(dtype).eval()
        ep = export_program(model, 32, aoti=aoti)
        assert all(layer.attention.cache_attention is None for layer in model.layers)  # restored
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        return (sum("torchchat.cache_attention" in t for t in targets),
                sum("scaled_dot_product" in t for t in targets))

    assert calls(torch.float32, aoti=True) == (2, 0)
    assert calls(torch.float32, aoti=False) == (2, 0)  # ExecuTorch's form
    assert calls(torch.bfloat16, aoti=True) == (2, 0)
    assert calls(torch.bfloat16, aoti=False) == (2, 0)
    assert calls(torch.float16, aoti=True) == (0, 2)
