"""ExecuTorch: lower the program to a .pte (`export --output-pte-path`) for et_run.

The program is the same model's `torch.export` as AOT Inductor's (torchchat/export/program.py),
taking (tokens, input_pos, None, n_logits): whole-cache attention (no kv_len) and logits for the
last n_logits positions. The XNNPACK partitioner takes the linears, the norms and elementwise
work; what it leaves (embedding, position indexing, rotary's selects, splits, the in-place cache
write) runs on ExecuTorch's CPU kernels, and attention over an fp32 or bf16 cache
(program.cache_attention) and linear:int8 / linear:int4 layers on ours
(kernels/executorch_ops.cpp: et_run links them, torchchat/backends/executorch.py loads them).
Two export-time choices, not model changes: attention over an fp16 cache is decomposed for
XNNPACK (sdpa_for_xnnpack), and the cache write is re-placed in place. A tied output matrix is
stored twice: once for the embedding lookup, once in XNNPACK's data.

Metadata travels as constant methods, which is how ExecuTorch's own LLM runner reads it:
`get_metadata_json` holds torchchat/metadata.py's JSON (the contract with our C++ core), and
the standard ones (`get_max_seq_len`, `get_vocab_size`, `get_bos_id`, `get_eos_ids`,
`use_kv_cache`, `enable_dynamic_shape`, ...) the same facts one by one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchchat import metadata
from torchchat.export.staging import staged_output
from torchchat.metadata import ModelInfo
from torchchat.quiet import quiet_executorch_imports


def constant_methods(info: ModelInfo, meta_json: str) -> dict:
    """Our JSON, plus ExecuTorch's LLM-runner methods (extension/llm/runner/constants.h)."""
    return {
        metadata.PTE_METHOD: meta_json,
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


def compile_pte(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    """XNNPACK-lower `ep` and write the program to `out` (atomically: torchchat/export/staging.py)."""
    quiet_executorch_imports()
    # Here, not above: an optional dependency that takes seconds to import.
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    info, _ = metadata.from_json(meta_json, str(out))
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
