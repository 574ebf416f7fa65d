"""`--quantize`: fewer bits per weight, for eager PyTorch, AOT Inductor and ExecuTorch.

The spec is torchchat's JSON form, inline or in a file; keys combine in one object:

    {"linear:int8": {"groupsize": 0}}        weight-only int8, symmetric, one scale per output channel
                                             (0) or per group of 32, 64, 128 or 256 weights;
                                             "activations": "int8" as for linear:int4 (llama.cpp's
                                             Q8_0 x Q8_0 with one weight scale per row or group)
    {"linear:int4": {"groupsize": 32}}       weight-only int4, asymmetric, one scale+min per group;
                                             the output layer int8 (add "output": "int4" for int4);
                                             add "activations": "int8" to quantize the activations
                                             per block of 32 on the fly (llama.cpp's Q4_1 x Q8_1):
                                             a third of the dot products, slightly less exact
    {"linear:a8w4dq": {"groupsize": 32}}     int8 dynamic activations (per token), int4 symmetric
                                             groupwise weights: what XNNPACK runs (ExecuTorch)
    {"embedding:int8": {"groupsize": 0}}     int8 table, one scale per row (0) or per group
    {"embedding:int4": {"groupsize": 32}}    int4 table (two per byte), one scale per group
    {"precision": {"dtype": "bf16"}}         the same as --dtype, and wins over it

The model definition stays one: quantization swaps modules after loading (and after the
dtype cast), before the KV caches are set up and before export. Each quantized module's
forward is plain PyTorch or ATen ops that torch.export traces:
- linear:int8 / linear:int4 call our CPU kernels (kernels/, torchchat/kernels.py), operators
  that eager PyTorch runs and AOT Inductor models call directly; ExecuTorch programs call their
  out variants, which our ExecuTorch kernels implement (kernels/executorch_ops.cpp, linked into
  et_run, loaded into ExecuTorch's Python runtime by --pte-path), in fp32 only. XNNPACK has no
  weight-only linear, so those layers stay outside its partitions. The weights are packed in
  panels of 16 rows for AVX-512 VNNI's integer dot products; the fp32 activations are split on
  the fly, per block of 32 values, into three int8 slices that hold them to fp32 accuracy
  (kernels/quant_linear.h), so the products are exact integer ones and only the scaling rounds.
- "activations": "int8" keeps one slice: each token's activations quantized per block of 32
  values (symmetric, one fp32 scale per block), as llama.cpp's Q4_1 files do with Q8_1 and its
  Q8_0 files with Q8_0. A third of the dot products, slightly less exact; linear:int4's int8
  output layer takes int8 activations too (llama.cpp's Q8_0 output x Q8_0). Unlike
  linear:a8w4dq, the weights keep their zero point (min) and the activations a scale per 32
  values instead of one per token.
- linear:a8w4dq is torchao's `Int8DynamicActivationIntxWeightConfig`: it exports as
  choose_qparams/quantize/dequantize ops around a linear, the pattern the XNNPACK partitioner
  fuses into its qd8-f32-qb4w kernel (how ExecuTorch's own llama export does it). Eager runs
  the same graph as fake quantization (right numbers, no speed); AOT Inductor refuses it, as
  freezing would fold the dequantized weights back into float constants.
- embeddings are a gather of integer rows times their scales, which every backend runs.
linear:int4 keeps the output layer (logits) at int8 by default, as llama.cpp's 4-bit files keep it
at 6-8 bits: it is the layer most sensitive to 4 bits (on SmolLM2, int4 g32 everywhere costs
+6.5 % perplexity, with an int8 output layer +0.3 %), and a small share of a large model's weights.
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

from torchchat import kernels
from torchchat.errors import UserError
from torchchat.model import unfused_projections
from torchchat.quiet import quiet_executorch_imports

BACKENDS = ("eager", "aoti", "et")
DTYPES = ("fp32", "bf16", "fp16")
GROUPSIZES = (32, 64, 128, 256)  # what the int4 kernels (ours and XNNPACK's) and our int8 kernels take

# scheme -> (allowed groupsizes: None = 0 or any positive, default groupsize, backends that run it)
SCHEMES = {
    "linear:int8": ((0, *GROUPSIZES), 0, ("eager", "aoti", "et")),
    "linear:int4": (GROUPSIZES, 32, ("eager", "aoti", "et")),
    "linear:a8w4dq": (GROUPSIZES, 32, ("eager", "et")),
    "embedding:int8": (None, 0, ("eager", "aoti", "et")),
    "embedding:int4": (None, 32, ("eager", "aoti", "et")),
}
REFUSAL_HINT = {
    # Inductor has no int8-activation GEMM on CPU: it would fold the weights back to float.
    "aoti": "it has no kernel for int8 activations and would store float weights; use linear:int4 or linear:int8",
}
# The option values a scheme takes: option -> (values, default).
ACTIVATIONS = (("fp32", "int8"), "fp32")
OPTIONS = {
    "linear:int8": {"activations": ACTIVATIONS},
    "linear:int4": {"output": (("int8", "int4"), "int8"), "activations": ACTIVATIONS},
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
    choices = OPTIONS.get(key, {})
    known = ("groupsize", *choices)
    unknown = set(options) - set(known)
    if unknown:
        takes = known[0] if len(known) == 1 else f"{', '.join(known[:-1])} and {known[-1]}"
        raise UserError(f"--quantize: {key} has no option {sorted(unknown)[0]!r} (it takes {takes})")
    g = options.get("groupsize", default)
    if not isinstance(g, int) or isinstance(g, bool) or g < 0:
        raise UserError(f"--quantize: {key} groupsize must be a non-negative integer, got {json.dumps(g)}")
    if allowed is not None and g not in allowed:
        what = ", ".join("0 (per output channel)" if a == 0 else str(a) for a in allowed)
        raise UserError(f"--quantize: {key} groupsize must be {what}, got {g}")
    parsed = {"groupsize": g}
    for option, (values, value_default) in choices.items():
        value = options.get(option, value_default)
        if value not in values:
            what = " or ".join(json.dumps(v) for v in values)
            raise UserError(f"--quantize: {key} {option} must be {what}, got {json.dumps(value)}")
        parsed[option] = value
    return parsed


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
            text = f"{key} g{options['groupsize']}" if options["groupsize"] else key
            text += f" (output {options['output']})" if "output" in options else ""
            parts.append(text + (", int8 activations" if options.get("activations") == "int8" else ""))
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Quantized modules (weights quantized on construction; forward = dequantized math)


def _groups(w: Tensor, groupsize: int) -> Tensor:
    """w [rows, cols] as [rows, cols // g, g] (g = cols when groupsize is 0), in fp32."""
    rows, cols = w.shape
    g = groupsize or cols
    return w.float().reshape(rows, cols // g, g)


class Int8Linear(nn.Module):
    """Weight-only int8, symmetric, fp32 scales: one per output channel (groupsize 0, scales [N])
    or one per group of `groupsize` weights of a row (scales [N, K / groupsize]).

    fp32 activations: our kernel splits each block of 32 into three int8 slices (fp32 accuracy
    from integer dot products, kernels/quant_linear.h), the weights in panels of 16 rows for it
    (kernels.pack_int8_panels). A layer whose input width is not a multiple of 32 keeps row-major
    weights and the kernel that widens them to fp32 (int8_weight_linear). Eager PyTorch, AOT
    Inductor and ExecuTorch."""

    def __init__(self, weight: Tensor, groupsize: int = 0):
        super().__init__()
        q, scale = kernels.quantize_int8(weight, groupsize)
        self.panels = weight.shape[1] % 32 == 0
        if self.panels:
            self.register_buffer("weight", kernels.pack_int8_panels(q, scale))
        else:
            self.register_buffer("weight", q)
            self.register_buffer("scales", scale)
        self.groupsize, self.in_features, self.out_features = groupsize, weight.shape[1], weight.shape[0]

    def codes(self) -> tuple[Tensor, Tensor]:
        """(q int8 [N, K], scale [N] or [N, K / groupsize]): what quantize_int8 made."""
        if not self.panels:
            return self.weight, self.scales
        q, scale = kernels.unpack_int8_panels(self.weight, self.out_features)
        return q, scale.squeeze(1) if self.groupsize == 0 else scale

    def forward(self, x: Tensor) -> Tensor:
        if not self.panels:
            return torch.ops.torchchat.int8_weight_linear(x, self.weight, self.scales)
        return torch.ops.torchchat.int8_panel_weight_linear(x, self.weight, self.out_features)


class Int8A8Linear(Int8Linear):
    """Int8Linear's weights and scales, times each token's activations quantized to int8 per block
    of 32 values on the fly (one slice): integer dot products at a third of Int8Linear's count,
    slightly less exact (our AVX-512 VNNI kernel). Eager PyTorch, AOT Inductor and ExecuTorch."""

    def __init__(self, weight: Tensor, groupsize: int = 0):
        super().__init__(weight, groupsize)
        assert self.panels, "int8 activations need input widths that are multiples of 32 (check_divides)"

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.torchchat.int8_a8_weight_linear(x, self.weight, self.out_features)


class Int4Linear(nn.Module):
    """Weight-only int4, min/max per group: w = q * scale + min, q in [0, 15], fp16 scale and min.

    fp32 activations: our kernel splits each block of 32 into three int8 slices (fp32 accuracy
    from integer dot products, kernels/quant_linear.h), the weights in panels of 16 rows for it
    (kernels.pack_int4_panels). Eager PyTorch, AOT Inductor and ExecuTorch."""

    def __init__(self, weight: Tensor, groupsize: int):
        super().__init__()
        q, scales_mins = kernels.quantize_int4(weight, groupsize)
        self.register_buffer("weight", kernels.pack_int4_panels(q, scales_mins, groupsize))
        self.groupsize, self.in_features, self.out_features = groupsize, weight.shape[1], weight.shape[0]

    def codes(self) -> tuple[Tensor, Tensor]:
        """(q uint8 [N, K] in [0, 15], scales_mins fp16 [N, K / groupsize, 2]): what quantize_int4 made."""
        return kernels.unpack_int4_panels(self.weight, self.out_features, self.groupsize)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.torchchat.int4_panel_weight_linear(x, self.weight, self.out_features, self.groupsize)


class Int4A8Linear(Int4Linear):
    """Int4Linear's weights and math, times each token's activations quantized to int8 per block of
    32 values on the fly (one slice, as llama.cpp's Q4_1 x Q8_1): integer dot products at a third
    of Int4Linear's count, slightly less exact (our AVX-512 VNNI kernel). Eager PyTorch, AOT
    Inductor and ExecuTorch."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.torchchat.int4_a8_weight_linear(x, self.weight, self.out_features, self.groupsize)


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


def check_backend(spec: dict, backend: str, dtype: Optional[str] = None) -> None:
    """Refuse what `backend` cannot run, in one line; `dtype` (fp32, bf16, fp16) if known."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend}")
    name = {"eager": "eager PyTorch", "aoti": "AOT Inductor", "et": "ExecuTorch"}[backend]
    for key in spec:
        if key != "precision" and backend not in SCHEMES[key][2]:
            hint = REFUSAL_HINT.get(backend, "")
            raise UserError(f"--quantize: {name} cannot run {key}" + (f" ({hint})" if hint else ""))
        # Our ExecuTorch kernels take fp32 activations only (kernels/executorch_ops.cpp).
        if backend == "et" and key in kernels.QUANTIZE_SCHEMES and dtype not in (None, "fp32"):
            raise UserError(f"--quantize: ExecuTorch runs {key} in fp32 only, not {dtype} (export with --dtype fp32)")


def check_divides(model: nn.Module, kind: type, key: str, groupsize: int, what: str = "groupsize") -> None:
    """A groupsize must divide every quantized layer's input dimension (embedding: its width)."""
    for name, m in model.named_modules():
        if isinstance(m, kind):
            width = m.weight.shape[1]
            if groupsize and width % groupsize:
                raise UserError(f"--quantize: {key} {what} {groupsize} does not divide {name}'s "
                                f"input dimension {width} ({m.weight.shape[0]}x{width})")


def quantize_model(model: nn.Module, spec: dict, backend: str) -> None:
    """Quantize `model` in place for `backend` ('eager', 'aoti' or 'et'); before setup_caches/export."""
    check_backend(spec, backend)
    for key, options in spec.items():
        if key != "precision":
            check_divides(model, nn.Linear if key.startswith("linear:") else nn.Embedding, key, options["groupsize"])
        if options.get("activations") == "int8":  # the activations are quantized per block of 32
            check_divides(model, nn.Linear, key + " with int8 activations", 32, what="block size")
    for key, options in spec.items():
        g = options.get("groupsize", 0)
        a8 = options.get("activations") == "int8"
        int8 = Int8A8Linear if a8 else Int8Linear  # linear:int8's layers, linear:int4's int8 output layer
        if key == "linear:int8":
            kernels.load()
            fuse_projections(model)
            swap(model, nn.Linear, lambda m: int8(m.weight, g))
        elif key == "linear:int4":
            kernels.load()
            if options["output"] == "int8" and type(getattr(model, "output", None)) is nn.Linear:
                model.output = int8(model.output.weight)
            fuse_projections(model)
            int4 = Int4A8Linear if a8 else Int4Linear
            swap(model, nn.Linear, lambda m: int4(m.weight, g))
        elif key == "linear:a8w4dq":
            quantize_a8w4dq(model, g)
        elif key == "embedding:int8":
            swap(model, nn.Embedding, lambda m: QuantizedEmbedding(m.weight, 8, g))
        elif key == "embedding:int4":
            swap(model, nn.Embedding, lambda m: QuantizedEmbedding(m.weight, 4, g))


def fuse_projections(model: nn.Module) -> None:
    """Each layer's wq/wk/wv as one wqkv, and w1/w3 as one w13 (model.py runs either form).

    For our kernels: one call instead of three (two) saves about 20 µs per layer and token at
    2 threads (thread start-up and the first rows' memory latency are paid once; bench/README).
    Every output row keeps its own scales, so the quantized weights are the same as unfused."""
    for m, name, parts in unfused_projections(model):
        w = torch.cat([getattr(m, part).weight.detach() for part in parts])
        # On the meta device: no random initialisation of a weight that is replaced at once.
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta", dtype=w.dtype)
        fused.weight = nn.Parameter(w, requires_grad=False)
        setattr(m, name, fused)
        for part in parts:
            delattr(m, part)


def swap(model: nn.Module, kind: type, make) -> None:
    for name, child in list(model.named_children()):
        if type(child) is kind:
            setattr(model, name, make(child))
        else:
            swap(child, kind, make)


def quantize_a8w4dq(model: nn.Module, groupsize: int) -> None:
    quiet_executorch_imports()  # torchao logs a warning per CUDA extension it cannot load
    # Here, not above: torchao comes with executorch, an optional dependency slow to import.
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    # quantize_ puts a new weight on each Linear: a tied embedding keeps its own tensor.
    with torch.no_grad():
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                               weight_granularity=PerGroup(groupsize)),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
