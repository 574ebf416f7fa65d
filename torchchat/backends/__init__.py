"""Decoders: what generate, chat and eval run, behind one interface.

- eager.py: the PyTorch model (optionally torch.compile'd for decode);
- aoti.py: an AOT Inductor artifact (.so or .pt2) from `export`;
- executorch.py: an ExecuTorch program (.pte) from `export`, in ExecuTorch's Python runtime.
The native runners (runner/backends/) run the same artifacts; these let Python check them.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Decoder(Protocol):
    """A model with a static KV cache of `max_seq_len` positions:
    (tokens [1, T], input_pos [T]) -> logits [1, T, vocab] (fp32).

    last_only: the caller reads only the last position's logits, so the decoder may skip the
    others (the output layer is ~20 % of a small model's prefill); it returns [1, T, vocab]
    or [1, 1, vocab], and `[0, -1]` is the last position's either way."""

    max_seq_len: int
    vocab_size: int

    def __call__(self, tokens: Tensor, input_pos: Tensor, last_only: bool = False) -> Tensor: ...
