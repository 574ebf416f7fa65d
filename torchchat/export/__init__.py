"""Export: `torchchat.py export MODEL --output-dso-path m.so | --output-aoti-package-path m.pt2 |
--output-pte-path m.pte`, ahead-of-time artifacts for the native runners (aoti_run, et_run).

- program.py: the one `torch.export` of the model every artifact compiles;
- aoti.py: AOT Inductor, to a .so or a .pt2;
- executorch.py: ExecuTorch + XNNPACK, to a .pte;
- staging.py: each file written under a temporary name and renamed at the end.
The model's metadata (torchchat/metadata.py) goes inside every file.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import torch

from torchchat import metadata, target_cpu
from torchchat.errors import UserError
from torchchat.export.aoti import compile_pt2, compile_so
from torchchat.export.executorch import compile_pte
from torchchat.export.program import export_program
from torchchat.metadata import ModelInfo
from torchchat.model import Transformer

DEFAULT_MAX_SEQ = 2048


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


def export_model(model: Transformer, info: ModelInfo, dtype: str, max_seq_len: int,
                 so_path: Optional[Path] = None, pt2_path: Optional[Path] = None,
                 pte_path: Optional[Path] = None, target: str = target_cpu.DEFAULT) -> ModelInfo:
    """Export `model` to the given paths; returns the metadata stored with it. `target`: the CPUs
    AOT Inductor's code is compiled for (torchchat/target_cpu.py)."""
    if not 1 <= max_seq_len <= model.args.max_seq_len:
        raise UserError(f"--max-seq-length must be in [1, {model.args.max_seq_len}], got {max_seq_len}")
    info = replace(info, max_seq_len=max_seq_len)  # the artifact's context is its KV cache
    # Checked here, before the slow part. A .pte holds no compiled code: it runs on any CPU.
    cpu = target_cpu.target(target)
    meta_json = {True: metadata.to_json(info, dtype, cpu=target_cpu.metadata_fields(cpu)),
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
