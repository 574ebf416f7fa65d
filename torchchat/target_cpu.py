"""Which x86-64 CPUs an exported artifact runs on: `export --target-cpu native|avx2|avx512`.

AOT Inductor compiles the model's own C++ (the glue between our kernels: norms, rotary,
elementwise work, and any GEMM left to it) with -march=native and the widest vector ISA of the
exporting machine, so a .so/.pt2 exported on an AVX-512 machine would die with SIGILL on an
AVX2 one. A target pins both: the compiler's -march (a psABI level, x86-64-v3 or -v4) and
Inductor's vector ISA (its ATen vector headers, 256 or 512 bits).

The default is avx2 (x86-64-v3: every Intel CPU since Haswell, every AMD since Excavator), so a
file exported anywhere runs on the CPUs our users have. What Inductor compiles is only the glue:
our kernels (linears, attention) choose their ISA at run time whatever the target, so an AVX-512
machine loses nothing measurable by exporting for avx2. SmolLM2-135M fp32 .so on a Sapphire
Rapids (2 shared cores, load ~15), aoti_run with one thread, CPU time of a 76- minus a 12-token
greedy run, two alternations: avx2 19.7 and 15.6, native 19.0 and 16.2 tokens per CPU-second.

The artifact's metadata (torchchat/metadata.py) records the target and the CPU features it
needs, by GCC's names (`__builtin_cpu_supports`), which the runners check before they load any
compiled code: `"target_cpu": "avx2", "cpu_features": ["avx", "avx2", ...]`. A `native` export
needs every feature of the exporting CPU that is listed in FEATURES (conservative: the compiler
may use any of them). An ExecuTorch program holds no compiled code (XNNPACK and our kernels
choose theirs at run time): its target is "any", with no features.
"""
from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator, Optional

from torchchat.errors import UserError

# GCC's feature name (what the C++ runner checks) -> torch.cpu.get_capabilities()' key (cpuinfo:
# CPUID, and for AVX and AVX-512 whether the OS saves the wide registers). The twin of this table
# is runner/src/cpu_features.cpp.
FEATURES = {
    "avx": "avx", "avx2": "avx2", "fma": "fma3", "f16c": "f16c", "bmi": "bmi", "bmi2": "bmi2", "lzcnt": "lzcnt",
    "avx512f": "avx512_f", "avx512bw": "avx512_bw", "avx512cd": "avx512_cd", "avx512dq": "avx512_dq",
    "avx512vl": "avx512_vl", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512vbmi": "avx512_vbmi", "avx512vbmi2": "avx512_vbmi2",
    "avx512ifma": "avx512_ifma", "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
    "sha": "sha", "aes": "aes",
}


@dataclass(frozen=True)
class Target:
    name: str
    march: Optional[str]  # the compiler's -march; None: Inductor's default (native)
    simdlen: Optional[int]  # Inductor's vector width (config.cpp.simdlen); None: the widest here
    features: tuple[str, ...]  # what the code may use (x86-64-v3 also has MOVBE, which cpuinfo does not report)


AVX2 = ("avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt")
TARGETS = {
    "avx2": Target("avx2", "x86-64-v3", 256, AVX2),
    "avx512": Target("avx512", "x86-64-v4", 512, AVX2 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
}
CHOICES = ("native", "avx2", "avx512")
DEFAULT = "avx2"
ANY = "any"  # a program without compiled code (.pte)


def cpu_features() -> set[str]:
    """The FEATURES this CPU has (and its OS enables)."""
    # Here, not above: the command line imports this module and must start without torch.
    import torch

    caps = torch.cpu.get_capabilities()
    return {name for name, key in FEATURES.items() if caps.get(key)}


def target(name: str) -> Target:
    if name == "native":
        return Target("native", None, None, tuple(sorted(cpu_features())))
    if name not in TARGETS:
        raise UserError(f"--target-cpu must be one of {', '.join(CHOICES)}, got {name!r}")
    return TARGETS[name]


def metadata_fields(t: Optional[Target]) -> dict:
    """The metadata keys for an artifact compiled for `t` (None: no compiled code)."""
    if t is None:
        return {"target_cpu": ANY, "cpu_features": []}
    return {"target_cpu": t.name, "cpu_features": list(t.features)}


@contextlib.contextmanager
def inductor_target(t: Target) -> Iterator[None]:
    """While compiling, Inductor generates and compiles code for `t` instead of this machine.

    Two settings (torch 2.13): config.cpp.march replaces -march=native (cpp_builder), and the
    vector ISA that codegen and the compile flags take (cpu_vec_isa.pick_vec_isa) is `t`'s alone.
    simdlen alone is not enough: with 512 Inductor takes the best 512-bit ISA here, AMX with
    AVX-512 VNNI/BF16 on a Sapphire Rapids, which an AVX-512 Skylake lacks."""
    if t.march is None:
        yield
        return
    # Here, not above: only an AOT Inductor export needs Inductor (start-up time).
    import torch._inductor.config as inductor_config
    from torch._inductor import cpu_vec_isa

    class PlainAVX512(cpu_vec_isa.VecAVX512):
        """AVX-512 F/BW/DQ/VL as x86-64-v4 has it: without the BF16 flag Inductor adds where the CPU has it."""

        def build_arch_flags(self) -> str:
            return self._arch_flags

        def is_avx512_bf16_supported(self) -> bool:
            return False

    isa = cpu_vec_isa.VecAVX2() if t.simdlen == 256 else PlainAVX512()
    saved = cpu_vec_isa.valid_vec_isa_list
    cpu_vec_isa.valid_vec_isa_list = lambda: [isa]  # pick_vec_isa's only candidate
    try:
        with inductor_config.patch({"cpp.march": t.march, "cpp.simdlen": t.simdlen}):
            yield
    finally:
        cpu_vec_isa.valid_vec_isa_list = saved


def check(meta_json: str, where: str) -> None:
    """Raise UserError, in one line naming what is missing, if this CPU cannot run the artifact
    whose metadata is `meta_json`. Artifacts exported before targets were recorded pass (they
    were compiled for the exporting machine, which is all anyone can say of them)."""
    try:
        meta = json.loads(meta_json)
        name, needed = meta.get("target_cpu"), meta.get("cpu_features", [])
        if not isinstance(needed, list) or not all(isinstance(f, str) for f in needed):
            raise ValueError("cpu_features is not a list of names")
    except (ValueError, AttributeError) as e:
        raise UserError(f"{where}: malformed torchchat metadata ({e})") from None
    unknown = [f for f in needed if f not in FEATURES]
    if unknown:
        raise UserError(f"{where}: needs CPU features this version cannot check: {', '.join(unknown)}")
    have = cpu_features() if needed else set()
    missing = [f for f in needed if f not in have]
    if missing:
        raise UserError(f"{where}: compiled for {name} CPUs; this CPU lacks {', '.join(missing)} "
                        f"(export with --target-cpu avx2 for any x86-64 CPU with AVX2)")


def pt2_metadata(path: Path, key: str) -> Optional[str]:
    """The `key` entry of a .pt2 package's AOTI metadata, read from the zip without loading the
    package's shared library (data/aotinductor/model/*_metadata.json); None if there is none."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if "/data/aotinductor/" in name and name.endswith("_metadata.json"):
                    value = json.loads(z.read(name)).get(key)
                    if isinstance(value, str):
                        return value
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError):
        pass
    return None
