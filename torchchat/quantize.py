"""`--quantize`: fewer bits per weight, for eager PyTorch, AOT Inductor and ExecuTorch.

The spec is torchchat's JSON form, inline or in a file; keys combine in one object:

    {"linear:int8": {"groupsize": 0}}        weight-only int8, one scale per output channel
    {"linear:int4": {"groupsize": 32}}       weight-only int4, asymmetric, one scale+zero per group
    {"linear:a8w4dq": {"groupsize": 32}}     int8 dynamic activations (per token), int4 symmetric
                                             groupwise weights: what XNNPACK runs (ExecuTorch)
    {"embedding:int8": {"groupsize": 0}}     int8 table, one scale per row (0) or per group
    {"embedding:int4": {"groupsize": 32}}    int4 table (two per byte), one scale per group
    {"precision": {"dtype": "bf16"}}         the same as --dtype, and wins over it

The model definition stays one: quantization swaps modules after loading (and after the
dtype cast), before the KV caches are set up and before export. Each quantized module's
forward is plain PyTorch or ATen ops that torch.export traces:
- linear:int8 / linear:int4 call ATen's CPU weight-only kernels (`_weight_int8pack_mm`,
  `_weight_int4pack_mm_for_cpu`), which AOT Inductor compiles too (slowly at run time: see
  README); XNNPACK has no weight-only linear, so ExecuTorch refuses them.
- linear:a8w4dq is torchao's `Int8DynamicActivationIntxWeightConfig`: it exports as
  choose_qparams/quantize/dequantize ops around a linear, the pattern the XNNPACK partitioner
  fuses into its qd8-f32-qb4w kernel (how ExecuTorch's own llama export does it). Eager runs
  the same graph as fake quantization (right numbers, no speed); AOT Inductor refuses it, as
  freezing would fold the dequantized weights back into float constants.
- embeddings are a gather of integer rows times their scales, which every backend runs.
Tied embedding/output weights are untied by construction: a swap builds new tensors for the
module it replaces and leaves the other module's floating-point weight as it was.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchchat.errors import UserError

BACKENDS = ("eager", "aoti", "et")
DTYPES = ("fp32", "bf16", "fp16")
GROUPSIZES = (32, 64, 128, 256)  # what the int4 kernels (ATen's and XNNPACK's) take

# scheme -> (allowed groupsizes: None = 0 or any positive, default groupsize, backends that run it)
SCHEMES = {
    "linear:int8": ((0,), 0, ("eager", "aoti")),
    "linear:int4": (GROUPSIZES, 32, ("eager", "aoti")),
    "linear:a8w4dq": (GROUPSIZES, 32, ("eager", "et")),
    "embedding:int8": (None, 0, ("eager", "aoti", "et")),
    "embedding:int4": (None, 32, ("eager", "aoti", "et")),
}
REFUSAL_HINT = {
    "et": "XNNPACK runs only dynamically quantized linears; use linear:a8w4dq",
    # Inductor has no int8-activation GEMM on CPU: it would fold the weights back to float.
    "aoti": "it has no kernel for int8 activations and would store float weights; use linear:int4 or linear:int8",
}


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_quantize(arg: str) -> dict:
    """The spec from inline JSON or a JSON file, validated; normalised to {key: {option: value}}."""
    text = arg.strip()
    if not text.startswith(("{", "[", '"')):
        path = Path(arg)
        if not path.is_file():
            raise UserError(f"--quantize: {arg!r} is neither JSON nor a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--quantize: cannot read {arg}: {e}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--quantize: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(spec, dict) or not spec:
        raise UserError('--quantize: want a JSON object such as {"linear:int8": {"groupsize": 0}}')
    out = {}
    for key, options in spec.items():
        if not isinstance(options, dict):
            raise UserError(f"--quantize: {key} takes an object of options, got {json.dumps(options)}")
        if key == "precision":
            out[key] = parse_precision(options)
        elif key in SCHEMES:
            out[key] = parse_scheme(key, options)
        else:
            raise UserError(f"--quantize: unknown scheme {key!r} (known: {', '.join([*SCHEMES, 'precision'])})")
    for kind in ("linear", "embedding"):
        chosen = [k for k in out if k.startswith(kind + ":")]
        if len(chosen) > 1:
            raise UserError(f"--quantize: give one {kind} scheme, not {' and '.join(chosen)}")
    return out


def parse_precision(options: dict) -> dict:
    unknown = set(options) - {"dtype"}
    if unknown:
        raise UserError(f"--quantize: precision has no option {sorted(unknown)[0]!r} (it takes dtype)")
    dtype = options.get("dtype")
    if dtype not in DTYPES:
        raise UserError(f"--quantize: precision dtype must be one of {', '.join(DTYPES)}, got {json.dumps(dtype)}")
    return {"dtype": dtype}


def parse_scheme(key: str, options: dict) -> dict:
    allowed, default, _ = SCHEMES[key]
    unknown = set(options) - {"groupsize"}
    if unknown:
        raise UserError(f"--quantize: {key} has no option {sorted(unknown)[0]!r} (it takes groupsize)")
    g = options.get("groupsize", default)
    if not isinstance(g, int) or isinstance(g, bool) or g < 0:
        raise UserError(f"--quantize: {key} groupsize must be a non-negative integer, got {json.dumps(g)}")
    if allowed is not None and g not in allowed:
        what = "0 (per output channel)" if allowed == (0,) else ", ".join(map(str, allowed))
        raise UserError(f"--quantize: {key} groupsize must be {what}, got {g}")
    return {"groupsize": g}


def precision(spec: Optional[dict]) -> Optional[str]:
    """The dtype the spec asks for, if any (it overrides --dtype)."""
    return (spec or {}).get("precision", {}).get("dtype")


def describe(spec: dict) -> str:
    """One line for logs and tables, e.g. 'linear:int4 g32, embedding:int8'."""
    parts = []
    for key, options in spec.items():
        if key == "precision":
            parts.append(options["dtype"])
        else:
            parts.append(f"{key} g{options['groupsize']}" if options["groupsize"] else key)
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Quantized modules (weights quantized on construction; forward = dequantized math)


def _groups(w: Tensor, groupsize: int) -> Tensor:
    """w [rows, cols] as [rows, cols // g, g] (g = cols when groupsize is 0), in fp32."""
    rows, cols = w.shape
    g = groupsize or cols
    return w.float().reshape(rows, cols // g, g)


class Int8Linear(nn.Module):
    """Weight-only int8, symmetric, one scale per output channel: y = (x @ q.T) * scale."""

    def __init__(self, weight: Tensor, eager: bool = False):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-10) / 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(weight.dtype))
        self.in_features, self.out_features, self.eager = w.shape[1], w.shape[0], eager

    def forward(self, x: Tensor) -> Tensor:
        if self.eager and x.numel() > x.size(-1):
            # ATen's kernel is a loop of GEMVs (cost grows with the tokens): a prompt is
            # cheaper as one float GEMM over the dequantized weight. Eager only: export
            # would fold that weight into a float constant.
            return F.linear(x, self.weight.to(x.dtype)) * self.scales
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.size(-1)), self.weight, self.scales)
        return y.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """Weight-only int4, asymmetric per group: w = (q - 8) * scale + zero, q in [0, 15].

    That is min/max quantization (zero = min + 8 * scale) in the layout of ATen's CPU kernel:
    q packed two per byte by `_convert_weight_to_int4pack_for_cpu`, scales and zeros
    interleaved as [in / groupsize, out, 2]."""

    def __init__(self, weight: Tensor, groupsize: int, eager: bool = False):
        super().__init__()
        wg = _groups(weight.detach(), groupsize)
        lo, hi = wg.amin(-1), wg.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-10)
        q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(weight.shape)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        zero = lo + 8 * scale
        self.register_buffer("scales_and_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(weight.dtype))
        self.groupsize, self.in_features, self.out_features, self.eager = groupsize, weight.shape[1], weight.shape[0], eager
        if eager:  # for prompts (see Int8Linear): a plain copy, two per byte, high nibble first
            self.register_buffer("plain", (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8))

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        q = torch.stack([self.plain >> 4, self.plain & 15], dim=-1).flatten(-2).to(dtype) - 8
        scale, zero = self.scales_and_zeros.to(dtype).permute(2, 1, 0)  # each [out, in / groupsize]
        return (q.unflatten(-1, (scale.size(-1), -1)) * scale[..., None] + zero[..., None]).flatten(-2)

    def forward(self, x: Tensor) -> Tensor:
        if self.eager and x.numel() > x.size(-1):
            return F.linear(x, self.dequantized(x.dtype))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.size(-1)), self.weight, self.groupsize,
                                                       self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features)


class QuantizedEmbedding(nn.Module):
    """Symmetric int8 or int4 rows, one scale per group; int4 is stored two per byte (high nibble first)."""

    def __init__(self, weight: Tensor, bits: int, groupsize: int):
        super().__init__()
        qmax = 127 if bits == 8 else 7
        wg = _groups(weight.detach(), groupsize)
        scale = wg.abs().amax(-1).clamp(min=1e-10) / qmax
        q = torch.round(wg / scale[..., None]).clamp(-qmax, qmax).reshape(weight.shape)
        if bits == 4:
            u = (q + 8).to(torch.uint8)
            q = u[:, 0::2] << 4 | u[:, 1::2]
        self.register_buffer("weight", q.to(torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scales", scale.to(weight.dtype))
        self.bits, self.dim = bits, weight.shape[1]

    def forward(self, tokens: Tensor) -> Tensor:
        rows = F.embedding(tokens, self.weight)
        if self.bits == 4:
            # div/remainder rather than shifts: ExecuTorch's kernels have no right shift.
            rows = rows.to(torch.int32)
            rows = torch.stack([torch.div(rows, 16, rounding_mode="floor"), torch.remainder(rows, 16)], dim=-1)
            rows = rows.flatten(-2) - 8
        scales = F.embedding(tokens, self.scales)
        x = rows.to(scales.dtype).unflatten(-1, (scales.size(-1), -1)) * scales.unsqueeze(-1)
        return x.flatten(-2)


# ---------------------------------------------------------------------------------------------
# Applying a spec


def check_backend(spec: dict, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend}")
    name = {"eager": "eager PyTorch", "aoti": "AOT Inductor", "et": "ExecuTorch"}[backend]
    for key in spec:
        if key != "precision" and backend not in SCHEMES[key][2]:
            hint = REFUSAL_HINT.get(backend, "")
            raise UserError(f"--quantize: {name} cannot run {key}" + (f" ({hint})" if hint else ""))


def check_divides(model: nn.Module, kind: type, key: str, groupsize: int) -> None:
    """A groupsize must divide every quantized layer's input dimension (embedding: its width)."""
    for name, m in model.named_modules():
        if isinstance(m, kind):
            width = m.weight.shape[1]
            if groupsize and width % groupsize:
                raise UserError(f"--quantize: {key} groupsize {groupsize} does not divide {name}'s "
                                f"input dimension {width} ({m.weight.shape[0]}x{width})")


def quantize_model(model: nn.Module, spec: dict, backend: str) -> None:
    """Quantize `model` in place for `backend` ('eager', 'aoti' or 'et'); before setup_caches/export."""
    check_backend(spec, backend)
    for key, options in spec.items():
        if key != "precision":
            check_divides(model, nn.Linear if key.startswith("linear:") else nn.Embedding, key, options["groupsize"])
    for key, options in spec.items():
        g = options.get("groupsize", 0)
        if key == "linear:int8":
            swap(model, nn.Linear, lambda m: Int8Linear(m.weight, eager=backend == "eager"))
        elif key == "linear:int4":
            swap(model, nn.Linear, lambda m: Int4Linear(m.weight, g, eager=backend == "eager"))
        elif key == "linear:a8w4dq":
            quantize_a8w4dq(model, g)
        elif key == "embedding:int8":
            swap(model, nn.Embedding, lambda m: QuantizedEmbedding(m.weight, 8, g))
        elif key == "embedding:int4":
            swap(model, nn.Embedding, lambda m: QuantizedEmbedding(m.weight, 4, g))


def swap(model: nn.Module, kind: type, make) -> None:
    for name, child in list(model.named_children()):
        if type(child) is kind:
            setattr(model, name, make(child))
        else:
            swap(child, kind, make)


def quantize_a8w4dq(model: nn.Module, groupsize: int) -> None:
    from torchchat.et import quiet_executorch_imports

    quiet_executorch_imports()  # torchao logs a warning per CUDA extension it cannot load
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    # quantize_ puts a new weight on each Linear: a tied embedding keeps its own tensor.
    with torch.no_grad():
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                               weight_granularity=PerGroup(groupsize)),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
