"""The program: one `torch.export` of torchchat.model.Transformer that every artifact compiles.

The KV cache is inside (its buffers are mutated in place by the graph) and the sequence length
is dynamic, so one program serves both prefill (T prompt tokens) and decode (T = 1). AOT
Inductor gets (tokens, input_pos, kv_len, n_logits): how many cache positions attention reads
(the filled ones) and how many positions get logits (the runner wants the last); ExecuTorch the
same with kv_len None (attention over the whole cache). Over an fp32 or bf16 cache, attention
is our kernel in both (kernel_swaps.swap_attention), which reads up to each token's position whatever kv_len
is; fp16 caches keep ATen's SDPA, for which kv_len matters. For AOT Inductor the fp32/bf16
linears run our kernels too (kernel_swaps.swap_float_linears).
"""
from __future__ import annotations

import contextlib

import torch

from torchchat.kernel_swaps import swap_attention, swap_float_linears, swapped
from torchchat.model import Transformer, length_tensor


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
    with torch.no_grad(), swapped(swap_float_linears, model) if aoti else contextlib.nullcontext(), \
            swapped(swap_attention, model):
        return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)
