"""The eager backend: the PyTorch model behind the generate loop, optionally torch.compile'd for decode."""
from __future__ import annotations

import torch

from torchchat.kernel_swaps import swap_attention, swap_decode_linears
from torchchat.model import Transformer, length_tensor, size_inputs


class EagerDecoder:
    """A Transformer with a KV cache of `max_seq_len` positions, as a Decoder (torchchat/backends)."""

    def __init__(self, model: Transformer, max_seq_len: int, compile: bool = False, kernels: bool = False):
        """kernels: attention, and one token's fp32/bf16 linears, on our kernels where they beat ATen
        (torchchat/kernel_swaps.py); the model is changed in place. Not with compile, whose
        inductor templates take the weights as constants."""
        model.setup_caches(max_seq_len)
        if kernels and not compile:
            swap_decode_linears(model)
            swap_attention(model)
        self.model, self.max_seq_len, self.vocab_size = model, max_seq_len, model.args.vocab_size
        self.decode = compile_for_decode(model) if compile else None
        self.lengths = length_tensor(max_seq_len)  # sliced for kv_len and n_logits

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # Decode (one token) is the hot path and has one static shape: that is what we compile,
        # over the whole cache (a kv_len growing every token would recompile every token).
        if self.decode is not None and tokens.size(1) == 1:
            return self.decode(tokens, input_pos)
        # Otherwise attention over the filled positions only, and logits only where wanted.
        return self.model(tokens, input_pos, *size_inputs(self.lengths, input_pos, tokens.size(1), last_only))


def compile_for_decode(model: Transformer):
    import torch._inductor.config as inductor_config  # here, not above: seconds to import, for --compile only

    # Freezing folds the weights into the graph as constants, which lets inductor pick
    # its own CPU GEMV/GEMM templates; ATen's batch-1 matmul streams weights at a
    # third of the memory bandwidth on this class of machine.
    inductor_config.freezing = True
    inductor_config.max_autotune = True
    inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
    return torch.compile(model, fullgraph=True, dynamic=False)
