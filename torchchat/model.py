"""The llama family in plain PyTorch: one definition for eager, AOT Inductor and ExecuTorch.

Covers llama2, llama3/3.1/3.2 (with rope scaling), SmolLM2 and the stories models.
Everything that `torch.export` sees is static: the KV cache is a pair of buffers of
`max_seq_len` positions per layer, positions come in as a tensor, and there is no
data-dependent Python control flow.

Weight names follow Meta's checkpoints (`layers.0.attention.wq.weight`, ...), and q/k
use Meta's rotary layout (interleaved pairs); loaders convert other layouts to this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # None: same as n_heads (no grouped-query attention)
    vocab_size: int = 32000
    hidden_dim: Optional[int] = None  # feed-forward width; None: llama's rule from dim
    multiple_of: int = 256  # used only by llama's rule for hidden_dim
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # llama3.1 style: factor, low/high_freq_factor, original_max_position_embeddings
    max_seq_len: int = 2048  # the model's context length
    tie_embeddings: bool = False  # output projection shares the embedding weight

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        # A damaged or foreign config would otherwise divide by zero here, or load and produce
        # nothing but NaN: refuse it with the field's name.
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.hidden_dim is None:
            hidden = int(2 * (4 * self.dim) / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"inconsistent attention shape: dim={self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class KVCache(nn.Module):
    """Static per-layer cache; `update` writes the new positions and returns the whole cache."""

    def __init__(self, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (1, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # index_copy_ on a buffer is a mutation torch.export and ExecuTorch both understand.
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 like the reference implementations, then cast back. The mean is taken
        # over a [rows, 1, 1, dim] view, the form XNNPACK's partitioner takes (a 4-D mean over the
        # last two dims, reshapes with one inferred dim): in an ExecuTorch program the residual
        # add, the norm and its scale are then one delegate call, not two around a portable mean.
        # In eager PyTorch the same bits as mean(-1).
        b, _, d = x.shape
        x4 = x.float().reshape(-1, 1, 1, d)
        xf = (x4 * torch.rsqrt(x4.pow(2).mean((2, 3), keepdim=True) + self.eps)).reshape(b, -1, d)
        return xf.type_as(x) * self.weight


def rope_frequencies(args: ModelArgs) -> Tensor:
    """Inverse frequencies of rotary embedding, with llama3.1's long-context scaling if configured."""
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = args.rope_scaling
    if s:
        factor = s["factor"]
        low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old_ctx = s.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    return inv_freq.float()


def rope_table(args: ModelArgs, max_seq_len: int) -> Tensor:
    """cos/sin for every position: shape [max_seq_len, head_dim // 2, 2]."""
    inv_freq = rope_frequencies(args)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def rope_cos_sin(rope: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin [1, T, 1, D/2] (broadcast over batch and heads) of rope [T, D/2, 2], rows of
    rope_table. Taken once per forward, not in each layer: in an ExecuTorch program every
    selection is a copying kernel call."""
    rope = rope.unsqueeze(0).unsqueeze(2)
    return rope[..., 0], rope[..., 1]


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... of x [B, T, H, D] by rope = rope_cos_sin(...)."""
    xp = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xp[..., 0], xp[..., 1]  # once each: the exporter would copy each use again
    cos, sin = rope
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        # wq, wk and wv as one matrix once fused (unfused_projections: quantize.py, export/program.py), one kernel call.
        self.wqkv: Optional[nn.Module] = None
        self.kv_cache: Optional[KVCache] = None
        # An attention kernel in place of SDPA, (q [1, T, H, D], k_cache, v_cache, input_pos) ->
        # [1, T, H, D], token t attending cache positions [0, input_pos[t]]: export/program.py's cache_attention.
        self.cache_attention = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor, input_pos: Tensor,
                filled: Optional[int] = None) -> Tensor:
        """`rope`: rope_cos_sin of the positions' rows. `filled`: attend over cache positions
        [0, filled) only (None: the whole cache)."""
        bsz, seqlen, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
            q = apply_rope(q.view(bsz, seqlen, self.n_heads, self.head_dim), rope)
            k = apply_rope(k.view(bsz, seqlen, self.n_kv_heads, self.head_dim), rope)
        else:
            # q's and k's heads rotated as one tensor: in an ExecuTorch program each rotation is a
            # delegate call and two copying selects.
            qk_heads = self.n_heads + self.n_kv_heads
            qk, v = self.wqkv(x).split([qk_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1)
            qk = apply_rope(qk.view(bsz, seqlen, qk_heads, self.head_dim), rope)
            q, k = qk.split([self.n_heads, self.n_kv_heads], dim=2)
        v = v.view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        k, v = self.kv_cache.update(input_pos, k.transpose(1, 2), v.transpose(1, 2))
        if self.cache_attention is not None:
            out = self.cache_attention(q, k, v, input_pos)
        else:
            if filled is not None:
                k, v = k[:, :, :filled], v[:, :, :filled]
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads
            ).transpose(1, 2)
        return self.wo(out.reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up
        self.w13: Optional[nn.Module] = None  # w1 and w3 as one matrix, when fused (see Attention)

    def forward(self, x: Tensor) -> Tensor:
        if self.w13 is None:
            gate, up = self.w1(x), self.w3(x)
        else:
            gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def unfused_projections(model: nn.Module) -> list[tuple[nn.Module, str, tuple[str, ...]]]:
    """The projections that may run as one matrix, not yet fused: (module, fused attribute, parts)
    for each layer's wq/wk/wv (wqkv) and w1/w3 (w13). The fused weight is the parts' rows in
    order; forward runs either form."""
    groups = []
    for m in model.modules():
        if isinstance(m, Attention) and m.wqkv is None:
            groups.append((m, "wqkv", ("wq", "wk", "wv")))
        elif isinstance(m, FeedForward) and m.w13 is None:
            groups.append((m, "w13", ("w1", "w3")))
    return groups


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor, input_pos: Tensor,
                filled: Optional[int] = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, input_pos, filled)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        # nn.Embedding's own init on the meta device (load.py) imports TorchDynamo: 1.3 s per process.
        embedding = torch.empty(args.vocab_size, args.dim)
        if not embedding.is_meta:
            nn.init.normal_(embedding)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, _weight=embedding)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.cache_len = 0

    def setup_caches(self, max_seq_len: int, dtype: Optional[torch.dtype] = None, spare: int = 0) -> None:
        """Allocate KV caches and rotary/mask tables for `max_seq_len` positions (<= the model's).

        spare: that many more cache positions, which no call writes and the mask always hides
        (torchchat/export/program.py needs one, so that kv_len <= max_seq_len stays below the cache size)."""
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context of {self.args.max_seq_len}")
        dtype = dtype or self.norm.weight.dtype  # never quantized (the embedding may be)
        cache_len = max_seq_len + spare
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(self.args.n_kv_heads, cache_len, self.args.head_dim, dtype)
        self.register_buffer("rope", rope_table(self.args, max_seq_len), persistent=False)
        causal = torch.tril(torch.ones(max_seq_len, cache_len, dtype=torch.bool))
        self.register_buffer("causal_mask", causal, persistent=False)
        self.cache_len = cache_len

    def forward(self, tokens: Tensor, input_pos: Tensor, kv_len: Optional[Tensor] = None,
                n_logits: Optional[Tensor] = None) -> Tensor:
        """tokens [1, T] at positions input_pos [T] -> logits [1, T, vocab] (fp32).

        Two optional inputs say how much work a call needs; their *lengths* carry it (their
        values are never read), so torch.export keeps them as symbolic sizes like T, where a
        number read from a tensor would be data-dependent:
        - kv_len [L]: attention reads cache positions [0, L) only, L = last position + 1
          (every position after the last one written is masked anyway). None: all max_seq_len.
          (An attention kernel, Attention.cache_attention, reads up to each token's position
          whatever L is.)
        - n_logits [K]: logits of the last K positions only, [1, K, vocab] (generation needs 1,
          perplexity all T). None: every position.
        Without them the call is the full-cache, all-logits form (ExecuTorch programs take
        n_logits but not kv_len).
        """
        x = self.tok_embeddings(tokens)
        rope = rope_cos_sin(self.rope[input_pos])
        if kv_len is None:
            filled = None
            mask = self.causal_mask[input_pos].view(1, 1, tokens.size(1), self.cache_len)
        else:
            # Computed from the positions rather than cut from causal_mask: the same values,
            # without a strided [T, L] view of the table for the exporter to reason about.
            filled = kv_len.size(0)
            cols = torch.arange(filled, device=input_pos.device)
            mask = (cols.view(1, filled) <= input_pos.view(-1, 1)).view(1, 1, tokens.size(1), filled)
        for layer in self.layers:
            x = layer(x, rope, mask, input_pos, filled)
        if n_logits is not None:
            # A gather, not a slice: a slice's length would be an unknown size to the exporter.
            last = torch.arange(n_logits.size(0), device=x.device) + (x.size(1) - n_logits.size(0))
            x = x.index_select(1, last)
        return self.output(self.norm(x)).float()


def length_tensor(n: int) -> Tensor:
    """A tensor whose length is `n`, for Transformer.forward's kv_len and n_logits (contents unused)."""
    return torch.empty(n, dtype=torch.long)


def n_logits_input(lengths: Tensor, n_tokens: int, last_only: bool) -> Tensor:
    """Transformer.forward's n_logits for a call, a view of `lengths` (a length_tensor of the
    context): logits of the last position only or of all `n_tokens`."""
    return lengths[:1 if last_only else n_tokens]


def size_inputs(lengths: Tensor, input_pos: Tensor, n_tokens: int, last_only: bool) -> tuple[Tensor, Tensor]:
    """Transformer.forward's (kv_len, n_logits) for a call, as views of `lengths`: attention over
    the positions up to the last one, and n_logits_input's logits."""
    filled = int(input_pos.max()) + 1 if input_pos.numel() else 0
    return lengths[:filled], n_logits_input(lengths, n_tokens, last_only)
