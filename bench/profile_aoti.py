#!/usr/bin/env python3
"""Where a decode step's (or a prompt's) time goes in an AOT Inductor model: a per-op profile.

    python3 bench/profile_aoti.py [--quantize JSON] [--isa native|avx2|avx512] [--context 256]
                                  [--threads 2] [--tokens 64] [--prompt 128]

Exports the default model (SmolLM2-135M, fp32 GGUF weights) with inductor's kernel profiling
on (`cpp.enable_kernel_profile`: every generated kernel and extern call records itself), runs
it from Python under torch.profiler for `--tokens` decode steps (or, with `--prompt N`, for
prefills of N random tokens), and prints one table: each kernel's time per step and share.
Our linears appear as aoti_torch_cpu_{panel,int8,int4}_..._linear (int{8,4}_a8_ with int8
activations), our attention as aoti_torch_cpu_cache_attention, inductor's own kernels as
cpp_fused_* (norms, RoPE, SiLU, the KV-cache update). `--isa avx2` forces our kernels to AVX2
(TORCHCHAT_KERNELS) and compiles inductor's code for AVX2, as bench_native.py --isa avx2 does.
The linears' rate is set beside the machine's fp32 FMA peak (aoti_bench --compute; build it:
scripts/build_native.sh aoti).
The exported file is temporary: profiling hooks cost a little time per kernel.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_native import AOTI_BENCH, ISAS, fma_peak  # noqa: E402  (bench/, this script's folder)


def linear_macs(args, tokens: int) -> int:
    """Multiply-adds of a step's linears: every token through each layer's, the last one through
    the output layer (the runner asks for its logits only)."""
    head_dim = args.dim // args.n_heads
    per_layer = (args.dim * (args.n_heads + 2 * args.n_kv_heads) * head_dim + args.n_heads * head_dim * args.dim
                 + 3 * args.dim * args.hidden_dim)
    return tokens * args.n_layers * per_layer + args.dim * args.vocab_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quantize", help="a --quantize spec, e.g. '{\"linear:int8\": {\"groupsize\": 0}}'")
    p.add_argument("--isa", choices=list(ISAS), default="native")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64, help="decode steps (or prompts with --prompt) profiled")
    p.add_argument("--prompt", type=int, default=0, help="profile prompts of this many tokens instead of decode")
    a = p.parse_args()
    if ISAS[a.isa][0]:  # our kernels' level, as bench_native.py --isa forces it
        os.environ["TORCHCHAT_KERNELS"] = ISAS[a.isa][0]

    import torch
    from torch.profiler import ProfilerActivity, profile

    from torchchat.export import export_model
    from torchchat.backends.aoti import AOTIDecoder
    from torchchat.load import load_model

    torch.set_num_threads(a.threads)
    args = Namespace(model="smollm2-135m", checkpoint_path=None, gguf_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32", max_seq_length=None, quantize=a.quantize)
    loaded = load_model(args, "aoti")
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "profiled.so"
        with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
            export_model(loaded.model, loaded.info, loaded.dtype, a.context, so_path=so, target=a.isa)
        decoder = AOTIDecoder(so)
        if a.prompt:
            prompt = torch.randint(0, loaded.info.vocab_size, (1, a.prompt), generator=generator)
            steps = max(1, a.tokens // 16)
            step = lambda i: decoder(prompt, torch.arange(a.prompt), last_only=True)  # noqa: E731
        else:
            prompt = torch.randint(0, loaded.info.vocab_size, (1, 16), generator=generator)
            decoder(prompt, torch.arange(16))
            token = torch.tensor([[1]])
            steps = a.tokens
            step = lambda i: decoder(token, torch.tensor([16 + i]), last_only=True)  # noqa: E731
        for i in range(2 if a.prompt else 8):  # warm-up
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for i in range(steps):
                step(8 + i)
            wall = time.perf_counter() - t0
    per_step_ms = wall / steps * 1e3
    what = f"prompt of {a.prompt} tokens" if a.prompt else "decode step"
    rate = a.prompt * 1e3 / per_step_ms if a.prompt else 1e3 / per_step_ms
    events = [e for e in prof.key_averages() if e.key not in ("aten::empty", "aten::to")]
    total_us = sum(e.self_cpu_time_total for e in events) / steps
    print(f"\n{a.quantize or 'fp32'}, kernels {os.environ.get('TORCHCHAT_KERNELS', 'native')}, context {a.context}, "
          f"{a.threads} threads: {per_step_ms:.2f} ms per {what} ({rate:.1f} tok/s under the profiler); "
          f"profiled kernels sum to {total_us / 1e3:.2f} ms\n")
    linear_us = sum(e.self_cpu_time_total for e in events if e.key.endswith("_linear")) / steps
    if linear_us:
        gmacs = linear_macs(loaded.model.args, max(1, a.prompt)) / linear_us / 1e3
        peak = fma_peak(a.threads, a.isa)[0] if AOTI_BENCH.is_file() else None
        share = f", {gmacs / peak * 100:.0f}% of this machine's fp32 FMA peak ({peak:.0f} GMAC/s)" if peak else ""
        print(f"Our linears: {linear_us / 1e3:.2f} ms, {gmacs:.1f} GMAC/s{share}\n")
    print("| kernel | calls/step | ms/step | share |")
    print("|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        us = e.self_cpu_time_total / steps
        print(f"| {e.key[:70]} | {e.count / steps:.0f} | {us / 1e3:.3f} | {us / total_us * 100:.1f}% |")


if __name__ == "__main__":
    main()
