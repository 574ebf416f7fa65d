"""Read a checkpoint in any format we know into ModelArgs plus a state dict in model.py's naming.

Formats, detected from the file's content rather than its name (checks.sniff):
  * llama2.c / torchchat `.pt`, Meta `consolidated.NN.pth` shards with `params.json` (meta.py);
  * Hugging Face `*.safetensors` with `config.json` (hf.py);
  * GGUF, llama.cpp's one-file format, tokenizer included (gguf.py).
Every problem with the input becomes a one-line UserError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torchchat.checkpoints.checks import StateDict, sniff
from torchchat.checkpoints.gguf import load_gguf
from torchchat.checkpoints.hf import load_hf
from torchchat.checkpoints.meta import load_meta, load_pickle
from torchchat.errors import UserError
from torchchat.model import ModelArgs


def load_checkpoint(path: Path, params_path: Optional[Path] = None) -> tuple[ModelArgs, StateDict]:
    path = Path(path)
    params_path = Path(params_path) if params_path else None
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if params_path is not None and not params_path.is_file():
        raise UserError(f"params file not found: {params_path}")
    if path.is_dir():
        return load_dir(path, params_path)
    kind = sniff(path)
    if kind == "gguf":
        return load_gguf(path)
    if kind in ("safetensors", "safetensors_index", "hf_config"):
        return load_hf(path, params_path)
    if kind == "pickle":
        return load_pickle(path, params_path)
    raise UserError(f"{path}: not a checkpoint we can read (expected .pt/.pth, safetensors or GGUF)")


def load_dir(path: Path, params_path: Optional[Path]) -> tuple[ModelArgs, StateDict]:
    if (path / "config.json").is_file() and (list(path.glob("*.safetensors"))):
        return load_hf(path, params_path)
    shards = sorted(path.glob("consolidated.*.pth"))
    if shards:
        return load_meta(shards, params_path or path / "params.json")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_checkpoint(ggufs[0])
    raise UserError(f"{path}: no checkpoint found in this directory (config.json + *.safetensors, consolidated.*.pth or one .gguf)")
