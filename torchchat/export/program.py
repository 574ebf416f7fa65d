"""The program: one `torch.export` of torchchat.model.Transformer that every artifact compiles.

The KV cache is inside (its buffers are mutated in place by the graph) and the sequence length
is dynamic, so one program serves both prefill (T prompt tokens) and decode (T = 1). AOT
Inductor gets (tokens, input_pos, kv_len, n_logits): how many cache positions attention reads
(the filled ones) and how many positions get logits (the runner wants the last); ExecuTorch the
same with kv_len None (attention over the whole cache). Over an fp32 or bf16 cache, attention
is our kernel in both (cache_attention), which reads up to each token's position whatever kv_len
is; fp16 caches keep ATen's SDPA, for which kv_len matters. For AOT Inductor the fp32/bf16
linears run our kernels too (float_kernels).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from torchchat import kernels
from torchchat.model import Attention, Transformer, length_tensor, unfused_projections


def export_program(model: Transformer, max_seq_len: int, aoti: bool = False) -> torch.export.ExportedProgram:
    """torch.export the model with a static KV cache of `max_seq_len` and T in [1, max_seq_len].

    aoti: the 4-input form (tokens, input_pos, kv_len, n_logits; Transformer.forward), whose
    attention reads only the filled cache positions and whose output layer runs only where
    logits are wanted. Otherwise the form ExecuTorch lowers: (tokens, input_pos, None, n_logits),
    attention over the whole cache (as ExecuTorch programs always had) and logits where wanted
    (a prompt's last position: its output layer need not run for every token).
    """
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    if aoti:
        # Three distinct example sizes >= 2 (equal ones would be unified into one symbol): 3 tokens at
        # positions 2..4, so kv_len 5 >= T as in every real call, and logits for the last 2. The
        # graph asserts no relation between them: kv_len only has to cover the last position, and
        # n_logits <= T is the caller's promise (as T <= max_seq_len - start is).
        kv_len = torch.export.Dim("kv_len", min=1, max=max_seq_len)
        n_logits = torch.export.Dim("n_logits", min=1, max=max_seq_len)
        example = (torch.zeros(1, 3, dtype=torch.long), torch.arange(2, 5, dtype=torch.long), length_tensor(5),
                   length_tensor(2))
        shapes = ({1: seq}, {0: seq}, {0: kv_len}, {0: n_logits})
        # Attention slices the cache to kv_len positions, a view that is contiguous only when it is
        # the whole cache; the exporter decides that once, as a guard kv_len != cache size, and then
        # refuses its own guard if the range allows the equality. One spare cache position (never
        # written, always masked) puts every kv_len below the cache size.
        spare = 1
    else:
        # 3 tokens, logits for the last 2: any sizes >= 2 keep the dimensions symbolic (0/1 would
        # specialise them), distinct ones keep them apart. kv_len stays None (whole-cache attention).
        n_logits = torch.export.Dim("n_logits", min=1, max=max_seq_len)
        example = (torch.zeros(1, 3, dtype=torch.long), torch.arange(3, dtype=torch.long), None, length_tensor(2))
        shapes, spare = ({1: seq}, {0: seq}, None, {0: n_logits}), 0
    model.setup_caches(max_seq_len, spare=spare)
    with torch.no_grad(), float_kernels(model) if aoti else contextlib.nullcontext(), cache_attention(model):
        return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)


class TiedOutput(nn.Module):
    """The output layer through our row-major float kernel (kernels/), reading the embedding table
    it is tied to: a packed copy would add the table's size to the file (113 MB of SmolLM2's
    538 MB in fp32)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.float_weight_linear(x, self.weight)


class PanelLinear(nn.Module):
    """A float linear through our panel kernel (kernels/), its weight packed in column panels."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("panels", kernels.pack_panels(weight))
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.panel_weight_linear(x, self.panels, self.out_features)


# Whether AOTI exports run fp32/bf16 linears on our kernels (float_kernels) or on inductor's GEMM templates.
FLOAT_KERNELS = True


@contextlib.contextmanager
def float_kernels(model: Transformer) -> Iterator[None]:
    """For AOT Inductor: while exporting, the fp32/bf16 linears run our kernels (kernels/).

    Against inductor's C++ GEMM templates, side by side (SmolLM2, 2 threads):
    fp32 prefill 2.4x, decode the same or better; bf16 prefill 2.7x, decode 1.7-2x. Each layer's
    wq/wk/wv and w1/w3 become one matrix (one call instead of three and two; every output is
    computed as before). The output layer tied to the embedding table reads the table
    (TiedOutput); the other linears read weights packed in column panels (PanelLinear)."""
    def is_float(m) -> bool:
        return type(m) is nn.Linear and m.bias is None and m.weight.dtype in (torch.float32, torch.bfloat16)

    swaps = []  # (parent, name, original, replacement), undone in reverse order

    def swap(parent: nn.Module, name: str, replacement) -> None:
        swaps.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    if FLOAT_KERNELS:
        kernels.load()
        tied = model.output if (isinstance(model.tok_embeddings, nn.Embedding)
                                and model.output.weight is model.tok_embeddings.weight) else None
        for m, name, parts in unfused_projections(model):
            if all(is_float(getattr(m, part)) for part in parts):
                swap(m, name, PanelLinear(torch.cat([getattr(m, part).weight.detach() for part in parts])))
                for part in parts:
                    swap(m, part, None)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if is_float(child):
                    swap(parent, name, TiedOutput(child.weight) if child is tied else PanelLinear(child.weight))
    try:
        yield
    finally:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)


# Whether exports run attention on our kernel (cache_attention) or on ATen's SDPA.
ATTENTION_KERNEL = True


@contextlib.contextmanager
def cache_attention(model: Transformer) -> Iterator[None]:
    """While exporting, attention runs our kernel (kernels/attention.h) where the cache is fp32 or bf16.

    Against ATen's CPU SDPA with the model's mask, per layer of SmolLM2 (9 query heads on 3 KV heads,
    2 threads): decode 3.4-4.7x faster at 128-1900 positions, a prompt's attention
    2.7-3.1x. ATen reads each KV head once per query head and builds and reads a mask; the kernel
    reads a head's rows once for its query heads and only up to each token's position. A bf16
    cache is read as bf16 and computed in fp32 (SDPA took 56 us a layer of bf16 decode, a quarter
    of the step). fp16 caches keep SDPA."""
    layers = [m for m in model.modules() if isinstance(m, Attention)
              and m.kv_cache is not None and m.kv_cache.k.dtype in (torch.float32, torch.bfloat16)]
    if ATTENTION_KERNEL and layers:
        kernels.load()
        for m in layers:
            m.cache_attention = torch.ops.torchchat.cache_attention
    try:
        yield
    finally:
        for m in layers:
            m.cache_attention = None
