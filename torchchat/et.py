"""ExecuTorch: export to a .pte program (`export --output-pte-path`) and run it from Python (`--pte-path`).

The program is the same model's `torch.export` as AOT Inductor's (torchchat/export.py), with
inputs (tokens, input_pos, None, n_logits): whole-cache attention (no kv_len) and logits for the
last n_logits positions (the runner asks for 1, `eval --pte-path` for all; programs exported
before n_logits take (tokens, input_pos), return all, and still run). The KV cache is a pair
of mutable buffers per layer inside the program, and the sequence length is dynamic
(1..max_seq_len), so the whole prompt is prefilled in one call and decode is T = 1.
The XNNPACK partitioner takes the linears, the norms and elementwise work; what it leaves
(embedding, position indexing, rotary's selects, splits, the in-place cache write) runs on
ExecuTorch's CPU kernels, and attention over an fp32 or bf16 cache (export.cache_attention) and
linear:int8 / linear:int4 layers on ours (kernels/executorch_ops.cpp: et_run links them,
PTEDecoder loads them). Two export-time choices, not model changes: attention over an fp16
cache is decomposed for XNNPACK (sdpa_for_xnnpack), and the cache write is re-placed in place.
A tied output matrix is stored twice: once for the embedding lookup, once in XNNPACK's data.

Metadata travels as constant methods, which is how ExecuTorch's own LLM runner reads it:
`get_metadata_json` holds torchchat/metadata.py's JSON (the contract with our C++ core), and
the standard ones (`get_max_seq_len`, `get_vocab_size`, `get_bos_id`, `get_eos_ids`,
`use_kv_cache`, `enable_dynamic_shape`, ...) the same facts one by one.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from torchchat import kernels, metadata, target_cpu
from torchchat.errors import UserError
from torchchat.exported import first_line
from torchchat.loader import ModelInfo
from torchchat.model import length_tensor, n_logits_input

METADATA_METHOD = "get_metadata_json"
PTE_MAGIC = b"ET"  # bytes 4..6 of a .pte: the flatbuffer file identifier "ET12", "ET13", ...


def quiet_executorch_imports() -> None:
    # executorch imports torchao, which logs a warning per CUDA-only extension it cannot load.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """The runtime logs CPU probing to fd 2 while loading; its errors come back as exceptions."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def constant_methods(info: ModelInfo, meta_json: str) -> dict:
    """Our JSON, plus ExecuTorch's LLM-runner methods (extension/llm/runner/constants.h)."""
    return {
        METADATA_METHOD: meta_json,
        "get_max_seq_len": info.max_seq_len,
        "get_max_context_len": info.max_seq_len,
        "get_vocab_size": info.vocab_size,
        "get_bos_id": info.bos_id if info.bos_id is not None else 0,
        "get_n_bos": 1 if info.add_bos else 0,
        "get_eos_ids": [int(i) for i in info.stop_ids],
        "get_n_eos": 0,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }


def sdpa_for_xnnpack(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention as two batched matmuls XNNPACK takes, for a boolean mask.

    The stock decomposition repeats each KV head for its query heads (grouped-query attention),
    which copies the whole cache every layer and token; here the G query heads sharing a KV head
    are instead G*T rows of one matmul against that head's keys and values. Inference only."""
    b, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = h // kv
    scale = scale if scale is not None else d ** -0.5
    scores = torch.bmm((q * scale).reshape(b * kv, g * t, d), k.reshape(b * kv, s, d).transpose(1, 2))
    if attn_mask is not None:
        bias = torch.where(attn_mask, 0.0, float("-inf")) if attn_mask.dtype == torch.bool else attn_mask
        bias = bias.to(scores.dtype).reshape(1, t, s)  # one mask for all heads (ours is [1, 1, T, S])
        scores = scores + (bias.repeat(1, g, 1) if g > 1 else bias)
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(b * kv, s, d))
    return out.reshape(b, h, t, d)


def lower_to_pte(ep: torch.export.ExportedProgram, out: Path, info: ModelInfo, meta_json: str) -> None:
    """XNNPACK-lower `ep` and write the program to `out` (atomically, see export.staged_output)."""
    quiet_executorch_imports()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from torchchat.export import staged_output

    ep = ep.run_decompositions({torch.ops.aten.scaled_dot_product_attention.default: sdpa_for_xnnpack})
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=[XnnpackPartitioner()],
        constant_methods=constant_methods(info, meta_json),
        # index_copy_ and the dynamic shapes are outside the core ATen IR check; ExecuTorch runs them.
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    # Upper-bound memory planning from the dynamic dimension's range (T <= max_seq_len).
    # The reinplace pass writes the new keys/values into the cache buffer in place (index_put_);
    # without it, each layer builds a new cache tensor and copies it back, every token.
    program = edge.to_executorch(ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
                                                         run_reinplace_pass=True))
    with staged_output(out, ".pte") as staged:
        with open(staged, "wb") as f:
            program.write_to_file(f)


# ---------------------------------------------------------------------------------------------
# Running a .pte from Python


def sniff_pte(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:6] != PTE_MAGIC:
        raise UserError(f"{path}: not an ExecuTorch program (.pte)")


class PTEDecoder:
    """Runs a .pte through ExecuTorch's Python runtime: (tokens [1, T], input_pos [T]) -> logits [1, T, vocab]."""

    def __init__(self, path: str | Path):
        quiet_executorch_imports()
        from executorch.runtime import Runtime

        path = Path(path)
        sniff_pte(path)
        try:
            with native_stderr_silenced():
                program = Runtime.get().load_program(path)
        except Exception as e:  # the loader raises RuntimeError/ValueError for damaged files
            raise UserError(f"{path}: cannot load the ExecuTorch program (truncated or damaged?): {first_line(e)}") from None
        if METADATA_METHOD not in program.method_names or "forward" not in program.method_names:
            raise UserError(f"{path}: no torchchat metadata (export it with `torchchat.py export --output-pte-path`)")
        try:
            # Constant methods first: host methods share memory arenas in this runtime, so
            # nothing else may run once forward's KV cache holds state.
            (text,) = program.load_method(METADATA_METHOD).execute([])
            self.info, self.dtype = metadata.from_json(str(text), str(path))
            target_cpu.check(str(text), str(path))  # ours need nothing ("any"), but honour what one says
            # Our attention and linear:int8/int4 kernels (kernels/executorch_ops.cpp), before forward's
            # load, which resolves its operators. (Programs exported before 2026-11-28 without
            # linear:int8/int4 call none of them; loading them costs nothing once built.)
            kernels.load_executorch()
            with native_stderr_silenced():
                self._forward = program.load_method("forward")
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: cannot load the ExecuTorch program: {first_line(e)}") from None
        self.program = program  # keeps the methods' program alive
        self.max_seq_len, self.vocab_size = self.info.max_seq_len, self.info.vocab_size
        # (tokens, input_pos, kv_len = None, n_logits): Transformer.forward's inputs, kv_len left out
        # (whole-cache attention). Programs exported before n_logits take (tokens, input_pos) and
        # return every position.
        self.takes_n_logits = self._forward.metadata.num_inputs() == 4
        self.lengths = length_tensor(self.max_seq_len)

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # last_only (generate.Decoder): logits of the last position only, [1, 1, vocab]; else every position's.
        n, start = tokens.size(1), int(input_pos[0]) if input_pos.numel() else 0
        if n < 1 or start < 0 or start + n > self.max_seq_len:
            raise UserError(f"{n} tokens at position {start} do not fit the model's context of {self.max_seq_len}")
        inputs = [tokens.contiguous(), input_pos.contiguous()]
        if self.takes_n_logits:
            inputs += [None, n_logits_input(self.lengths, n, last_only)]  # no kv_len: whole-cache attention
        try:
            (logits,) = self._forward.execute(inputs)
        except RuntimeError as e:
            raise UserError(f"the ExecuTorch program failed: {first_line(e)}") from None
        return logits.clone()  # the runtime's output memory is reused by the next call
