"""Export with AOT Inductor: `torchchat.py export MODEL --output-dso-path m.so | --output-aoti-package-path m.pt2`
(and with ExecuTorch: `--output-pte-path m.pte`, torchchat/et.py, from the same model).

One `torch.export` of torchchat.model.Transformer, with the KV cache inside (its buffers are
mutated in place by the graph) and a dynamic sequence length, so one artifact serves both
prefill (T prompt tokens) and decode (T = 1). AOT Inductor gets the 4-input form, with two
more dynamic sizes: how many cache positions attention reads (the filled ones) and how many
positions get logits (the runner wants the last); ExecuTorch the same without the first
(attention over the whole cache; kv_len is None). Over an fp32 or bf16 cache, attention is our
kernel in both (cache_attention below), which reads up to each token's position whatever kv_len
is; fp16 caches keep ATen's SDPA, for which kv_len matters. Inductor then compiles it ahead of time:
- .so: `torch._inductor.aot_compile`, a bare shared library (AOTIModelContainerRunnerCpu);
- .pt2: `torch._inductor.aoti_compile_and_package`, a zip package (AOTIModelPackageLoader).
The model's metadata (torchchat/metadata.py) goes inside either file. Files are written
to a temporary name in the output folder and renamed at the end, so the output path
never holds a half-written artifact (failure, Ctrl-C).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from torchchat import metadata, target_cpu
from torchchat.errors import UserError
from torchchat.loader import ModelInfo
from torchchat.model import Transformer, length_tensor

DEFAULT_MAX_SEQ = 2048

# Inductor settings for CPU inference (measured on SmolLM2-135M, 2 cores: 19 -> 53 tok/s decode).
# Freezing turns the weights into constants, which lets max-autotune choose inductor's own
# C++ GEMM/GEMV templates (prepacked weights) where they beat ATen; ATen's batch-1 matmul
# streams weights at a third of the memory bandwidth here.
INDUCTOR_CONFIGS = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    # Autotuning prints a table per GEMM; our phase messages are the progress report.
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str, heartbeat: float = 0.0) -> Iterator[None]:
    """Print `name...`, then its time; with `heartbeat`, also the elapsed time every so often."""
    log(f"{name}...")
    t0 = time.perf_counter()
    done = threading.Event()
    if heartbeat:
        def beat():
            while not done.wait(heartbeat):
                log(f"  ... still working: {time.perf_counter() - t0:.0f} s")
        threading.Thread(target=beat, daemon=True).start()
    try:
        yield
    finally:
        done.set()
    log(f"{name}: done in {time.perf_counter() - t0:.1f} s")


def export_program(model: Transformer, max_seq_len: int, aoti: bool = False) -> torch.export.ExportedProgram:
    """torch.export the model with a static KV cache of `max_seq_len` and T in [1, max_seq_len].

    aoti: the 4-input form (tokens, input_pos, kv_len, n_logits; Transformer.forward), whose
    attention reads only the filled cache positions and whose output layer runs only where
    logits are wanted. Otherwise the form ExecuTorch lowers: (tokens, input_pos, None, n_logits),
    attention over the whole cache (as ExecuTorch programs always had) and logits where wanted
    (a prompt's last position: its output layer need not run for every token).
    """
    seq = torch.export.Dim("seq", min=1, max=max_seq_len)
    if aoti:
        # Three distinct example sizes >= 2 (equal ones would be unified into one symbol): 3 tokens at
        # positions 2..4, so kv_len 5 >= T as in every real call, and logits for the last 2. The
        # graph asserts no relation between them: kv_len only has to cover the last position, and
        # n_logits <= T is the caller's promise (as T <= max_seq_len - start is).
        kv_len = torch.export.Dim("kv_len", min=1, max=max_seq_len)
        n_logits = torch.export.Dim("n_logits", min=1, max=max_seq_len)
        example = (torch.zeros(1, 3, dtype=torch.long), torch.arange(2, 5, dtype=torch.long), length_tensor(5),
                   length_tensor(2))
        shapes = ({1: seq}, {0: seq}, {0: kv_len}, {0: n_logits})
        # Attention slices the cache to kv_len positions, a view that is contiguous only when it is
        # the whole cache; the exporter decides that once, as a guard kv_len != cache size, and then
        # refuses its own guard if the range allows the equality. One spare cache position (never
        # written, always masked) puts every kv_len below the cache size.
        spare = 1
    else:
        # 3 tokens, logits for the last 2: any sizes >= 2 keep the dimensions symbolic (0/1 would
        # specialise them), distinct ones keep them apart. kv_len stays None (whole-cache attention).
        n_logits = torch.export.Dim("n_logits", min=1, max=max_seq_len)
        example = (torch.zeros(1, 3, dtype=torch.long), torch.arange(3, dtype=torch.long), None, length_tensor(2))
        shapes, spare = ({1: seq}, {0: seq}, None, {0: n_logits}), 0
    model.setup_caches(max_seq_len, spare=spare)
    with torch.no_grad(), float_kernels(model) if aoti else contextlib.nullcontext(), cache_attention(model):
        return torch.export.export(model, example, dynamic_shapes=shapes, strict=False)


class TiedOutput(nn.Module):
    """The output layer through our row-major float kernel (kernels/), reading the embedding table
    it is tied to: a packed copy would add the table's size to the file (113 MB of SmolLM2's
    538 MB in fp32)."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.float_weight_linear(x, self.weight)


class PanelLinear(nn.Module):
    """A float linear through our panel kernel (kernels/), its weight packed in column panels."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        from torchchat import kernels

        self.register_buffer("panels", kernels.pack_panels(weight))
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchchat.panel_weight_linear(x, self.panels, self.out_features)


# Whether AOTI exports run fp32/bf16 linears on our kernels (float_kernels) or on inductor's GEMM templates.
FLOAT_KERNELS = True


@contextlib.contextmanager
def float_kernels(model: Transformer) -> Iterator[None]:
    """For AOT Inductor: while exporting, the fp32/bf16 linears run our kernels (kernels/).

    Against inductor's C++ GEMM templates, side by side (SmolLM2, 2 threads; bench/README.md):
    fp32 prefill 2.4x, decode the same or better; bf16 prefill 2.7x, decode 1.7-2x. Each layer's
    wq/wk/wv and w1/w3 become one matrix (one call instead of three and two; every output is
    computed as before). The output layer tied to the embedding table reads the table
    (TiedOutput); the other linears read weights packed in column panels (PanelLinear)."""
    from torchchat.model import unfused_projections

    def is_float(m) -> bool:
        return type(m) is nn.Linear and m.bias is None and m.weight.dtype in (torch.float32, torch.bfloat16)

    swaps = []  # (parent, name, original, replacement), undone in reverse order

    def swap(parent: nn.Module, name: str, replacement) -> None:
        swaps.append((parent, name, getattr(parent, name)))
        setattr(parent, name, replacement)

    if FLOAT_KERNELS:
        from torchchat import kernels

        kernels.load()
        tied = model.output if (isinstance(model.tok_embeddings, nn.Embedding)
                                and model.output.weight is model.tok_embeddings.weight) else None
        for m, name, parts in unfused_projections(model):
            if all(is_float(getattr(m, part)) for part in parts):
                swap(m, name, PanelLinear(torch.cat([getattr(m, part).weight.detach() for part in parts])))
                for part in parts:
                    swap(m, part, None)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if is_float(child):
                    swap(parent, name, TiedOutput(child.weight) if child is tied else PanelLinear(child.weight))
    try:
        yield
    finally:
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)


# Whether exports run attention on our kernel (cache_attention) or on ATen's SDPA.
ATTENTION_KERNEL = True


@contextlib.contextmanager
def cache_attention(model: Transformer) -> Iterator[None]:
    """While exporting, attention runs our kernel (kernels/attention.h) where the cache is fp32 or bf16.

    Against ATen's CPU SDPA with the model's mask, per layer of SmolLM2 (9 query heads on 3 KV heads,
    2 threads; bench/README.md): decode 3.4-4.7x faster at 128-1900 positions, a prompt's attention
    2.7-3.1x. ATen reads each KV head once per query head and builds and reads a mask; the kernel
    reads a head's rows once for its query heads and only up to each token's position. A bf16
    cache is read as bf16 and computed in fp32 (SDPA took 56 us a layer of bf16 decode, a quarter
    of the step). fp16 caches keep SDPA."""
    from torchchat.model import Attention

    layers = [m for m in model.modules() if isinstance(m, Attention)
              and m.kv_cache is not None and m.kv_cache.k.dtype in (torch.float32, torch.bfloat16)]
    if ATTENTION_KERNEL and layers:
        from torchchat import kernels

        kernels.load()
        for m in layers:
            m.cache_attention = torch.ops.torchchat.cache_attention
    try:
        yield
    finally:
        for m in layers:
            m.cache_attention = None


@contextlib.contextmanager
def staged_output(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary file path in `path`'s folder; renamed to `path` only if the block succeeds."""
    path = path.resolve()
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file path")
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmpdir / f"model{suffix}"
        yield staged
        if not staged.is_file():
            raise UserError(f"the compiler did not produce {staged.name}")
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def inductor_configs(ep: torch.export.ExportedProgram) -> dict:
    """INDUCTOR_CONFIGS, with inductor's C++ GEMM templates as the only choice for fp32/bf16 GEMMs,
    and the C entry points of our kernels when the graph calls them.

    (Since float_kernels, an fp32/bf16 transformer's linears all run our kernels, so no GEMM is
    left to autotune; the history below is why the templates were chosen before that.)

    One artifact serves prefill and decode, so each GEMM is autotuned once, at the example
    size (T = 2); there oneDNN wins some GEMMs that then run decode (T = 1) slower than the
    C++ template. Measured on SmolLM2-135M, 2 threads, side by side: templates only, decode
    40.5 vs 34 tok/s and 128-token prefill 415 vs 540 tok/s. Decode is what a chat feels, so
    fp32 takes the templates. So does bf16: the same speed as with oneDNN among the choices
    (SmolLM2, AMD AVX-512, alternated twice: pp128 454-494 vs 472-492 tok/s, tg 59-64 vs 56-60),
    and its weights become plain tensors we can map at load (oneDNN's packed ones are opaque):
    load 0.006 vs 0.15-0.62 s, peak RSS 428 vs 754 MB. fp16 keeps ATen: not measured here.
    """
    from torchchat import kernels

    configs = dict(INDUCTOR_CONFIGS)
    floats = {t.dtype for t in (*ep.state_dict.values(), *ep.constants.values())
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float16}
    if floats <= {torch.float32, torch.bfloat16}:  # (fp16 tensors of int4 scales are not activations)
        configs["max_autotune_gemm_backends"] = "CPP"
    ours = {n.target for n in ep.graph.nodes if n.op == "call_function"
            and getattr(n.target, "namespace", None) == "torchchat"}
    if ours:
        # Called directly from the model's C++ (no dispatcher): kernels/torch_ops.cpp.
        configs["aot_inductor.custom_ops_to_c_shims"] = kernels.aoti_c_shims()
    return configs


def compile_configs(ep: torch.export.ExportedProgram) -> tuple[dict, bool]:
    """(inductor configs, whether we store the constants ourselves: torchchat/mapped_constants.py).

    We do where every constant is a plain tensor: with ATen among the GEMM choices (fp16)
    oneDNN may keep packed weights in its own opaque format, so those keep AOTI's own storage,
    as does a configuration asking for AOTI's mmap of weights appended to the library."""
    configs = inductor_configs(ep)
    mapped = configs["max_autotune_gemm_backends"] == "CPP" and not configs.get("aot_inductor.force_mmap_weights")
    if mapped:
        configs["aot_inductor.package_constants_in_so"] = False
    return configs, mapped


def checked(constants: list) -> list:
    from torchchat import mapped_constants

    problem = mapped_constants.can_map(constants)
    if problem:
        raise UserError(f"cannot store the compiled model's constants: {problem}")
    return constants


def compile_so(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    from torchchat import mapped_constants

    with staged_output(out, ".so") as staged:
        options = {"aot_inductor.output_path": str(staged)}
        configs, mapped = compile_configs(ep)
        with mapped_constants.capture() as constants, torch.no_grad(), torch._inductor.config.patch(configs):
            produced = torch._inductor.aot_compile(ep.module(), ep.example_inputs[0], options=options)
        if Path(produced) != staged:
            shutil.move(produced, staged)
        metadata.insert_so_metadata(staged, meta_json)
        if mapped:
            mapped_constants.append_to_so(staged, checked(constants))


def compile_pt2(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    from torchchat import mapped_constants

    with staged_output(out, ".pt2") as staged:
        options = {"aot_inductor.metadata": {metadata.PT2_KEY: meta_json}}
        configs, mapped = compile_configs(ep)
        package = staged.with_name("inductor.pt2") if mapped else staged
        with mapped_constants.capture() as constants, torch.no_grad(), torch._inductor.config.patch(configs):
            torch._inductor.aoti_compile_and_package(ep, package_path=str(package), inductor_configs=options)
        if mapped:
            mapped_constants.write_pt2(package, staged, checked(constants))


def compile_pte(ep: torch.export.ExportedProgram, out: Path, meta_json: str) -> None:
    from torchchat.et import lower_to_pte

    info, _ = metadata.from_json(meta_json, str(out))
    lower_to_pte(ep, out, info, meta_json)


def export_model(model: Transformer, info: ModelInfo, dtype: str, max_seq_len: int,
                 so_path: Optional[Path] = None, pt2_path: Optional[Path] = None,
                 pte_path: Optional[Path] = None, target: str = target_cpu.DEFAULT) -> ModelInfo:
    """Export `model` to the given paths; returns the metadata stored with it. `target`: the CPUs
    AOT Inductor's code is compiled for (torchchat/target_cpu.py)."""
    if not 1 <= max_seq_len <= model.args.max_seq_len:
        raise UserError(f"--max-seq-length must be in [1, {model.args.max_seq_len}], got {max_seq_len}")
    info = replace(info, max_seq_len=max_seq_len)  # the artifact's context is its KV cache
    # Per input form (checked here, before the slow part): AOTI artifacts record theirs.
    cpu = target_cpu.target(target)
    meta_json = {True: metadata.to_json(info, dtype, inputs=4, cpu=target_cpu.metadata_fields(cpu)),
                 False: metadata.to_json(info, dtype, cpu=target_cpu.metadata_fields(None))}
    targets = [(p, f) for p, f in ((so_path, compile_so), (pt2_path, compile_pt2), (pte_path, compile_pte))
               if p is not None]
    programs: dict[bool, torch.export.ExportedProgram] = {}  # one per input form, exported when first needed
    for path, compile_fn in targets:
        aoti = compile_fn is not compile_pte
        if aoti not in programs:
            form = "inputs kv_len and n_logits" if aoti else "input n_logits"
            with phase(f"Exporting the graph (torch.export, context {max_seq_len}, {form})"):
                programs[aoti] = export_program(model, max_seq_len, aoti)
        what = ("Compiling {} with AOT Inductor (minutes: autotuning kernels)" if aoti
                else "Lowering {} with ExecuTorch + XNNPACK")
        with phase(what.format(path), heartbeat=30):
            with warnings.catch_warnings(), target_cpu.inductor_target(cpu) if aoti else contextlib.nullcontext():
                warnings.simplefilter("ignore")  # inductor internals' deprecation noise
                compile_fn(programs[aoti], Path(path), meta_json[aoti])
        log(f"Wrote {path} ({Path(path).stat().st_size / 1e6:.1f} MB)")
    return info


def cmd_export(args) -> None:
    import signal

    from torchchat.loader import load_model

    # A plain kill (SIGTERM) ends the export like Ctrl-C, so staged files are cleaned up too.
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    so_path, pt2_path = args.output_dso_path, args.output_aoti_package_path
    pte_path = getattr(args, "output_pte_path", None)
    if not so_path and not pt2_path and not pte_path:
        raise UserError("give --output-dso-path model.so, --output-aoti-package-path model.pt2 and/or --output-pte-path model.pte")
    if pt2_path and not pt2_path.endswith(".pt2"):
        raise UserError(f"--output-aoti-package-path must end in .pt2, got {pt2_path}")
    # Quantized weights take a different form per backend (torchchat/quantize.py).
    backend = "et" if pte_path else "aoti"
    if getattr(args, "quantize", None):
        from torchchat.quantize import check_backend, parse_quantize, precision

        if pte_path and (so_path or pt2_path):
            raise UserError("--quantize: export AOT Inductor and ExecuTorch artifacts one at a time "
                            "(quantized weights take a different form for each)")
        spec = parse_quantize(args.quantize)
        check_backend(spec, backend, precision(spec) or args.dtype)  # before the slow part
    with phase("Loading the model"):
        loaded = load_model(args, backend)
    max_seq = args.max_seq_length or min(loaded.info.max_seq_len, DEFAULT_MAX_SEQ)
    export_model(loaded.model, loaded.info, loaded.dtype, max_seq,
                 Path(so_path) if so_path else None, Path(pt2_path) if pt2_path else None,
                 Path(pte_path) if pte_path else None, getattr(args, "target_cpu", target_cpu.DEFAULT))
