"""A Transformer's float linears and its attention moved onto our kernels (kernels/): for the
AOT Inductor export (torchchat/export/program.py, while exporting), and for eager generate, chat
and eval (torchchat/backends/eager.py, for good) where they beat ATen.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from torchchat import kernels
from torchchat.model import Attention, Transformer, unfused_projections


class TiedOutput(nn.Module):
    """The output layer through our row-major float kernel, reading the embedding table it is
    tied to: a packed copy would add the table's size to the file (113 MB of SmolLM2's 538 MB
    in fp32)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.float_weight_linear(x, self.weight)


class PanelLinear(nn.Module):
    """A float linear through our panel kernel, its weight packed in column panels."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("panels", kernels.pack_panels(weight))
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.panel_weight_linear(x, self.panels, self.out_features)


class DecodeOnKernel(nn.Module):
    """Eager's float linear, on the weight as it is (no copy): one token through our row-major
    kernel, a prompt through ATen's GEMM. Per linear of SmolLM2, one thread, on a Xeon with
    AVX-512 and AMX: one token reads the weights at 1.0-1.9x ATen's speed in fp32 and 2-3.5x in
    bf16; 128 tokens run at 0.9-1.3x our panel kernel's speed through ATen in fp32 and 3.5-11x in
    bf16 (oneDNN on AMX)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:
            return torch.ops.torchchat.float_weight_linear(x, self.weight)
        return nn.functional.linear(x, self.weight)


def is_float_linear(m: nn.Module) -> bool:
    """A plain fp32/bf16 linear: not one whose weight is a tensor subclass (torchao's quantized
    tensors say fp32 too)."""
    return (type(m) is nn.Linear and m.bias is None and type(m.weight) in (nn.Parameter, torch.Tensor)
            and m.weight.dtype in (torch.float32, torch.bfloat16))


def float_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every plain fp32/bf16 linear not swapped yet."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if is_float_linear(child)]


# A/B switches for benchmarks: ATen's (eager) or inductor's (AOTI) linears and ATen's SDPA instead.
FLOAT_KERNELS = True
ATTENTION_KERNEL = True


def swap_float_linears(model: Transformer) -> Callable[[], None]:
    """The fp32/bf16 linears onto our kernels (those not swapped yet); returns the undo.

    Against inductor's C++ GEMM templates in AOTI exports, side by side (SmolLM2, 2 threads):
    fp32 prefill 2.4x, decode the same or better; bf16 prefill 2.7x, decode 1.7-2x. Each layer's
    wq/wk/wv and w1/w3 become one matrix (one call instead of three and two; every output is
    computed as before). The output layer tied to the embedding table reads the table
    (TiedOutput); the other linears read weights packed in column panels (PanelLinear)."""
    swaps = []  # (parent, name, original), undone in reverse order

    def swap(parent: nn.Module, name: str, replacement) -> None:
        swaps.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    if FLOAT_KERNELS:
        kernels.load()
        tied = model.output if (isinstance(model.tok_embeddings, nn.Embedding) and is_float_linear(model.output)
                                and model.output.weight is model.tok_embeddings.weight) else None
        for m, name, parts in unfused_projections(model):
            if all(is_float_linear(getattr(m, part)) for part in parts):
                swap(m, name, PanelLinear(torch.cat([getattr(m, part).weight.detach() for part in parts])))
                for part in parts:
                    swap(m, part, None)
        for parent, name, child in float_linears(model):
            swap(parent, name, TiedOutput(child.weight) if child is tied else PanelLinear(child.weight))

    def undo() -> None:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)
    return undo


def swap_decode_linears(model: Transformer) -> None:
    """For eager, for good: the fp32/bf16 linears as DecodeOnKernel (those not swapped yet)."""
    if not FLOAT_KERNELS:
        return
    kernels.load()
    for parent, name, child in float_linears(model):
        setattr(parent, name, DecodeOnKernel(child.weight))


def swap_attention(model: Transformer) -> Callable[[], None]:
    """Attention onto our kernel (kernels/attention.h) where the KV cache is fp32 or bf16 (after
    setup_caches); returns the undo.

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

    def undo() -> None:
        for m in layers:
            m.cache_attention = None
    return undo


@contextlib.contextmanager
def swapped(swap: Callable[[Transformer], Callable[[], None]], model: Transformer) -> Iterator[None]:
    """swap_float_linears or swap_attention for the duration of a `with` block."""
    undo = swap(model)
    try:
        yield
    finally:
        undo()
