#!/usr/bin/env python3
"""Decode speed beside llama.cpp, alternated finely: ratios taken within each round.

    python3 bench/alternate.py GGUF ARTIFACT [ARTIFACT ...] [--isa native|avx512|avx2] [--rounds 15] [--tokens 64]
                               [--threads 2] [--results DIR]

Each round runs one `llama-bench -p 0 -n TOKENS -r 1` on GGUF, then each artifact once
(`aoti_bench` for .so/.pt2, `et_bench` for .pte: `-p 1 -g TOKENS -r 1`), and keeps each
artifact's speed divided by llama.cpp's of the same round. On a shared machine whose speed moves
by ±30 % from minute to minute, a ratio of runs seconds apart says much more than medians of runs
minutes apart. The artifacts take turns at running first after llama.cpp. A file alternated
against a copy of itself reads 0.95-1.02 over 15 rounds, so medians within about 5 % are noise.

Prints one table (medians and quartiles of the ratios, and of each artifact against the first
one, e.g. old against new) and records it, with this machine, in bench/results/ (results.py).
Needs `bench/build_llama_cpp.sh`'s llama-bench (built once, minutes, cached) and the runners in
cmake-out (`--threads` sets llama.cpp's -t and OMP_NUM_THREADS for aoti_bench).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import results  # bench/results.py
from bench_native import ISAS, default_isa

ROOT = Path(__file__).resolve().parents[1]


def quartiles(values: list[float]) -> list[float]:
    """[first quartile, third quartile] (the value twice for a single round)."""
    if len(values) < 2:
        return [round(values[0], 2)] * 2
    q = statistics.quantiles(values, n=4)
    return [round(q[0], 2), round(q[2], 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", type=Path)
    p.add_argument("artifacts", type=Path, nargs="+")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--isa", choices=list(ISAS), default=default_isa(results.cpu_flags()),
                   help="our kernels' level and llama.cpp's build, as in bench_native.py (default here: %(default)s)")
    results.add_argument(p)
    a = p.parse_args()
    kernels, needs = ISAS[a.isa]
    lacking = [f for f in needs if f not in results.cpu_flags()]
    missing = [str(f) for f in [a.gguf, *a.artifacts] if not f.is_file()]
    if lacking or missing or a.rounds < 1 or a.tokens < 1:
        sys.exit(f"error: --isa {a.isa}: this CPU lacks {' '.join(lacking)}" if lacking else
                 f"error: missing {', '.join(missing)}" if missing else "error: --rounds and --tokens must be >= 1")
    # the pinned llama.cpp build for the ISA, made once and cached (bench_native.py uses the same script)
    llama_dir = subprocess.run([str(ROOT / "bench" / "build_llama_cpp.sh"), a.isa], check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1]
    llama_bench = Path(llama_dir) / "bin" / "llama-bench"
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), **({"TORCHCHAT_KERNELS": kernels} if kernels else {}))

    def llama() -> float:
        out = subprocess.run([str(llama_bench), "-m", str(a.gguf), "-p", "0", "-n", str(a.tokens), "-r", "1", "-t",
                              str(a.threads), "-o", "json"], capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]["avg_ts"]

    def ours(f: Path) -> float:
        runner = ROOT / "cmake-out" / ("et_bench" if f.suffix == ".pte" else "aoti_bench")
        out = subprocess.run([str(runner), str(f), "-p", "1", "-g", str(a.tokens), "-r", "1"],
                             capture_output=True, text=True, env=env, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["tg_tps"][0]

    base: list[float] = []
    speeds: dict[Path, list[float]] = {f: [] for f in a.artifacts}
    for r in range(a.rounds):
        base.append(llama())
        # Each round starts at the next artifact: none always runs right after llama.cpp.
        for f in a.artifacts[r % len(a.artifacts):] + a.artifacts[:r % len(a.artifacts)]:
            speeds[f].append(ours(f))
        print(f"round {r + 1}/{a.rounds}: llama.cpp {base[-1]:.1f} tok/s, "
              + ", ".join(f"{f.name} {speeds[f][-1]:.1f}" for f in a.artifacts), file=sys.stderr, flush=True)

    first = a.artifacts[0]
    rows = []
    for f in a.artifacts:
        ratios = [s / b for s, b in zip(speeds[f], base)]
        against = [s / o for s, o in zip(speeds[f], speeds[first])]
        rows.append({"artifact": f.name, "tok/s median": round(statistics.median(speeds[f]), 1),
                     "× llama.cpp median": round(statistics.median(ratios), 2),
                     "× llama.cpp quartiles": quartiles(ratios),
                     f"× {first.name} median": None if f == first else round(statistics.median(against), 2),
                     f"× {first.name} quartiles": None if f == first else quartiles(against)})
    settings = {"isa": a.isa, "llama.cpp": Path(llama_dir).name, "gguf": a.gguf.name, "rounds": a.rounds,
                "tokens": a.tokens, "threads": a.threads}
    notes = [f"llama.cpp {a.gguf.name}: median {statistics.median(base):.1f} tok/s "
             f"({min(base):.0f}-{max(base):.0f}) over the rounds"]
    run = results.record("alternate", list(rows[0]), rows, settings=settings, notes=notes,
                         variant=None if a.isa == "native" else a.isa, directory=a.results)
    print(results.render(run))

if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:  # a runner or llama-bench refused: its own one line, then ours
        sys.exit(f"error: {Path(str(e.cmd[0])).name} exited with {e.returncode}: {(e.stderr or '').strip()[-300:]}")
