"""From command-line arguments to a ready model: weights, tokenizer, and chat conventions.

A model is named by a registry alias (its cache folder holds weights and tokenizer), or
given directly with --checkpoint-path / --gguf-path / --tokenizer-path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from torchchat.errors import UserError
from torchchat.model import ModelArgs, Transformer, length_tensor, size_inputs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelInfo:
    """What generate and chat need to know besides the weights (also stored in exported artifacts)."""

    vocab_size: int
    max_seq_len: int
    bos_id: Optional[int]
    add_bos: bool
    stop_ids: list[int]
    tokenizer_kind: str
    chat_template: str
    quantize: Optional[dict] = None  # the --quantize spec the weights went through (torchchat/quantize.py)


def model_info(args: ModelArgs, tokenizer, chat_template: Optional[str] = None) -> ModelInfo:
    return ModelInfo(
        vocab_size=args.vocab_size,
        max_seq_len=args.max_seq_len,
        bos_id=tokenizer.bos_id,
        add_bos=tokenizer.add_bos,
        stop_ids=list(tokenizer.stop_ids),
        tokenizer_kind=tokenizer.kind,
        chat_template=chat_template or tokenizer.chat_template,
    )


class EagerDecoder:
    """The PyTorch model behind the generate loop, optionally torch.compile'd for decode."""

    def __init__(self, model: Transformer, max_seq_len: int, compile: bool = False):
        model.setup_caches(max_seq_len)
        self.model, self.max_seq_len, self.vocab_size = model, max_seq_len, model.args.vocab_size
        self.decode = compile_for_decode(model) if compile else None
        self.lengths = length_tensor(max_seq_len)  # sliced for kv_len and n_logits

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # Decode (one token) is the hot path and has one static shape: that is what we compile,
        # over the whole cache (a kv_len growing every token would recompile every token).
        if self.decode is not None and tokens.size(1) == 1:
            return self.decode(tokens, input_pos)
        # Otherwise attention over the filled positions only, and logits only where wanted.
        return self.model(tokens, input_pos, *size_inputs(self.lengths, input_pos, tokens.size(1), last_only))


def compile_for_decode(model: Transformer):
    import torch._inductor.config as inductor_config

    # Freezing folds the weights into the graph as constants, which lets inductor pick
    # its own CPU GEMV/GEMM templates; ATen's batch-1 matmul streams weights at a
    # third of the memory bandwidth on this class of machine.
    inductor_config.freezing = True
    inductor_config.max_autotune = True
    inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
    return torch.compile(model, fullgraph=True, dynamic=False)


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: object
    info: ModelInfo
    dtype: str = "fp32"  # --dtype, or --quantize's precision


def resolve_paths(args) -> tuple[Path, Optional[Path], Optional[Path], Optional[str]]:
    """(checkpoint, tokenizer, params, chat_template) from an alias or explicit paths."""
    explicit = args.gguf_path or args.checkpoint_path
    if explicit:
        checkpoint = Path(explicit)
        tokenizer = Path(args.tokenizer_path) if args.tokenizer_path else None
        if tokenizer is None and checkpoint.suffix != ".gguf":
            for name in ("tokenizer.json", "tokenizer.model"):
                if (checkpoint.parent / name).is_file():
                    tokenizer = checkpoint.parent / name
                    break
        params = Path(args.params_path) if args.params_path else None
        return checkpoint, tokenizer, params, None
    if not args.model:
        raise UserError("name a model (e.g. smollm2-135m) or give --checkpoint-path / --gguf-path")
    from torchchat import registry

    files = registry.model_files(args.model)
    tokenizer = Path(args.tokenizer_path) if args.tokenizer_path else files.tokenizer
    if files.checkpoint.suffix == ".gguf" and not args.tokenizer_path:
        tokenizer = None  # the GGUF's own tokenizer keeps its bos/eos ids; tokenizer.json is for the runner
    params = Path(args.params_path) if args.params_path else files.params
    return files.checkpoint, tokenizer, params, files.entry.chat_template


def load_tokenizer_for(checkpoint: Path, tokenizer_path: Optional[Path]):
    from torchchat.tokenizer import load_tokenizer

    if tokenizer_path is None:
        if checkpoint.suffix == ".gguf" and checkpoint.is_file():
            return load_tokenizer(checkpoint)  # a GGUF carries its tokenizer (and its bos/eos ids)
        raise UserError(f"no tokenizer found beside {checkpoint}; give --tokenizer-path")
    return load_tokenizer(tokenizer_path)


def load_model(args, backend: str = "eager") -> LoadedModel:
    """Load weights and tokenizer named by the command-line arguments, quantized for `backend`
    (eager, aoti or et) if --quantize is given."""
    from torchchat import quantize
    from torchchat.checkpoint import load_checkpoint
    from torchchat.tokenizer import check_fits

    spec = quantize.parse_quantize(args.quantize) if getattr(args, "quantize", None) else None
    dtype_name = quantize.precision(spec) or args.dtype
    if spec:
        quantize.check_backend(spec, backend, dtype_name)  # before the slow part
    checkpoint, tokenizer_path, params, template = resolve_paths(args)
    model_args, state_dict = load_checkpoint(checkpoint, params)
    tokenizer = load_tokenizer_for(checkpoint, tokenizer_path)
    check_fits(tokenizer, model_args.vocab_size)
    dtype = DTYPES[dtype_name]
    with torch.device("meta"):
        model = Transformer(model_args)
    if model_args.tie_embeddings:
        state_dict = {**state_dict, "output.weight": state_dict["tok_embeddings.weight"]}
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise UserError(f"{checkpoint}: weights do not fit the model config: {first[0].strip()}") from None
    if model_args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight  # one tensor, not two copies
    model = model.to(dtype=dtype).eval()
    info = model_info(model_args, tokenizer, template)
    if spec:
        quantize.quantize_model(model, spec, backend)
        info.quantize = spec
    return LoadedModel(model, tokenizer, info, dtype_name)
