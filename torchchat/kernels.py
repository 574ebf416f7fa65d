"""Our CPU kernels for linears and attention (kernels/): build, load, pack weights, reference math.

The C++ sources are compiled once per machine with torch.utils.cpp_extension (cached under
~/.cache/torch_extensions, rebuilt when a source changes) and registered as PyTorch operators
`torch.ops.torchchat.int4_panel_weight_linear` / `int8_panel_weight_linear` (linear:int4 / linear:int8,
fp32 activations) and `int4_a8_weight_linear` / `int8_a8_weight_linear` (with int8 activations), the
quantized layers that eager PyTorch, torch.export and AOT Inductor all call; `int8_weight_linear`
(row-major int8 weights, one scale per row: the int8 layers whose width is not a multiple of 32);
`panel_weight_linear` / `float_weight_linear` (the fp32/bf16 linears of AOT Inductor exports:
torchchat/export/program.py) and `cache_attention` (attention over an fp32 or bf16 KV cache in exports, AOT
Inductor and ExecuTorch alike: export.cache_attention). AOT Inductor calls them through C shims
(`AOTI_C_SHIMS`), so an exported model needs the library loaded with global symbols: `load()`
does that, and `aoti_run` links the same sources (CMakeLists.txt, torchchat_kernels).

ExecuTorch programs call the operators' out variants, which kernels/executorch_ops.cpp
implements for ExecuTorch's runtime: `load_executorch()` builds that library against the
executorch wheel (the same way, cached beside the first) and loads it into the runtime of
ExecuTorch's Python bindings, whose kernel registry lives in the wheel's libexecutorch.so;
`et_run` links the same sources (CMakeLists.txt, torchchat_et_kernels).
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

from torchchat.errors import UserError
from torchchat.quiet import native_stderr_silenced

KERNELS_DIR = Path(__file__).resolve().parent.parent / "kernels"
# The portable files and this machine's ISA files (CMakeLists.txt TORCHCHAT_KERNEL_SOURCES).
if platform.machine().lower() in ("aarch64", "arm64"):
    CORE = ("quant_linear.cpp", "quant_linear_generic.cpp", "quant_linear_neon.cpp", "quant_linear_neon_a8.cpp",
            "quant_linear_neon_dotprod.cpp", "attention.cpp", "attention_neon.cpp")
else:
    CORE = ("quant_linear.cpp", "quant_linear_generic.cpp", "quant_linear_avx2.cpp", "quant_linear_avx2_a8.cpp",
            "quant_linear_avx2vnni.cpp", "quant_linear_avx512.cpp", "quant_linear_vnni.cpp", "attention.cpp",
            "attention_avx2.cpp", "attention_avx512.cpp")
SOURCES = [KERNELS_DIR / name for name in (*CORE, "torch_ops.cpp")]
ET_SOURCES = [KERNELS_DIR / name for name in (*CORE, "executorch_ops.cpp")]

# The --quantize schemes whose layers call these kernels (torchchat/quantize.py).
QUANTIZE_SCHEMES = ("linear:int8", "linear:int4")

_loaded = False
_et_loaded = False
_et_library = None  # the loaded library (ctypes), once load_executorch has run


def build(name: str, sources: list[Path], what: str, **options) -> str:
    """Compile `sources` into a shared library (once; again when a source changes); its path."""
    from torch.utils import cpp_extension  # here, not above: slow to import, only a build needs it

    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise UserError(f"the kernel sources are missing: {', '.join(missing)}")
    # Loading a cached build takes well under a second; only a compile (the first run, or after a
    # source changed) is long enough to deserve a word, so the notice waits that long.
    notice = threading.Timer(1.0, print, (f"Compiling {what} (once; about a minute)...",),
                             {"file": sys.stderr, "flush": True})
    notice.daemon = True
    notice.start()
    try:
        return cpp_extension.load(name=name, sources=[str(p) for p in sources], is_python_module=False,
                                  verbose=False, **options)
    except (RuntimeError, OSError, ImportError) as e:
        lines = str(e).strip().splitlines()
        raise UserError(f"cannot build the {what}: {lines[-1] if lines else e}") from None
    finally:
        notice.cancel()


def load() -> None:
    """Build (first time only) and load the kernel library; idempotent."""
    global _loaded
    if _loaded:
        return
    # -fopenmp: at::parallel_for is OpenMP in the torch wheel (its own libgomp)
    path = build("torchchat_kernels", SOURCES, "torchchat kernels", extra_cflags=["-O2", "-std=c++20", "-fopenmp"],
                 extra_ldflags=["-fopenmp"])
    # Global symbols, so that AOT Inductor models resolve aoti_torch_cpu_*_weight_linear.
    ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    register_fakes()
    _loaded = True
    refuse_isa_error(torch.ops.torchchat.kernels_isa_error())


def load_executorch() -> None:
    """Build (first time only) and load our kernels into ExecuTorch's runtime; idempotent.

    Loading registers torchchat::int8_weight_linear.out, int4_panel_weight_linear.out,
    int8_panel_weight_linear.out, int4_a8_weight_linear.out, int8_a8_weight_linear.out and cache_attention.out with the kernel
    registry of the runtime that ExecuTorch's Python bindings use (the wheel's libexecutorch.so, which this library links), so programs that call
    them load."""
    global _et_loaded
    if _et_loaded:
        return
    import executorch  # here, not above: an optional dependency, slow to import
    from executorch.runtime import Runtime

    Runtime.get()  # the bindings (and with them the wheel's runtime) are loaded first
    root = Path(executorch.__path__[0])
    lib, include = root / "lib", root / "include"
    if not (lib / "libexecutorch.so").is_file():
        raise UserError(f"the executorch package at {root} has no libexecutorch.so to build our kernels against")
    # What the wheel's CMake package (share/cmake/executorch-config.cmake) asks of a consumer:
    # its vendored c10 headers, and the definitions its libraries were compiled with.
    path = build("torchchat_et_kernels", ET_SOURCES, "torchchat kernels for ExecuTorch",
                 extra_include_paths=[str(include), str(include / "executorch/runtime/core/portable_type/c10")],
                 extra_cflags=["-O2", "-std=c++20", "-fvisibility=hidden", "-DC10_USING_CUSTOM_GENERATED_MACROS",
                               "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL", "-fopenmp"],
                 # -fopenmp: OpenMP where a host turns ExecuTorch's pool off (executorch_ops.cpp
                 # parallel_range; Python never does); libgomp.so.1 is torch's, already loaded.
                 extra_ldflags=[f"-L{lib}", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{lib}", "-fopenmp"])
    library = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)  # its static initializers register the kernels
    _et_loaded = True
    library.torchchat_kernels_isa_error.restype = ctypes.c_char_p
    refuse_isa_error((library.torchchat_kernels_isa_error() or b"").decode())
    # A fatal check in the runtime (a damaged program) ends the process with one line, not abort(),
    # written to (a copy of) this stderr: loading silences fd 2 (torchchat/quiet.py).
    stderr_copy = os.dup(2)
    with native_stderr_silenced():  # the runtime notes that its handlers are replaced
        library.torchchat_et_exit_on_fatal(stderr_copy)
    library.torchchat_et_last_error.restype = ctypes.c_char_p
    global _et_library
    _et_library = library


def executorch_errors() -> tuple[int, str]:
    """(error-level messages ExecuTorch's runtime has logged since load_executorch, the last one)."""
    return _et_library.torchchat_et_logged_errors(), (_et_library.torchchat_et_last_error() or b"").decode(errors="replace")


def refuse_isa_error(error: str) -> None:
    """TORCHCHAT_KERNELS named a level that is unknown or that this CPU lacks (quant_linear.h isa_error):
    one line for the user, not a quiet run on another level."""
    if error:
        raise UserError(error)


def isa() -> str:
    """Which implementations run on this machine: 'avx512-vnni', 'avx512', 'avx2-vnni', 'avx2' or
    'generic' (kernels/quant_linear.h)."""
    load()
    return torch.ops.torchchat.kernels_isa()


def register_fakes() -> None:
    """Output shapes for tracing (torch.export, torch.compile): x [..., K] -> [..., N]."""

    @torch.library.register_fake("torchchat::float_weight_linear")
    def _(x, weight):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("torchchat::panel_weight_linear")
    def _(x, panels, n):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("torchchat::int8_weight_linear")
    def _(x, weight, scales):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("torchchat::int4_a8_weight_linear")
    def _(x, panels, n, groupsize):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("torchchat::int8_a8_weight_linear")
    def _(x, panels, n):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("torchchat::int4_panel_weight_linear")
    def _(x, panels, n, groupsize):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("torchchat::int8_panel_weight_linear")
    def _(x, panels, n):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("torchchat::cache_attention")
    def _(q, k_cache, v_cache, input_pos):
        return q.new_empty(q.shape)


def aoti_c_shims() -> dict:
    """aot_inductor.custom_ops_to_c_shims: the C functions of kernels/torch_ops.cpp."""
    load()
    ops = torch.ops.torchchat
    return {
        ops.float_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_float_weight_linear(AtenTensorHandle x, AtenTensorHandle weight, "
            "AtenTensorHandle* ret)"],
        ops.panel_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, "
            "int64_t N, AtenTensorHandle* ret)"],
        ops.int8_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_int8_weight_linear(AtenTensorHandle x, AtenTensorHandle weight, "
            "AtenTensorHandle scales, AtenTensorHandle* ret)"],
        ops.int4_a8_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_int4_a8_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, "
            "int64_t N, int64_t groupsize, AtenTensorHandle* ret)"],
        ops.int8_a8_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_int8_a8_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, "
            "int64_t N, AtenTensorHandle* ret)"],
        ops.int4_panel_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_int4_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, "
            "int64_t N, int64_t groupsize, AtenTensorHandle* ret)"],
        ops.int8_panel_weight_linear.default: [
            "AOTITorchError aoti_torch_cpu_int8_panel_weight_linear(AtenTensorHandle x, AtenTensorHandle panels, "
            "int64_t N, AtenTensorHandle* ret)"],
        ops.cache_attention.default: [
            "AOTITorchError aoti_torch_cpu_cache_attention(AtenTensorHandle q, AtenTensorHandle k_cache, "
            "AtenTensorHandle v_cache, AtenTensorHandle input_pos, AtenTensorHandle* ret)"],
    }


# ---------------------------------------------------------------------------------------------
# Packing (kernels/quant_linear.h formats) and the reference math the kernels must equal


def quantize_int8(w: Tensor, groupsize: int = 0) -> tuple[Tensor, Tensor]:
    """Symmetric int8: (q int8 [N, K], scale fp32) with w ~ q * scale, one scale per output row
    (groupsize 0: scale [N]) or per group of `groupsize` weights of a row (scale [N, K / g])."""
    w = w.detach().float()
    if not groupsize:
        scale = w.abs().amax(1).clamp(min=1e-10) / 127
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale
    n, k = w.shape
    wg = w.reshape(n, k // groupsize, groupsize)
    scale = wg.abs().amax(-1).clamp(min=1e-10) / 127
    q = torch.round(wg / scale[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(n, k), scale.contiguous()


def quantize_int4(w: Tensor, groupsize: int) -> tuple[Tensor, Tensor]:
    """Min/max int4 per group: (q uint8 [N, K] in [0, 15], scales_mins fp16 [N, K / g, 2]) with
    w ~ q * scale + min. scale and min are rounded to fp16 before q is chosen, so q is the
    best code for the stored values."""
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // groupsize, groupsize)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8).half()
    lo = lo.half()
    q = torch.round((wg - lo.float()[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(n, k), torch.stack([scale, lo], -1).contiguous()


PANEL = 32  # outputs per panel (kernels/quant_linear.h kPanel)


def pack_panels(w: Tensor) -> Tensor:
    """w [N, K] (fp32 or bf16) -> [ceil(N / 32), K, 32]: column panels of 32 outputs, zero-padded."""
    n, k = w.shape
    padded = torch.zeros(-(-n // PANEL) * PANEL, k, dtype=w.dtype)
    padded[:n] = w.detach()
    return padded.reshape(-1, PANEL, k).transpose(1, 2).contiguous()


def pack_int4(q: Tensor) -> Tensor:
    """q uint8 [N, K] in [0, 15] -> [N, K / 2]: per 32 weights, byte j = q[j] | q[j + 16] << 4."""
    n, k = q.shape
    blocks = q.reshape(n, k // 32, 2, 16)
    return (blocks[:, :, 0] | blocks[:, :, 1] << 4).reshape(n, k // 2).contiguous()


A8_PANEL = 16  # outputs per panel of the int8-activation kernels (kernels/quant_linear.h kA8Panel)


def pack_int4_panels(q: Tensor, scales_mins: Tensor, groupsize: int) -> Tensor:
    """quantize_int4's (q [N, K], scales_mins [N, K / g, 2]) in int4_a8_weight_linear's panels of 16
    rows, [ceil(N / 16), K / g, 8g + 64] bytes (kernels/quant_linear.h): per group, for each block
    of 32 k, 4 chunks of 64 bytes (byte 4l + i of chunk c: q[l, 4c + i] | q[l, 16 + 4c + i] << 4),
    then the 16 rows' fp16 scales and their fp16 mins."""
    n, k = q.shape
    rows = -(-n // A8_PANEL) * A8_PANEL
    qp = torch.zeros(rows, k, dtype=torch.uint8)
    qp[:n] = q
    smp = torch.zeros(rows, k // groupsize, 2, dtype=torch.float16)
    smp[:n] = scales_mins
    blocks = qp.reshape(rows // A8_PANEL, A8_PANEL, k // 32, 2, 4, 4)  # [p, l, block, half, c, i]
    codes = (blocks[:, :, :, 0] | blocks[:, :, :, 1] << 4).permute(0, 2, 3, 1, 4)  # [p, block, c, l, i]
    codes = codes.reshape(rows // A8_PANEL, k // groupsize, 8 * groupsize)
    sm = smp.reshape(rows // A8_PANEL, A8_PANEL, k // groupsize, 2).permute(0, 2, 3, 1)  # [p, g, 2, l]
    sm = sm.contiguous().view(torch.uint8).reshape(rows // A8_PANEL, k // groupsize, 64)
    return torch.cat([codes, sm], dim=-1).contiguous()


def pack_int8_panels(q: Tensor, scale: Tensor) -> Tensor:
    """quantize_int8's (q [N, K], scale [N] or [N, K / g]) in int8_a8_weight_linear's panels of 16
    rows, [ceil(N / 16), K / g, 16g + 64] bytes (g = K for one scale per row; kernels/quant_linear.h):
    per group, for each block of 32 k, 8 chunks of 64 bytes (byte 4l + i of chunk c:
    q[l, 4c + i] + 128), then the 16 rows' fp32 scales."""
    n, k = q.shape
    groups = scale.numel() // n
    g = k // groups
    rows = -(-n // A8_PANEL) * A8_PANEL
    qp = torch.zeros(rows, k, dtype=torch.uint8)
    qp[:n] = (q.to(torch.int16) + 128).to(torch.uint8)
    sp = torch.zeros(rows, groups, dtype=torch.float32)
    sp[:n] = scale.reshape(n, groups)
    blocks = qp.reshape(rows // A8_PANEL, A8_PANEL, k // 32, 8, 4)  # [p, l, block, c, i]
    codes = blocks.permute(0, 2, 3, 1, 4).reshape(rows // A8_PANEL, groups, 16 * g)  # [p, block, c, l, i]
    scales = sp.reshape(rows // A8_PANEL, A8_PANEL, groups).transpose(1, 2).contiguous()  # [p, g, l]
    return torch.cat([codes, scales.view(torch.uint8)], dim=-1).contiguous()


def unpack_int4_panels(panels: Tensor, n: int, groupsize: int) -> tuple[Tensor, Tensor]:
    """pack_int4_panels undone: (q uint8 [N, K], scales_mins fp16 [N, K / g, 2])."""
    p, groups, _ = panels.shape
    g = groupsize
    codes = panels[..., :8 * g].reshape(p, groups * g // 32, 4, A8_PANEL, 4)  # [p, block, c, l, i]
    q = torch.stack([codes & 15, codes >> 4], dim=2)  # [p, block, half, c, l, i]
    q = q.permute(0, 4, 1, 2, 3, 5).reshape(p * A8_PANEL, groups * g)[:n]
    sm = panels[..., 8 * g:].contiguous().view(torch.float16).reshape(p, groups, 2, A8_PANEL)
    return q.contiguous(), sm.permute(0, 3, 1, 2).reshape(p * A8_PANEL, groups, 2)[:n].contiguous()


def unpack_int8_panels(panels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """pack_int8_panels undone: (q int8 [N, K], scale fp32 [N, K / g]; g = K: [N, 1])."""
    p, groups, size = panels.shape
    g = (size - 64) // 16
    codes = panels[..., :16 * g].reshape(p, groups * g // 32, 8, A8_PANEL, 4)  # [p, block, c, l, i]
    q = (codes.to(torch.int16) - 128).to(torch.int8).permute(0, 3, 1, 2, 4).reshape(p * A8_PANEL, groups * g)[:n]
    scale = panels[..., 16 * g:].contiguous().view(torch.float32).reshape(p, groups, A8_PANEL)
    return q.contiguous(), scale.permute(0, 2, 1).reshape(p * A8_PANEL, groups)[:n].contiguous()


def unpack_int4(packed: Tensor) -> Tensor:
    n, half = packed.shape
    blocks = packed.reshape(n, half // 16, 1, 16)
    return torch.cat([blocks & 15, blocks >> 4], dim=2).reshape(n, half * 2)


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """scale [N] (per row) or [N, K / g] (per group of g weights of a row)."""
    n, k = q.shape
    return (q.float().reshape(n, scale.numel() // n, -1) * scale.reshape(n, -1, 1)).reshape(n, k)


def dequantize_int4(packed: Tensor, scales_mins: Tensor, groupsize: int) -> Tensor:
    q = unpack_int4(packed).float()
    n, k = q.shape
    sm = scales_mins.float()
    return (q.reshape(n, k // groupsize, groupsize) * sm[..., :1] + sm[..., 1:]).reshape(n, k)
