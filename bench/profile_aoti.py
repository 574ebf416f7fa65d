#!/usr/bin/env python3
"""Where a decode step's time goes in an AOT Inductor model: a per-op profile.

    python3 bench/profile_aoti.py [--quantize JSON] [--context 256] [--threads 2] [--tokens 64]

Exports the default model (SmolLM2-135M, fp32 GGUF weights) with inductor's kernel profiling
on (`cpp.enable_kernel_profile`: every generated kernel and extern call records itself), runs
it from Python under torch.profiler for `--tokens` decode steps, and prints one table: each
kernel's time per token and share. Our quantized linears appear as
aoti_torch_cpu_int{8,4}_panel_weight_linear (int{8,4}_a8_ with int8 activations), inductor's own kernels as cpp_fused_* (attention,
norms, RoPE, the KV-cache update) and its GEMM templates as cpp_CppMicroGemm*/cpp_fused_*.
The exported file is temporary: profiling hooks cost a little time per kernel.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantize", help="a --quantize spec, e.g. '{\"linear:int8\": {\"groupsize\": 0}}'")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    a = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from torchchat.export import export_model
    from torchchat.backends.aoti import AOTIDecoder
    from torchchat.load import load_model

    torch.set_num_threads(a.threads)
    args = Namespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32", max_seq_length=None, quantize=a.quantize)
    loaded = load_model(args, "aoti")
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "profiled.so"
        with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
            export_model(loaded.model, loaded.info, loaded.dtype, a.context, so_path=so)
        decoder = AOTIDecoder(so)
        prompt = torch.randint(0, loaded.info.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
        decoder(prompt, torch.arange(16))
        token = torch.tensor([[1]])
        for i in range(8):  # warm-up
            decoder(token, torch.tensor([16 + i]))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for i in range(a.tokens):
                decoder(token, torch.tensor([24 + i]))
            wall = time.perf_counter() - t0
    per_token_ms = wall / a.tokens * 1e3
    events = [e for e in prof.key_averages() if e.key not in ("aten::empty", "aten::to")]
    total_us = sum(e.self_cpu_time_total for e in events) / a.tokens
    print(f"\n{a.quantize or 'fp32'}, context {a.context}, {a.threads} threads: {per_token_ms:.2f} ms per decode step "
          f"({1e3 / per_token_ms:.1f} tok/s under the profiler); profiled kernels sum to {total_us / 1e3:.2f} ms\n")
    print("| kernel | calls/token | ms/token | share |")
    print("|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        us = e.self_cpu_time_total / a.tokens
        print(f"| {e.key[:70]} | {e.count / a.tokens:.0f} | {us / 1e3:.3f} | {us / total_us * 100:.1f}% |")


if __name__ == "__main__":
    main()
