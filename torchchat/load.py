"""From command-line arguments to a ready model: weights, tokenizer, and chat conventions.

A model is named by a registry alias (its cache folder holds weights and tokenizer), or
given directly with --checkpoint-path / --gguf-path / --tokenizer-path; an exported artifact
(--dso-path, --aoti-package-path, --pte-path) brings its own metadata and needs the tokenizer.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from torchchat import chat_template as templates
from torchchat import quantize, registry
from torchchat.backends.aoti import AOTIDecoder
from torchchat.checkpoints import load_checkpoint
from torchchat.errors import UserError
from torchchat.metadata import ModelInfo
from torchchat.model import ModelArgs, Transformer
from torchchat.tokenizer import check_fits, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_info(args: ModelArgs, tokenizer, chat_template: Optional[str] = None,
               own_template: Optional[str] = None) -> ModelInfo:
    """chat_template: the registry's template name; own_template: the checkpoint's Jinja template."""
    kind = chat_template or tokenizer.chat_template
    return ModelInfo(
        vocab_size=args.vocab_size,
        max_seq_len=args.max_seq_len,
        bos_id=tokenizer.bos_id,
        add_bos=tokenizer.add_bos,
        stop_ids=list(tokenizer.stop_ids),
        tokenizer_kind=tokenizer.kind,
        chat_template=kind,
        chat_turns=model_chat_turns(tokenizer, kind, own_template),
    )


def model_chat_turns(tokenizer, kind: str, own_template: Optional[str]) -> Optional[dict]:
    """The model's own template (else the registry's default for `kind`) cut into chat turns, or None
    for the built-in template `kind`. A template that cannot be followed turn by turn is reported
    and the built-in one is used."""
    source = own_template or templates.DEFAULT_TEMPLATES.get(kind)
    if source is None or (own_template is None and tokenizer.kind == "sentencepiece"):
        return None
    try:
        return templates.chat_turns(source, tokenizer.template_tokens(), tokenizer.control_tokens)
    except UserError as e:
        print(f"warning: {e}; chat uses the built-in {kind} template", file=sys.stderr)
        return None


def own_chat_template(checkpoint: Path, tokenizer_path: Optional[Path]) -> Optional[str]:
    """The Jinja chat template the checkpoint ships: a GGUF's tokenizer.chat_template, or a Hugging
    Face folder's (beside the weights, else beside the tokenizer)."""
    if checkpoint.suffix == ".gguf" and checkpoint.is_file():
        from torchchat.checkpoints.gguf import field, open_gguf  # here: imports gguf (start-up time)

        source = field(open_gguf(checkpoint), "tokenizer.chat_template")
        return source if isinstance(source, str) else None
    folders = [checkpoint if checkpoint.is_dir() else checkpoint.parent]
    if tokenizer_path is not None:
        folders.append(tokenizer_path.parent)
    for folder in folders:
        source = templates.hf_chat_template(folder)
        if source:
            return source
    return None


@dataclass
class LoadedModel:
    model: Transformer  # or, for an exported artifact, its decoder
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
    files = registry.model_files(args.model)
    tokenizer = Path(args.tokenizer_path) if args.tokenizer_path else files.tokenizer
    if files.checkpoint.suffix == ".gguf" and not args.tokenizer_path:
        tokenizer = None  # the GGUF's own tokenizer keeps its bos/eos ids; tokenizer.json is for the runner
    params = Path(args.params_path) if args.params_path else files.params
    return files.checkpoint, tokenizer, params, files.entry.chat_template


def load_tokenizer_for(checkpoint: Path, tokenizer_path: Optional[Path]):
    if tokenizer_path is None:
        if checkpoint.suffix == ".gguf" and checkpoint.is_file():
            return load_tokenizer(checkpoint)  # a GGUF carries its tokenizer (and its bos/eos ids)
        raise UserError(f"no tokenizer found beside {checkpoint}; give --tokenizer-path")
    return load_tokenizer(tokenizer_path)


def quantize_spec(args, backend: str) -> Optional[dict]:
    """--quantize parsed and checked for `backend` (eager, aoti or et), or None without it."""
    if not getattr(args, "quantize", None):
        return None
    spec = quantize.parse_quantize(args.quantize)
    quantize.check_backend(spec, backend, quantize.precision(spec) or args.dtype)
    return spec


def load_model(args, backend: str = "eager", spec: Optional[dict] = None) -> LoadedModel:
    """Load weights and tokenizer named by the command-line arguments, quantized for `backend`
    (eager, aoti or et) if --quantize is given. `spec`: quantize_spec's result when the caller
    has checked --quantize already (before announcing the load)."""
    if spec is None:
        spec = quantize_spec(args, backend)  # before the slow part
    dtype_name = quantize.precision(spec) or args.dtype
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
    info = model_info(model_args, tokenizer, template, own_chat_template(checkpoint, tokenizer_path))
    if spec:
        quantize.quantize_model(model, spec, backend)
        info.quantize = spec
    return LoadedModel(model, tokenizer, info, dtype_name)


def load_exported(path: str | Path, tokenizer_path=None, alias=None, decoder_class=AOTIDecoder):
    """(decoder, tokenizer, ModelInfo) for an artifact; the tokenizer from --tokenizer-path or the alias.

    decoder_class: AOTIDecoder, or torchchat.backends.executorch.PTEDecoder for an ExecuTorch program."""
    decoder = decoder_class(path)
    if tokenizer_path is None and alias:
        tokenizer_path = registry.model_files(alias).tokenizer
    if tokenizer_path is None:
        raise UserError("an exported model needs a tokenizer: give --tokenizer-path or a model alias")
    tokenizer = load_tokenizer(Path(tokenizer_path))
    check_fits(tokenizer, decoder.info.vocab_size)
    info: ModelInfo = decoder.info
    return decoder, tokenizer, info
