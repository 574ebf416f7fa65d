"""Benchmark results kept as data.

Each run of a benchmark appends one JSON line to `bench/results/<benchmark>.jsonl`: when it ran,
the commit it ran, the machine (CPU model and the flags our kernels and llama.cpp care about), its
settings and its table's rows. It also rewrites `bench/results/<benchmark>[-<variant>].md`, the
table of the latest run, rendered. The benchmarks print the same rendering on stdout.

    record = results.record("bench_native", columns, rows, settings={...}, directory=args.results)
    print(results.render(record))
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# /proc/cpuinfo flags that decide which kernels run (ours: kernels/quant_linear.h; llama.cpp's).
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
         "amx_tile", "amx_int8", "amx_bf16")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """--results DIR: where a run is recorded (default bench/results; a scratch folder for trial runs)."""
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of the results data (default: bench/results)")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())


def machine() -> dict:
    """This machine as a result records it."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name", "unknown"),
        "cpu_id": f"family {info.get('cpu family', '?')} model {info.get('model', '?')} "
                  f"stepping {info.get('stepping', '?')}",
        "flags": [f for f in FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
    }


def git_commit() -> str:
    """HEAD's short hash, with "-dirty" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(benchmark: str, columns: list[str], rows: list[dict], *, settings: dict | None = None,
           notes: list[str] | None = None, variant: str | None = None, directory: Path = RESULTS,
           **known: object) -> dict:
    """Append one run to <directory>/<benchmark>.jsonl and render it to <benchmark>[-<variant>].md.

    rows: one dict per table row, keyed by the names in `columns` (a missing key is an empty
    cell). `known` overrides the measured fields (date, commit, machine) for a run recorded later
    from its notes."""
    run = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "variant": variant,
        "settings": settings or {},
        "notes": notes or [],
        "columns": columns,
        "rows": rows,
        **known,
    }
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{benchmark}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(run, ensure_ascii=False) + "\n")
    name = benchmark + (f"-{variant}" if variant else "")
    (directory / f"{name}.md").write_text(render(run, heading=True), encoding="utf-8")
    return run


def runs(benchmark: str, directory: Path = RESULTS) -> list[dict]:
    """Every recorded run of a benchmark, oldest first."""
    path = directory / f"{benchmark}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def describe_machine(m: dict) -> str:
    cpus = f"{m['usable_cpus']} of {m['logical_cpus']} logical CPUs" if m.get("usable_cpus") != m.get(
        "logical_cpus") else f"{m.get('logical_cpus')} logical CPUs"
    parts = [m.get("cpu", "unknown CPU")]
    if m.get("cpu_id"):
        parts.append(m["cpu_id"])
    parts.append(cpus)
    parts.append("flags: " + (" ".join(m.get("flags") or []) or "none of ours"))
    if m.get("note"):
        parts.append(m["note"])
    return "; ".join(parts)


def cell(value: object) -> str:
    """Numbers as recorded (benchmarks round them to the digits that mean something)."""
    if value is None or value != value:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " / ".join(cell(v) for v in value)
    return str(value)


def table(columns: list[str], rows: list[dict]) -> str:
    """A markdown table; numeric columns are right-aligned."""
    def numeric(c: str) -> bool:
        return any(isinstance(r.get(c), (int, float)) for r in rows)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render(run: dict, heading: bool = False) -> str:
    """One run as markdown: what ran where, its notes, its table."""
    out = []
    if heading:
        out.append(f"# {run['benchmark']}" + (f" ({run['variant']})" if run.get("variant") else "")
                   + ": latest run\n")
    out.append(f"- date: {run['date']}; commit: {run['commit']}")
    out.append(f"- machine: {describe_machine(run['machine'])}")
    if run.get("settings"):
        out.append("- settings: " + ", ".join(f"{k} {v}" for k, v in run["settings"].items()))
    out += [f"- {n}" for n in run.get("notes") or []]
    out += ["", table(run["columns"], run["rows"]), ""]
    return "\n".join(out)
