#!/usr/bin/env python3
"""Damaged artifacts through both runners and the Python CLI: random single-byte flips and truncations.

    python3 scripts/corruption_campaign.py [--trials N] [--seed S] [--work DIR] [--cases a,b] [--jobs 2]

Makes tiny artifacts once (a 2-layer random llama exported to .so, .pt2 and .pte; its GGUF; a
SentencePiece model, its tokenizer.bin, a tiktoken file and a tokenizer.json), then for every case
damages a copy of one file N times (a random byte XOR a random non-zero value, or a cut at a random
length) and runs the case's command on it. Half the flips land in the file's structure (headers,
indexes, the program, the metadata: what a loader parses) rather than anywhere, as most of each
file is weights, where a flip only changes numbers. Each run is classified:

    ran       exit 0: the flip hit bytes that only change numbers (weights, scores)
    detected  exit non-zero with one line "error: ..." and no traceback
    unclean   exit non-zero without that one line
    crash     killed by a signal, a sanitizer report, a Python traceback, or std::terminate
    hang      no exit within the time limit

Prints one table, keeps each unclean, crashing or hanging input under WORK/failures/ with its command,
and exits 1 if there was any. CI runs a few trials per case (tests/runner/test_corruption.py); a real
campaign is thousands (--trials 500 over the 12 cases).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, str(ROOT / "torchchat.py")]
CRASH_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "Traceback (most recent call last)",
               "terminate called", "Segmentation fault", "Aborted")


ARTIFACTS = ("model.pt", "tokenizer.model", "tokenizer.bin", "model.so", "model.pt2", "model.pte", "model.gguf",
             "tiktoken.model", "tokenizer.json")


@dataclass
class Case:
    name: str
    damaged: str  # which of the artifacts gets damaged
    command: list  # {x}: the damaged copy; other {names}: the intact artifacts
    timeout: float = 60.0


@dataclass
class Tally:
    counts: dict = field(default_factory=lambda: dict.fromkeys(("ran", "detected", "unclean", "crash", "hang"), 0))
    seconds: float = 0.0


def build(work: Path, needed: set[str]) -> dict[str, Path]:
    """The intact artifacts that `needed` names, made once per work folder."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "python")]
    from tiny_models import tiny_llama2_files, write_gguf
    from tiny_tokenizers import write_tiktoken, write_tokenizer_bin

    a = {name: work / name for name in ARTIFACTS}
    missing = [name for name in ARTIFACTS if name in needed and not a[name].exists()]
    if not missing:
        return a
    print(f"making {', '.join(missing)} in {work} (once)", file=sys.stderr)
    if not all(a[n].exists() for n in ("model.pt", "tokenizer.model", "model.gguf")):
        (work / "tiny").mkdir(exist_ok=True)
        tiny = tiny_llama2_files(work / "tiny")
        shutil.copy(tiny.ckpt, a["model.pt"])
        shutil.copy(tiny.tok, a["tokenizer.model"])
        write_gguf(tiny.hf, a["model.gguf"])
    if not a["tokenizer.bin"].exists():
        write_tokenizer_bin(a["tokenizer.model"], a["tokenizer.bin"])
    if not a["tiktoken.model"].exists():
        write_tiktoken(a["tiktoken.model"])
    if "tokenizer.json" in missing:
        smollm2 = Path(subprocess.run([*PY, "where", "smollm2-135m"], capture_output=True, text=True).stdout.strip())
        shutil.copy(smollm2 / "tokenizer.json", a["tokenizer.json"])
    for flag, out in (("--output-dso-path", "model.so"), ("--output-aoti-package-path", "model.pt2"),
                      ("--output-pte-path", "model.pte")):
        if out in missing:
            subprocess.run([*PY, "export", "--checkpoint-path", a["model.pt"], "--tokenizer-path", a["tokenizer.model"],
                            "--max-seq-length", "64", flag, a[out]], check=True, capture_output=True)
    return a


def cases(build_dirs: list[Path]) -> list[Case]:
    out = []
    for b in build_dirs:
        tag = "" if b.name == "cmake-out" else "-asan"
        run_args = ["-z", "{tokenizer.bin}", "-i", "Once upon", "-n", "6", "-t", "0"]
        if (b / "aoti_run").exists():
            out += [Case(f"aoti_run{tag} .so", "model.so", [b / "aoti_run", "{x}", *run_args]),
                    Case(f"aoti_run{tag} .pt2", "model.pt2", [b / "aoti_run", "{x}", *run_args]),
                    Case(f"aoti_run{tag} tokenizer.bin", "tokenizer.bin",
                         [b / "aoti_run", "{model.so}", "-z", "{x}", "-i", "Once", "-n", "4"])]
        if (b / "et_run").exists():
            out += [Case(f"et_run{tag} .pte", "model.pte", [b / "et_run", "{x}", *run_args]),
                    Case(f"et_run{tag} tokenizer.bin", "tokenizer.bin",
                         [b / "et_run", "{model.pte}", "-z", "{x}", "-i", "Once", "-n", "4"])]
        if (b / "tokenize").exists():
            out += [Case(f"tokenize{tag} tiktoken", "tiktoken.model", [b / "tokenize", "{x}", "text", "hello <|eot_id|> 12"]),
                    Case(f"tokenize{tag} tokenizer.json", "tokenizer.json", [b / "tokenize", "{x}", "text", "hello <|im_end|>"])]
    gen = ["generate", "--prompt", "Once upon", "--max-new-tokens", "4", "--temperature", "0"]
    out += [Case("python --dso-path", "model.so", [*PY, *gen, "--dso-path", "{x}", "--tokenizer-path", "{tokenizer.model}"], 180),
            Case("python --aoti-package-path", "model.pt2",
                 [*PY, *gen, "--aoti-package-path", "{x}", "--tokenizer-path", "{tokenizer.model}"], 180),
            Case("python --pte-path", "model.pte", [*PY, *gen, "--pte-path", "{x}", "--tokenizer-path", "{tokenizer.model}"], 180),
            Case("python --gguf-path", "model.gguf", [*PY, *gen, "--gguf-path", "{x}"], 180),
            Case("python --checkpoint-path .pt", "model.pt",
                 [*PY, *gen, "--checkpoint-path", "{x}", "--tokenizer-path", "{tokenizer.model}"], 180),
            Case("python SentencePiece model", "tokenizer.model",
                 [*PY, *gen, "--checkpoint-path", "{model.pt}", "--tokenizer-path", "{x}"], 180)]
    return out


def complement(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out, at = [], 0
    for start, end in sorted(spans):
        if start > at:
            out.append((at, start))
        at = max(at, end)
    return out + ([(at, size)] if at < size else [])


def constants_block(data: bytes, at: int) -> tuple[int, int] | None:
    """(data start, data bytes) of a torchchat/mapped_constants.py block at `at`, if there is one."""
    i = data.find(b"TCHCNST1", at)
    if i < 0:
        return None
    n = int.from_bytes(data[i + 8:i + 16], "little")
    index = json.loads(data[i + 16:i + 16 + n])
    return -(-(i + 16 + n) // 16384) * 16384, index["data_bytes"]


def structure(name: str, path: Path, data: bytes) -> list[tuple[int, int]]:
    """The byte ranges of `data` that a loader parses (everything but the weights); [] if all of it."""
    if name == "model.pte" and data[8:12] == b"eh00":
        return [(0, struct.unpack_from("<Q", data, 24)[0])]  # the program, before its segments
    if name in ("model.so", "model.pt2") and (block := constants_block(data, 0)):
        start, size = block
        return complement([(start, start + size)], len(data))
    if name == "model.gguf":
        from gguf import GGUFReader
        return [(0, GGUFReader(path).data_offset)]
    if name == "model.pt":  # a zip: the pickle and the zip's own records, not the tensors' storages
        with zipfile.ZipFile(path) as z:
            storages = [(i.header_offset + 30 + len(i.filename) + len(i.extra),
                         i.header_offset + 30 + len(i.filename) + len(i.extra) + i.compress_size)
                        for i in z.infolist() if "/data/" in i.filename]
        return complement(storages, len(data))
    return []


def damage(data: bytes, rng: random.Random, spans: list[tuple[int, int]]) -> tuple[bytes, str]:
    if rng.random() < 0.8:
        if spans and rng.random() < 0.5:
            start, end = rng.choices(spans, weights=[e - s for s, e in spans])[0]
            at = rng.randrange(start, end)
        else:
            at = rng.randrange(len(data))
        flip = rng.randrange(1, 256)
        return data[:at] + bytes([data[at] ^ flip]) + data[at + 1:], f"byte {at} ^= {flip:#04x}"
    at = rng.randrange(len(data))
    return data[:at], f"cut at {at} of {len(data)}"


def classify(p: subprocess.CompletedProcess | None) -> str:
    if p is None:
        return "hang"
    if p.returncode < 0 or p.returncode >= 128 or any(m in p.stderr for m in CRASH_MARKS):
        return "crash"
    if p.returncode == 0:
        return "ran"
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return "detected" if len(errors) == 1 and lines[-1] == errors[0] else "unclean"


def trial(case: Case, artifacts: dict[str, Path], original: bytes, spans: list, seed: int, scratch: Path,
          failures: Path):
    rng = random.Random(seed)
    data, what = damage(original, rng, spans)
    x = scratch / f"{seed}-{artifacts[case.damaged].name}"
    x.write_bytes(data)
    argv = [str(a).replace("{x}", str(x)) for a in case.command]
    for name, path in artifacts.items():
        argv = [a.replace("{" + name + "}", str(path)) for a in argv]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=case.timeout,
                           stdin=subprocess.DEVNULL, env=env, cwd=scratch)
    except subprocess.TimeoutExpired:
        p = None
    verdict = classify(p)
    if verdict in ("unclean", "crash", "hang"):
        keep = failures / f"{case.name.replace(' ', '_').replace('/', '_')}-{seed}"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(x, keep / x.name)
        (keep / "what.txt").write_text(f"{verdict}: {what}\n{' '.join(argv)}\n\n" +
                                       ("(timed out)" if p is None else f"rc {p.returncode}\n{p.stderr[-4000:]}"))
    x.unlink()
    return verdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="damaged copies per case")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "torchchat-corruption")
    ap.add_argument("--cases", help="comma-separated substrings of case names to run (default: all)")
    ap.add_argument("--python-trials", type=int, help="trials for the Python CLI cases (default: --trials)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    builds = [ROOT / d for d in ("cmake-out", "cmake-out-asan") if (ROOT / d).is_dir()]
    chosen = [c for c in cases(builds) if not args.cases or any(s in c.name for s in args.cases.split(","))]
    needed = {c.damaged for c in chosen} | {n for c in chosen for n in ARTIFACTS if any(f"{{{n}}}" in str(a) for a in c.command)}
    artifacts = build(args.work, needed)
    failures = args.work / "failures"
    scratch = Path(tempfile.mkdtemp(dir=args.work))
    tallies: dict[str, Tally] = {}
    for case in chosen:
        n = args.python_trials if args.python_trials is not None and case.command[0] == sys.executable else args.trials
        original = artifacts[case.damaged].read_bytes()
        spans = structure(case.damaged, artifacts[case.damaged], original)
        t0 = time.perf_counter()
        tally = tallies.setdefault(case.name, Tally())
        with ThreadPoolExecutor(args.jobs) as pool:
            seeds = [args.seed * 1_000_003 + zlib.crc32(case.name.encode()) % 100_000 * 1000 + i for i in range(n)]
            for verdict in pool.map(lambda s: trial(case, artifacts, original, spans, s, scratch, failures), seeds):
                tally.counts[verdict] += 1
        tally.seconds = time.perf_counter() - t0
        print(f"{case.name}: {tally.counts}", file=sys.stderr, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)

    print("| case | trials | ran | detected | unclean | crash | hang | s |\n|---|---|---|---|---|---|---|---|")
    for name, t in tallies.items():
        c = t.counts
        print(f"| {name} | {sum(c.values())} | {c['ran']} | {c['detected']} | {c['unclean']} | {c['crash']} | "
              f"{c['hang']} | {t.seconds:.0f} |")
    bad = sum(t.counts[k] for t in tallies.values() for k in ("unclean", "crash", "hang"))
    if bad:
        print(f"{bad} runs were unclean, crashed or hung: see {failures}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
