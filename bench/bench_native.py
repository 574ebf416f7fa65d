#!/usr/bin/env python3
"""Native benchmark: aoti_run's and et_run's backends vs Python eager vs llama.cpp, side by side in one run.

    python3 bench/bench_native.py [--isa native|avx512|avx2] [--threads 2] [--reps 3] [--1b] [--quant [BF16 Q8_0 Q4_1]]
                                  [--only ENGINE ...] [--plot bench.png] [--results DIR]

On SmolLM2-135M (fp32), measures as llama-bench does: prompt processing of 128 tokens (pp128)
and 128 decode steps from an empty context (tg128, positions 0-127) in tokens/s, with random
prompt tokens and no stop tokens;
plus load time, time to first token, peak RSS and artifact size. Every engine reads the
same bits: the default model's Q4_1 GGUF is dequantized once to an F32 GGUF, which
llama.cpp runs directly and from which we export the AOTI artifacts. With --1b, a second
row set on a random-weight model of Llama 3.2 1B's shape (fp32 and bf16); with --quant, rows for
our quantization schemes beside llama.cpp's BF16, Q8_0 and Q4_1 of the same F32 GGUF (name some to
run only those). Also probes the
machine's memory read bandwidth, the ceiling for decode, and runs llama.cpp again just before and
after each of our rows: a row's ratio to llama.cpp is against those two runs, so both sides of a
ratio ran within a minute of each other.

--isa compares like with like: `native` runs our kernels at the best level this CPU has against
llama.cpp built with -march=native; `avx2` (`avx512`) forces our kernels to that level
(TORCHCHAT_KERNELS) and runs a llama.cpp built for that ISA only, so that an AVX-512 machine
measures what an AVX2-only CPU would run. The default is `native` where the CPU has AVX-512, else
`avx2`.

Prints one markdown table and records the run, with this machine, in bench/results/ (results.py).
Builds what it needs once and caches it in ~/.cache/torchchat-bench: llama.cpp
(bench/build_llama_cpp.sh), the F32 GGUF, the exported artifacts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import cache, partial
from pathlib import Path

import results  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("TORCHCHAT_BENCH_CACHE", Path.home() / ".cache" / "torchchat-bench"))
AOTI_BENCH, AOTI_RUN = ROOT / "cmake-out" / "aoti_bench", ROOT / "cmake-out" / "aoti_run"
ET_BENCH, ET_RUN = ROOT / "cmake-out" / "et_bench", ROOT / "cmake-out" / "et_run"  # ExecuTorch (.pte) rows
N_PROMPT = N_GEN = 128

# --isa: our kernels' level (TORCHCHAT_KERNELS; None = the best this CPU has) and the CPU flags it needs.
# llama.cpp's build of the same name comes from bench/build_llama_cpp.sh.
ISAS = {"native": (None, ()),
        "avx512": ("avx512", ("avx512f", "avx512bw", "avx512vl", "fma", "f16c")),
        "avx2": ("avx2", ("avx2", "fma", "f16c"))}


def default_isa(flags: set[str]) -> str:
    return "native" if set(ISAS["avx512"][1]) <= flags else "avx2"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, env=None, timeout=3600) -> tuple[str, float, float]:
    """(stdout, wall seconds, 0) for a command that must succeed."""
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: {cmd[0]} failed:\n{p.stderr.strip()[-2000:]}")
    return p.stdout, wall, 0.0


def run_rss(cmd, env=None, timeout=3600) -> tuple[str, float, float]:
    """Like run(), with the child's own peak RSS in MB.

    Not rusage's ru_maxrss: Linux folds the RSS of the process that exec'd (here, a fork of this
    Python process, hundreds of MB after loading models) into the child's maximum. The child's
    own VmHWM (its memory's high-water mark since exec) is read from /proc every 20 ms instead."""
    t0 = time.perf_counter()
    out_path = CACHE / "child.out"
    peak_kb = 0
    with open(out_path, "w") as out, open(CACHE / "child.err", "w") as err:
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env={**os.environ, **(env or {})})
        status = Path(f"/proc/{p.pid}/status")
        while p.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            if time.perf_counter() - t0 > timeout:
                p.kill()
            time.sleep(0.02)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: {cmd[0]} failed:\n{(CACHE / 'child.err').read_text()[-2000:]}")
    return out_path.read_text(), wall, peak_kb / 1024


# ---------------------------------------------------------------------------------------------
# Models: an F32 (or BF16) GGUF both sides read, and our exports of it


def requantize_gguf(src: Path, dst: Path, kind: str) -> Path:
    """`src` with every tensor dequantized (as our loader does) and stored as F32 or BF16."""
    import gguf
    import numpy as np

    if dst.is_file():
        return dst
    log(f"== writing {dst.name} ({kind}) from {src.name}")
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_suffix(".tmp")
    w = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF.") or field.name == "general.file_type":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if kind == "F32" else gguf.LlamaFileType.MOSTLY_BF16)
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists dims innermost first
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        if kind == "BF16" and values.ndim > 1:
            w.add_tensor(t.name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(t.name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(dst)
    return dst


def random_1b_gguf(dst: Path, kind: str) -> Path:
    """Llama 3.2 1B's shape (16 layers, dim 2048, GQA 32/8, FFN 8192, vocab 128256, tied), random weights."""
    import gguf
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from tiny_models import add_tiny_vocab

    if dst.is_file():
        return dst
    log(f"== writing {dst.name}: random weights, Llama 3.2 1B shape ({kind})")
    dim, layers, heads, kv, ffn, vocab = 2048, 16, 32, 8, 8192, 128256
    hd = dim // heads
    tmp = dst.with_suffix(".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("random-llama3.2-1b-shape")
    w.add_block_count(layers)
    w.add_context_length(8192)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if kind == "F32" else gguf.LlamaFileType.MOSTLY_BF16)
    add_tiny_vocab(w, vocab)
    rng = np.random.default_rng(0)

    def add(name, rows, cols=None):
        if cols is None:
            w.add_tensor(name, np.ones(rows, dtype=np.float32))
            return
        a = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float32)
        if kind == "BF16":
            w.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.BF16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, a)

    add("token_embd.weight", vocab, dim)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", dim)
        add(f"blk.{i}.attn_q.weight", dim, dim)
        add(f"blk.{i}.attn_k.weight", kv * hd, dim)
        add(f"blk.{i}.attn_v.weight", kv * hd, dim)
        add(f"blk.{i}.attn_output.weight", dim, dim)
        add(f"blk.{i}.ffn_norm.weight", dim)
        add(f"blk.{i}.ffn_gate.weight", ffn, dim)
        add(f"blk.{i}.ffn_up.weight", ffn, dim)
        add(f"blk.{i}.ffn_down.weight", dim, ffn)
    add("output_norm.weight", dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(dst)
    return dst


def export(gguf_path: Path, dtype: str, context: int, suffix: str, quantize: str | None = None,
           tag: str = "", target: str = "native") -> Path:
    """An exported artifact of `gguf_path` (cached under a name that says how it was made, and
    with a hash of the code that made it: artifacts of older code are not reused)."""
    target_flags = target_cpu_flags(target)
    if target_flags:
        tag += f"-{target}"
    out = CACHE / f"{gguf_path.stem}-{dtype}{tag}-{source_tag()}-ctx{context}.{suffix}"
    if not out.is_file():
        flag = {"so": "--output-dso-path", "pt2": "--output-aoti-package-path", "pte": "--output-pte-path"}[suffix]
        log(f"== exporting {out.name} ({'ExecuTorch' if suffix == 'pte' else 'AOT Inductor'}; minutes)")
        quant = ["--quantize", quantize] if quantize else []
        subprocess.run([sys.executable, ROOT / "torchchat.py", "export", "--gguf-path", gguf_path, "--dtype", dtype,
                        "--max-seq-length", str(context), *quant, *target_flags, flag, out], check=True, cwd=ROOT)
    return out


@cache
def target_cpu_flags(target: str) -> tuple[str, ...]:
    """`--target-cpu TARGET` for export where the export command has that option, so that
    Inductor's own generated code targets the ISA too, not only our kernels; () otherwise."""
    if target == "native":
        return ()
    help_text = subprocess.run([sys.executable, ROOT / "torchchat.py", "export", "--help"], capture_output=True,
                               text=True, cwd=ROOT).stdout
    if "--target-cpu" in help_text:
        return ("--target-cpu", target)
    log(f"note: export has no --target-cpu: Inductor's code in the artifacts targets this CPU, our kernels {target}")
    return ()


def llama_quantize(llama_dir: Path, src: Path, kind: str) -> Path:
    """`src` (F32 GGUF) quantized by llama.cpp's own tool to `kind` (Q8_0, Q4_1, ...)."""
    dst = CACHE / f"{src.stem.removesuffix('-f32')}-{kind.lower()}.gguf"
    if not dst.is_file():
        log(f"== llama-quantize {src.name} -> {dst.name}")
        tmp = dst.with_suffix(".tmp")
        run([llama_dir / "bin" / "llama-quantize", src, tmp, kind])
        tmp.rename(dst)
    return dst


# --quant: our schemes beside llama.cpp at equal bits (docs/quantization.md). llama.cpp's Q4_1 keeps
# the tied output matrix at Q8_0, our linear:int4 its output layer at int8 unless output int4 is
# asked. AOTI, ExecuTorch and eager run int8/int4 with our kernels (kernels/), ExecuTorch a8w4dq
# with XNNPACK's qd8 kernels.
QUANT_GROUPS = [
    ("SmolLM2-135M bf16", "BF16", [("AOTI .so bf16", "so", '{"precision": {"dtype": "bf16"}}', "-bf16")]),
    ("SmolLM2-135M 8-bit", "Q8_0", [("AOTI .so linear:int8", "so", '{"linear:int8": {"groupsize": 0}}', "-int8"),
                                    ("AOTI .so linear:int8 g32", "so", '{"linear:int8": {"groupsize": 32}}', "-int8g32"),
                                    ("AOTI .so linear:int8 + embedding:int8", "so",
                                     '{"linear:int8": {"groupsize": 0}, "embedding:int8": {"groupsize": 0}}',
                                     "-int8-emb8"),
                                    ("AOTI .so linear:int8, int8 activations", "so",
                                     '{"linear:int8": {"groupsize": 0, "activations": "int8"}}', "-int8-a8"),
                                    ("AOTI .so linear:int8 g32, int8 activations", "so",
                                     '{"linear:int8": {"groupsize": 32, "activations": "int8"}}', "-int8g32-a8"),
                                    ("ET .pte linear:int8", "pte", '{"linear:int8": {"groupsize": 0}}', "-int8"),
                                    ("ET .pte linear:int8, int8 activations", "pte",
                                     '{"linear:int8": {"groupsize": 0, "activations": "int8"}}', "-int8-a8")]),
    ("SmolLM2-135M 4-bit", "Q4_1", [("AOTI .so linear:int4 g32", "so", '{"linear:int4": {"groupsize": 32}}', "-int4g32"),
                                    ("AOTI .so linear:int4 g32, output int4", "so",
                                     '{"linear:int4": {"groupsize": 32, "output": "int4"}}', "-int4g32-out4"),
                                    ("AOTI .so linear:int4 g32, int8 activations", "so",
                                     '{"linear:int4": {"groupsize": 32, "activations": "int8"}}', "-int4g32-a8"),
                                    ("AOTI .so linear:int4 g32, output int4, int8 activations", "so",
                                     '{"linear:int4": {"groupsize": 32, "output": "int4", "activations": "int8"}}',
                                     "-int4g32-out4-a8"),
                                    ("AOTI .so linear:int4 g32 + embedding:int4 g32", "so",
                                     '{"linear:int4": {"groupsize": 32}, "embedding:int4": {"groupsize": 32}}',
                                     "-int4g32-emb4"),
                                    ("ET .pte linear:int4 g32", "pte", '{"linear:int4": {"groupsize": 32}}', "-int4g32"),
                                    ("ET .pte linear:a8w4dq g32", "pte", '{"linear:a8w4dq": {"groupsize": 32}}',
                                     "-a8w4dq32")]),
]


def source_tag() -> str:
    """A short hash of the code that decides what an export holds (model, export, quantization, kernels)."""
    import hashlib

    h = hashlib.sha256()
    torchchat = ROOT / "torchchat"
    for path in sorted([*(ROOT / "kernels").iterdir(), *(torchchat / "export").glob("*.py"), *(torchchat / f for f in (
            "quantize.py", "kernels.py", "model.py", "mapped_constants.py", "metadata.py"))]):
        h.update(path.read_bytes())
    return h.hexdigest()[:8]


# ---------------------------------------------------------------------------------------------
# Engines; each returns a dict of figures


def bench_aoti(artifact: Path, threads: int, reps: int, tokenizer: Path | None,
               bench_bin: Path = AOTI_BENCH, run_bin: Path = AOTI_RUN) -> dict:
    """aoti_bench (or et_bench, with et_run) on one artifact."""
    ensure_built(bench_bin)
    env = {"OMP_NUM_THREADS": str(threads)}
    out, _, rss = run_rss([bench_bin, artifact, "-p", N_PROMPT, "-g", N_GEN, "-r", reps], env=env)
    r = json.loads(out)
    res = dict(load=r["load_s"], ttft=r["ttft_s"], pp=r["pp_tps"], tg=r["tg_tps"], rss=rss,
               size=artifact.stat().st_size / 1e6)
    if tokenizer is not None:  # the whole runner, process start to first token (short prompt)
        prompt = "Once upon a time"
        cmd = [run_bin, artifact, "-z", tokenizer, "-i", prompt, "-t", "0", "-n", "6"]
        res["first_token_process"] = min(first_token_seconds(cmd, env, prompt) for _ in range(3))
    return res


def first_token_seconds(cmd, env: dict, prompt: str) -> float:
    """Seconds from starting the runner to its first generated text on stdout: the runner echoes
    the prompt together with the first token's text."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, **env})
    seen = b""
    while len(seen) <= len(prompt.encode()):
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    seconds = time.perf_counter() - t0
    _, err = p.communicate(timeout=600)
    if p.returncode != 0 or len(seen) <= len(prompt.encode()):
        raise SystemExit(f"error: {cmd[0]} gave no token:\n{err.decode(errors='replace').strip()[-2000:]}")
    return seconds


def bench_eager(gguf_path: Path, dtype: str, threads: int, reps: int, quantize: str | None = None) -> dict:
    quant = ["--quantize", quantize] if quantize else []
    out, _, rss = run_rss([sys.executable, __file__, "--worker-eager", gguf_path, "--dtype", dtype,
                           "--threads", threads, "--reps", reps, *quant])
    r = json.loads(out.strip().splitlines()[-1])
    return dict(r, rss=rss, size=None)


def worker_eager(gguf_path: str, dtype: str, threads: int, reps: int, quantize: str | None) -> None:
    from argparse import Namespace

    import torch

    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(Namespace(model=None, gguf_path=gguf_path, checkpoint_path=None, params_path=None,
                                  tokenizer_path=None, dtype=dtype, max_seq_length=None, quantize=quantize))
    decoder = EagerDecoder(loaded.model, N_PROMPT + N_GEN, kernels=True)  # as generate and chat run it
    load = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, loaded.info.vocab_size, (1, N_PROMPT), generator=gen)
    pp, tg, ttft = [], [], 0.0
    with torch.no_grad():
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            token = decoder(prompt, torch.arange(N_PROMPT))[0, -1].argmax()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(N_GEN):
                token = decoder(token.view(1, 1), torch.tensor([i]))[0, -1].argmax()  # from position 0, as tg128
            decode = time.perf_counter() - t0
            if rep == 0:
                ttft = prefill
            else:
                pp.append(N_PROMPT / prefill)
                tg.append(N_GEN / decode)
    print(json.dumps(dict(load=load, ttft=ttft, pp=pp, tg=tg)))


def llama_bench_samples(llama_dir: Path, gguf_path: Path, threads: int, reps: int, pp_extra: tuple = (),
                        runner=run) -> dict:
    """llama-bench's pp and tg samples (tok/s) as two runs, so that pp can take its own flags
    (`pp_extra`), and the larger peak RSS of the two when `runner` is run_rss."""
    bench = llama_dir / "bin" / "llama-bench"
    res = dict(rss=0.0)
    for key, p, n, extra in (("pp", N_PROMPT, 0, pp_extra), ("tg", 0, N_GEN, ())):
        out, _, rss = runner([bench, "-m", gguf_path, "-p", p, "-n", n, "-t", threads, "-r", reps, *extra,
                              "-o", "json"])
        res[key] = [float(x) for x in json.loads(out)[0]["samples_ts"]]
        res["rss"] = max(res["rss"], rss)
    return res


def bench_llama_cpp(llama_dir: Path, gguf_path: Path, threads: int, reps: int, pp_extra: tuple = ()) -> dict:
    """llama.cpp's row: pp and tg samples, peak RSS, file size, and load + first prefill."""
    res = dict(llama_bench_samples(llama_dir, gguf_path, threads, reps, pp_extra, run_rss),
               size=gguf_path.stat().st_size / 1e6)
    # Load + first token: one cold-ish run of pp128 only, no warm-up, whole process.
    _, wall, _ = run([llama_dir / "bin" / "llama-bench", "-m", gguf_path, "-p", N_PROMPT, "-n", 0, "-t", threads,
                      "-r", 1, "--no-warmup", *pp_extra, "-o", "json"])
    res["load_plus_pp"] = wall
    return res


def llama_cpp_beside(llama_dir: Path, gguf_path: Path, threads: int, reps: int, pp_extra: tuple = ()) -> dict:
    """llama.cpp's pp and tg medians, run just before or after one of our rows: its ratio to
    llama.cpp is taken against these, not against the group's llama.cpp row of minutes earlier
    (on these machines decode moves by ±20-30 % with the minute, both engines alike)."""
    res = llama_bench_samples(llama_dir, gguf_path, threads, reps, pp_extra)
    return dict(pp=med(res["pp"]), tg=med(res["tg"]))


def fma_peak(threads: int, isa: str) -> tuple[float, int]:
    """This machine's fp32 FMA peak in GMAC/s on `threads` threads (aoti_bench --compute), at the
    vector width our kernels use under `isa`, and that width in bits."""
    peak = json.loads(run([AOTI_BENCH, "--compute", "-t", threads])[0])
    if isa == "avx2" or not peak["fma512_gmac_per_s"]:
        return peak["fma256_gmac_per_s"], 256
    return peak["fma512_gmac_per_s"], 512


def bandwidth(threads: int) -> float:
    out, _, _ = run([AOTI_BENCH, "--bandwidth", "-t", threads])
    return json.loads(out)["read_gb_per_s"]


def probed(threads: int, bench, *args, beside=None) -> dict:
    """bench(*args) with the read bandwidth probed just before and after it, as r["bw"]: this
    machine's bandwidth moves between regimes (≈ 50 and ≈ 78 GB/s seen minutes apart), so only a
    probe beside a row says how close that row's decode came to the memory. With `beside`
    (llama.cpp at the group's bits), that runs right before and after the row too, as r["beside"]."""
    before = bandwidth(threads)
    ref_before = beside() if beside else None
    r = bench(*args)
    if beside:
        r["beside"] = (ref_before, beside())
    r["bw"] = (before, bandwidth(threads))
    return r


# ---------------------------------------------------------------------------------------------
# Table


def med(v):
    return statistics.median(v) if v else float("nan")


def fmt(x, spec=".1f"):
    return "—" if x is None or x != x else format(x, spec)


COLUMNS = ["model", "engine", "file MB", "load s", "load+pp128 s", "pp128 tok/s", "tg128 tok/s", "probe GB/s",
           "tg ceiling tok/s", "tg %", "peak RSS MB", "llama.cpp beside pp128 tok/s", "llama.cpp beside tg128 tok/s",
           "pp × llama.cpp", "tg × llama.cpp", "process to first token s"]

NOTES = [
    f"pp{N_PROMPT} / tg{N_GEN} as llama-bench: random prompt tokens, no stop; tg from an empty context "
    f"(positions 0-{N_GEN - 1}); median of the runs after a warm-up.",
    "probe GB/s: read bandwidth probed just before / after the row; tg ceiling = the higher of the two / the "
    "group's GGUF weight bytes; tg % = tg128 / ceiling.",
    f"load+pp{N_PROMPT}: AOTI and eager load + cold first prefill in-process; llama.cpp a whole llama-bench "
    f"process with one pp{N_PROMPT} and no warm-up.",
    "llama.cpp beside: its pp / tg medians run just before and just after the row; the row's × llama.cpp is "
    "against their mean (the group's llama.cpp row for that row itself).",
    "process to first token: the runner from process start to its first generated token (short prompt, "
    "page cache warm).",
]


def rnd(x, digits: int = 1):
    """x rounded for the table (None and NaN stay None)."""
    if x is None or x != x:
        return None
    return round(x) if digits == 0 else round(x, digits)


def table_rows(rows, weight_mb: dict) -> list[dict]:
    """One dict per engine row, keyed by COLUMNS."""
    out = []
    for model, engines in rows:
        ref = next((r for n, r in engines.items() if n.startswith("llama.cpp")), None)
        for name, r in engines.items():
            pp, tg = med(r.get("pp", [])), med(r.get("tg", []))
            load = r.get("load")
            first = r.get("load_plus_pp") or ((load or 0) + r["ttft"] if "ttft" in r else None)
            ceiling = max(r["bw"]) * 1e3 / weight_mb[model]
            beside_pp = beside_tg = None
            if "beside" in r:
                a, b = r["beside"]
                beside_pp, beside_tg = [rnd(a["pp"], 0), rnd(b["pp"], 0)], [rnd(a["tg"]), rnd(b["tg"])]
                ref_pp, ref_tg = (a["pp"] + b["pp"]) / 2, (a["tg"] + b["tg"]) / 2
            else:
                ref_pp, ref_tg = (med(ref["pp"]), med(ref["tg"])) if ref else (None, None)
            out.append({
                "model": model, "engine": name, "file MB": rnd(r.get("size"), 0), "load s": rnd(load, 2),
                "load+pp128 s": rnd(first, 2), "pp128 tok/s": rnd(pp), "tg128 tok/s": rnd(tg),
                "probe GB/s": [rnd(r["bw"][0]), rnd(r["bw"][1])], "tg ceiling tok/s": rnd(ceiling, 0),
                "tg %": rnd(100 * tg / ceiling, 0), "peak RSS MB": rnd(r.get("rss"), 0),
                "llama.cpp beside pp128 tok/s": beside_pp, "llama.cpp beside tg128 tok/s": beside_tg,
                "pp × llama.cpp": rnd(pp / ref_pp, 2) if ref_pp else None,
                "tg × llama.cpp": rnd(tg / ref_tg, 2) if ref_tg else None,
                "process to first token s": rnd(r.get("first_token_process"), 2),
            })
    return out


def plot(rows, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        log("no plot: matplotlib is not installed (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "pp", f"prompt processing pp{N_PROMPT}"), (axes[1], "tg", f"decode tg{N_GEN}")):
        labels, values = [], []
        for model, engines in rows:
            for name, r in engines.items():
                labels.append(f"{model}\n{name}")
                values.append(med(r.get(key, [])))
        ax.barh(labels, values)
        ax.set_title(f"{title} (tok/s)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    log(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags = results.cpu_flags()
    p.add_argument("--isa", choices=list(ISAS), default=default_isa(flags),
                   help="our kernels' level and llama.cpp's build (default here: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--context", type=int, default=N_PROMPT + N_GEN,
                   help="exported context; default pp+tg as llama-bench allocates (attention reads the whole "
                        "static cache, so a larger context costs every token; one more row shows the export default)")
    p.add_argument("--1b", dest="one_b", nargs="*", choices=["fp32", "bf16"], default=None,
                   help="add Llama 3.2 1B-shaped rows (default both dtypes; slow; fp32 export needs ~20 GB RAM)")
    p.add_argument("--quant", nargs="*", choices=[kind for _, kind, _ in QUANT_GROUPS], default=None,
                   help="add rows for --quantize schemes beside llama.cpp BF16 / Q8_0 / Q4_1 (default all three; "
                        "several exports: slow once)")
    p.add_argument("--only", nargs="+", metavar="ENGINE",
                   help="run only these rows of ours, named as in the table's engine column (e.g. "
                        "\"AOTI .so linear:int8\"); llama.cpp's rows of their groups run too")
    p.add_argument("--plot", help="also write a PNG bar chart here")
    results.add_argument(p)
    p.add_argument("--worker-eager", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--quantize", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker_eager:
        return worker_eager(a.worker_eager, a.dtype, a.threads, a.reps, a.quantize)

    kernels, needs = ISAS[a.isa]
    missing = [f for f in needs if f not in flags]
    if missing:
        raise SystemExit(f"error: --isa {a.isa}: this CPU lacks {' '.join(missing)}")
    if kernels:  # inherited by every runner, export and eager worker this run starts
        os.environ["TORCHCHAT_KERNELS"] = kernels

    def wanted(engine: str) -> bool:
        return a.only is None or engine in a.only

    CACHE.mkdir(parents=True, exist_ok=True)
    ensure_built(AOTI_BENCH)  # also the bandwidth probe
    llama_dir = Path(subprocess.run([ROOT / "bench" / "build_llama_cpp.sh", a.isa], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
    from torchchat import registry

    folder = Path(registry.where("smollm2-135m"))
    smol = requantize_gguf(folder / "model.gguf", CACHE / "smollm2-135m-f32.gguf", "F32")
    jobs = [("SmolLM2-135M fp32", smol, "fp32", folder / "tokenizer.json")]
    if a.one_b is not None:
        for dtype in a.one_b or ["fp32", "bf16"]:
            kind = "F32" if dtype == "fp32" else "BF16"
            jobs.append((f"Llama-3.2-1B-shape {dtype}", random_1b_gguf(CACHE / f"random-1b-{kind.lower()}.gguf", kind),
                         dtype, None))
    default_ctx = 2048  # torchchat/export's DEFAULT_MAX_SEQ (min(model context, 2048))
    target = partial(export, target=a.isa)

    measure = partial(probed, a.threads)
    rows, weight_mb = [], {}
    for i, (name, g, dtype, tok) in enumerate(jobs):
        # Each row: (engine, what it runs, runner binaries or None for eager). The 1B rows show growth
        # with size: one .so each (every compile of a 1B model takes minutes and much memory); the .pt2,
        # the default context and ExecuTorch (XNNPACK lowering: minutes) run on the default model only.
        ours = [(f"AOTI .so, ctx {a.context}", lambda: target(g, dtype, a.context, "so"), tok, AOTI_BENCH, AOTI_RUN)]
        if i == 0:
            ours.append((f"AOTI .pt2, ctx {a.context}", lambda: target(g, dtype, a.context, "pt2"), tok,
                         AOTI_BENCH, AOTI_RUN))
            if a.context != default_ctx:
                ours.append((f"AOTI .so, ctx {default_ctx}", lambda: target(g, dtype, default_ctx, "so"), None,
                             AOTI_BENCH, AOTI_RUN))
            ours.append((f"ET .pte (XNNPACK), ctx {a.context}", lambda: target(g, dtype, a.context, "pte"), tok,
                         ET_BENCH, ET_RUN))
        eager = f"Python eager, ctx {N_PROMPT + N_GEN}"
        ours = [row for row in ours if wanted(row[0])]
        if not ours and not wanted(eager):
            continue
        log(f"== {name}: llama.cpp, " + ", ".join(row[0] for row in ours))
        engines = {"llama.cpp": measure(bench_llama_cpp, llama_dir, g, a.threads, a.reps)}
        paired = partial(measure, beside=partial(llama_cpp_beside, llama_dir, g, a.threads, a.reps))
        for engine, artifact, tokenizer, bench_bin, run_bin in ours:
            engines[engine] = paired(bench_aoti, artifact(), a.threads, a.reps, tokenizer, bench_bin, run_bin)
        if wanted(eager):
            engines[eager] = paired(bench_eager, g, dtype, a.threads, a.reps)
        rows.append((name, engines))
        weight_mb[name] = gguf_weight_mb(g)
    if a.quant is not None:
        for group, kind, schemes in QUANT_GROUPS:
            if a.quant and kind not in a.quant:
                continue
            # Each scheme's AOTI row has an eager twin: the same scheme in eager PyTorch, with the same kernels.
            ours = [(name, f"Python eager {name.split(' ', 2)[2]}" if suffix == "so" else None, suffix, spec, tag)
                    for name, suffix, spec, tag in schemes]
            ours = [row for row in ours if wanted(row[0]) or (row[1] and wanted(row[1]))]
            if not ours:
                continue
            g = llama_quantize(llama_dir, smol, kind)
            log(f"== {group}: llama.cpp {kind}, " + ", ".join(row[0] for row in ours))
            # llama.cpp with repacked weights (its fastest CPU path, the default). On some AVX-512
            # CPUs (seen on an Intel one with AMX) this build's prompt processing on repacked
            # weights segfaults, also on the original Q4_1 GGUF: then pp runs with --repack 0.
            pp_extra = ()
            try:
                engines = {f"llama.cpp {kind}": measure(bench_llama_cpp, llama_dir, g, a.threads, a.reps)}
            except SystemExit as e:
                log(f"llama.cpp {kind} with repacked weights failed ({str(e).splitlines()[0]}): pp with --repack 0")
                pp_extra = ("--repack", "0")
                engines = {f"llama.cpp {kind} (pp: --repack 0)": measure(bench_llama_cpp, llama_dir, g, a.threads,
                                                                         a.reps, pp_extra)}
            paired = partial(measure, beside=partial(llama_cpp_beside, llama_dir, g, a.threads, a.reps, pp_extra))
            for name, eager, suffix, spec, tag in ours:
                if wanted(name):
                    bench_bin, run_bin = (ET_BENCH, ET_RUN) if suffix == "pte" else (AOTI_BENCH, AOTI_RUN)
                    engines[name] = paired(bench_aoti, target(smol, "fp32", a.context, suffix, spec, tag), a.threads,
                                           a.reps, jobs[0][3], bench_bin, run_bin)
                if eager and wanted(eager):
                    engines[eager] = paired(bench_eager, smol, "fp32", a.threads, a.reps, spec)
            rows.append((group, engines))
            weight_mb[group] = gguf_weight_mb(g)
    if not rows:
        raise SystemExit(f"error: --only {' '.join(a.only)}: no such row (names as in the table's engine column)")
    peak, width = fma_peak(a.threads, a.isa)
    settings = {"isa": a.isa, "our kernels": kernels or "best level of this CPU",
                "llama.cpp": llama_dir.name,
                "export target": "native" if not target_cpu_flags(a.isa) else a.isa,
                "threads": a.threads, "reps": a.reps, "context": a.context,
                "fp32 FMA peak GMAC/s": f"{peak:.0f} ({width}-bit, the prompts' arithmetic ceiling)"}
    recorded = results.record("bench_native", COLUMNS, table_rows(rows, weight_mb), settings=settings, notes=NOTES,
                              variant=None if a.isa == "native" else a.isa, directory=a.results)
    print(results.render(recorded))
    log(f"recorded in {a.results / 'bench_native.jsonl'}")
    if a.plot:
        plot(rows, Path(a.plot))


def ensure_built(binary: Path) -> None:
    """Build the runner target that provides `binary` (aoti_bench, et_bench) if it is missing."""
    if not binary.is_file():
        subprocess.run([ROOT / "scripts" / "build_native.sh", "et" if binary == ET_BENCH else "aoti"], check=True)


def gguf_weight_mb(path: Path) -> float:
    """Bytes of weights one decode step reads (every tensor; the tied table once, as the output)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors) / 1e6


if __name__ == "__main__":
    main()
