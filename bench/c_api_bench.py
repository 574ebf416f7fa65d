#!/usr/bin/env python3
"""libtorchchat's C API on SmolLM2-135M (fp32, AOT Inductor .so): what embedding costs.

    python3 bench/c_api_bench.py [--model SO] [--reps 3] [--threads 1] [--results DIR]

- API overhead per token: greedy decode through tc_generate (ctypes host, a callback per piece)
  against aoti_run on the same model, prompt and -n, alternating runs; median decode tokens/s.
- Two sessions on one model: peak RSS of a process that holds one session, and of one that holds
  two (each having run a turn), against one KV cache's size.
- A ~1,000-token conversation: tc_session_save time and file size, and tc_session_load in a new
  process (open the model first, then the timed load); beside it the replay alternative, a prefill
  of the same tokens.
- Sizes of libtorchchat, aoti_run and the npc example.

The model is exported once (context 1280) and cached in ~/.cache/torchchat-bench. Prints one
markdown table and records the run in bench/results/c_api.jsonl (results.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import results  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runner"))
CACHE = Path(os.environ.get("TORCHCHAT_BENCH_CACHE", Path.home() / ".cache" / "torchchat-bench"))
BUILD = ROOT / "cmake-out"
LIBRARY, AOTI_RUN, NPC = BUILD / "libtorchchat.so", BUILD / "aoti_run", BUILD / "npc"
TOKENIZER = Path.home() / ".torchchat" / "model-cache" / "smollm2-135m" / "tokenizer.json"
CONTEXT = 1280
PROMPT = "Once upon a time, in a small village at the edge of the forest,"
STEPS = 160
# SmolLM2 in fp32: 30 layers x (K, V) x 3 KV heads x 64 x 4 bytes per position.
KV_BYTES_PER_POSITION = 30 * 2 * 3 * 64 * 4


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_path(given: Path | None) -> Path:
    if given:
        return given
    out = CACHE / f"smollm2-135m-f32-fp32-ctx{CONTEXT}.so"
    if not out.is_file():
        gguf = CACHE / "smollm2-135m-f32.gguf"
        if not gguf.is_file():
            raise SystemExit(f"error: {gguf} is missing (bench/bench_native.py makes it)")
        log(f"== exporting {out.name} (minutes)")
        subprocess.run([sys.executable, ROOT / "torchchat.py", "export", "--gguf-path", gguf, "--dtype", "fp32",
                        "--max-seq-length", str(CONTEXT), "--output-dso-path", out], check=True, cwd=ROOT)
    return out


# ---------------------------------------------------------------------------------------------
# The host side: scenarios run in a process of their own (`--child NAME ARGS`)


def child(name: str, a: dict) -> dict:
    from tc_ctypes import Library

    lib = Library(str(LIBRARY))
    model = lib.open_model(a["model"], a["tokenizer"])
    if name == "sessions":
        sessions = [lib.open_session(model, temperature=0.0, max_tokens=64) for _ in range(a["n"])]
        for s in sessions:
            s.chat(a["message"])
        return {"max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if name == "save":
        s = lib.open_session(model, temperature=0.0, max_tokens=a["reply"])
        first = s.chat(a["message"])
        start = time.perf_counter()
        s.save(a["path"])
        return {"save_seconds": time.perf_counter() - start, "position": first["position"],
                "next": s.chat(a["next"])["tokens"]}
    if name == "load":
        start = time.perf_counter()
        s = lib.load_session(model, a["path"])
        load_seconds = time.perf_counter() - start
        return {"load_seconds": load_seconds, "next": s.chat(a["next"])["tokens"]}
    raise SystemExit(f"error: unknown scenario {name}")


def run_child(name: str, **args) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(args)], capture_output=True, text=True,
                       timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"error: scenario {name} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------------------------
# Measurements


def decode_rates(model: Path, reps: int) -> tuple[list[float], list[float]]:
    """Decode tokens/s of aoti_run and of the C API host, alternating; both from the library's stats."""
    runner, api = [], []
    pattern = re.compile(r"generated tokens: (\d+), time to first token: [\d.]+ s, ([\d.]+) tokens/s")
    for _ in range(reps):
        p = subprocess.run([AOTI_RUN, model, "-z", TOKENIZER, "-i", PROMPT, "-t", "0", "-n", str(STEPS)],
                           capture_output=True, text=True, check=True)
        runner.append(float(pattern.search(p.stderr).group(2)))
        p = subprocess.run([sys.executable, __file__, "--child-rate", json.dumps(
            {"model": str(model), "tokenizer": str(TOKENIZER), "prompt": PROMPT, "steps": STEPS})],
            capture_output=True, text=True, check=True)
        api.append(json.loads(p.stdout)["rate"])
    return runner, api


def child_rate(a: dict) -> dict:
    """tc_generate's own decode rate (its stats), with a Python callback per piece as a host has."""
    import ctypes

    from tc_ctypes import TEXT_FN, Library, Stats

    lib = Library(str(LIBRARY))
    model = lib.open_model(a["model"], a["tokenizer"])
    s = lib.open_session(model, temperature=0.0, max_positions=a["steps"])
    stats = Stats()
    pieces = []
    status = lib.lib.tc_generate(s.handle, a["prompt"].encode(),
                                 TEXT_FN(lambda _u, d, n: pieces.append(ctypes.string_at(d, n)) or 0), None,
                                 ctypes.byref(stats))
    assert status == 0, lib.lib.tc_last_error()
    return {"rate": stats.decode_tokens_per_second, "tokens": stats.generated_tokens}


def conversation_message(tokens: int) -> str:
    """A user message of about `tokens` SmolLM2 tokens."""
    sentence = "The baker told the smith that the river had flooded the lower fields again this spring. "
    return sentence * max(1, tokens // 17)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported SmolLM2 .so (default: export one, context 1280)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads of every run (default 1: steadier on a shared machine)")
    results.add_argument(parser)
    args = parser.parse_args()
    for path in (LIBRARY, AOTI_RUN, NPC):
        if not path.exists():
            raise SystemExit(f"error: {path} is not built (scripts/build_native.sh aoti)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every run below
    model = model_path(args.model)
    common = {"model": str(model), "tokenizer": str(TOKENIZER)}
    rows = []

    log("== decode: aoti_run vs the C API")
    runner, api = decode_rates(model, args.reps)
    r, a = statistics.median(runner), statistics.median(api)
    rows.append({"measure": f"decode tokens/s, greedy, {STEPS} positions (median of {args.reps})",
                 "aoti_run": round(r, 2), "C API": round(a, 2),
                 "difference": f"{(1 / a - 1 / r) * 1000:+.3f} ms/token ({(r / a - 1) * 100:+.2f} %)"})

    log("== peak RSS: one session, two sessions")
    message = "Tell me about the village."
    one = run_child("sessions", n=1, message=message, **common)["max_rss_kib"] / 1024
    two = run_child("sessions", n=2, message=message, **common)["max_rss_kib"] / 1024
    kv = KV_BYTES_PER_POSITION * (CONTEXT + 1) / 2**20  # the exporter's one spare position
    rows.append({"measure": "peak RSS, MiB: one session / two sessions", "aoti_run": "", "C API": [round(one, 1),
                 round(two, 1)], "difference": f"+{two - one:.1f} MiB; one KV cache {kv:.1f} MiB; "
                 f"bound one + KV + 10 % = {(one + kv) * 1.1:.1f}"})

    log("== a ~1,000-token conversation: save, load in a new process")
    path = CACHE / "c_api_bench.tcs"
    saved = run_child("save", message=conversation_message(940), reply=60, path=str(path), next="Go on.", **common)
    loaded = run_child("load", path=str(path), next="Go on.", **common)
    assert loaded["next"] == saved["next"], "the loaded session did not continue as the saved one"
    size = path.stat().st_size / 2**20
    rows.append({"measure": f"save / load of {saved['position']} positions, s", "C API": [
        round(saved["save_seconds"], 3), round(loaded["load_seconds"], 3)],
        "difference": f"file {size:.1f} MiB; next turn identical"})
    p = subprocess.run([AOTI_RUN, model, "-z", TOKENIZER, "-i", conversation_message(940), "-t", "0", "-n",
                        str(saved["position"])], capture_output=True, text=True, check=True)
    prefill = float(re.search(r"prefill ([\d.]+) tokens/s", p.stderr).group(1))
    prompt_tokens = int(re.search(r"prompt tokens: (\d+)", p.stderr).group(1))
    rows.append({"measure": f"replay instead: prefill of {prompt_tokens} tokens, s",
                 "aoti_run": round(prompt_tokens / prefill, 3)})
    path.unlink()

    sizes = {name: (BUILD / name).resolve().stat().st_size / 2**10 for name in
             ("libtorchchat.so", "libtorchchat_kernels.so", "libtorchchat_et_kernels.so", "aoti_run", "et_run", "npc")
             if (BUILD / name).exists()}
    rows.append({"measure": "sizes, KiB: " + ", ".join(sizes), "C API": [round(v) for v in sizes.values()]})

    columns = ["measure", "aoti_run", "C API", "difference"]
    run = results.record("c_api", columns, rows, directory=args.results,
                         settings={"model": model.name, "context": CONTEXT, "threads": args.threads},
                         notes=["C API figures from a Python ctypes host in a process of its own",
                                "load time excludes opening the model (done once per game, not per save)"])
    print(results.render(run))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-rate":
        print(json.dumps(child_rate(json.loads(sys.argv[2]))))
    elif len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        main()
