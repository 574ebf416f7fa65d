"""Pickled checkpoints: llama2.c / torchchat `.pt` (weights and model_args in one file, or a bare
state dict with params.json), Meta's `consolidated.NN.pth` shards with `params.json`, and
Hugging Face's `pytorch_model.bin` (handed to torchchat/checkpoints/hf.py)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from torchchat.checkpoints.checks import StateDict, check_shapes, read_json
from torchchat.checkpoints.hf import load_hf
from torchchat.errors import UserError, first_line
from torchchat.model import ModelArgs


def torch_load(path: Path) -> object:
    try:
        # mmap needs the zip format (torch >= 1.6); legacy pickles load without it.
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        if "Weights only load failed" in str(e):
            # torch's own advice is to unpickle with weights_only=False: running code from the file.
            raise UserError(f"{path}: the checkpoint holds Python objects besides tensors, which are not loaded "
                            "(unpickling them could run code from the file); save its state dict alone") from None
        raise UserError(f"{path}: cannot read as a PyTorch checkpoint ({first_line(e)})") from None


def load_pickle(path: Path, params_path: Optional[Path]) -> tuple[ModelArgs, StateDict]:
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state dict, found {type(obj).__name__}")
    if isinstance(obj.get("model"), dict):
        # llama2.c / torchchat training checkpoint: weights and config in one file.
        state_dict, params = obj["model"], obj.get("model_args")
        if params_path is not None:
            params = read_json(params_path)
        if not isinstance(params, dict):
            raise UserError(f"{path}: no model_args in the checkpoint; give --params-path params.json")
        return meta_args_and_weights(params, state_dict, path)
    if not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a llama state dict")
    if "model.embed_tokens.weight" in obj or any(k.startswith("model.layers.") for k in obj):
        return load_hf(path, params_path, raw=obj)  # pytorch_model.bin: HF names, config.json beside
    shards = _sibling_shards(path)
    if len(shards) > 1:
        return load_meta(shards, params_path or path.parent / "params.json", first=obj)
    params_path = params_path or path.parent / "params.json"
    if not params_path.is_file():
        raise UserError(f"{path}: a bare state dict needs its config: params.json not found beside it; give --params-path")
    return meta_args_and_weights(read_json(params_path), obj, path)


def _sibling_shards(path: Path) -> list[Path]:
    """consolidated.00.pth .. consolidated.NN.pth beside `path`, when `path` is one of them."""
    m = re.fullmatch(r"(.*\.)(\d+)\.pth", path.name)
    if not m:
        return [path]
    return sorted(path.parent.glob(f"{m.group(1)}[0-9]*.pth"))


def load_meta(shards: list[Path], params_path: Path, first: Optional[StateDict] = None) -> tuple[ModelArgs, StateDict]:
    if not Path(params_path).is_file():
        raise UserError(f"{shards[0]}: params.json not found beside it; give --params-path")
    params = read_json(params_path)
    parts = [first if (first is not None and i == 0) else torch_load(p) for i, p in enumerate(shards)]
    for p, sd in zip(shards, parts):
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise UserError(f"{p}: not a llama state dict")
    state_dict = parts[0] if len(parts) == 1 else merge_meta_shards(parts, params.get("dim"))
    return meta_args_and_weights(params, state_dict, shards[0])


# Meta's model-parallel layers: column-parallel linears are split along the output (dim 0),
# row-parallel ones along the input (dim 1); norms are replicated.
_SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def merge_meta_shards(parts: list[StateDict], dim: Optional[int]) -> StateDict:
    merged = {}
    for name, first in parts[0].items():
        tensors = [p[name] for p in parts]
        kind = name.split(".")[-2] if name.endswith(".weight") else ""
        if first.dim() < 2:
            merged[name] = first
        elif kind == "tok_embeddings":
            # llama2 splits the embedding width, llama3 the vocabulary: pick whichever fits `dim`.
            merged[name] = torch.cat(tensors, dim=0 if first.shape[1] == dim else 1)
        elif kind in _SPLIT_DIM:
            merged[name] = torch.cat(tensors, dim=_SPLIT_DIM[kind])
        else:
            merged[name] = first
    return merged


def meta_args_and_weights(params: dict, state_dict: StateDict, path: Path) -> tuple[ModelArgs, StateDict]:
    """ModelArgs from Meta / llama2.c params, and the weights under model.py's names."""
    # torch.compile'd training runs save under `_orig_mod.`; DDP under `module.`.
    state_dict = {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in state_dict.items()}
    # Buffers that model.py recomputes.
    state_dict = {k: v for k, v in state_dict.items() if k not in ("rope.freqs", "freqs_cos", "freqs_sin")}
    emb = state_dict.get("tok_embeddings.weight")
    if emb is None or emb.dim() != 2:
        raise UserError(f"{path}: no tok_embeddings.weight: not a llama checkpoint")
    # Meta's params.json says vocab_size -1 for llama2; the embedding knows.
    vocab_size = params.get("vocab_size", -1)
    if vocab_size is None or vocab_size <= 0:
        vocab_size = emb.shape[0]
    w1 = state_dict.get("layers.0.feed_forward.w1.weight")
    try:
        args = ModelArgs(
            dim=params["dim"],
            n_layers=params["n_layers"],
            n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads"),
            vocab_size=vocab_size,
            # The stored width settles llama's multiple_of / ffn_dim_multiplier rounding.
            hidden_dim=params.get("hidden_dim") or (w1.shape[0] if w1 is not None else None),
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=params.get("rope_theta", 10000.0),
            rope_scaling=_meta_rope_scaling(params),
            max_seq_len=params.get("max_seq_len") or _default_context(params, vocab_size),
        )
    except KeyError as e:
        raise UserError(f"{path}: model config lacks {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: bad model config: {first_line(e)}") from None
    out = state_dict.get("output.weight")
    if out is not None and _same_tensor(out, emb):
        # llama2.c ties output to the embedding and saves both names for one tensor.
        args.tie_embeddings = True
        del state_dict["output.weight"]
    elif out is None:
        args.tie_embeddings = True
    check_shapes(args, state_dict, path)
    return args, state_dict


def _meta_rope_scaling(params: dict) -> Optional[dict]:
    if not params.get("use_scaled_rope"):
        return None
    # Llama 3.1's constants; llama 3.2's params.json may carry its own factor.
    return {
        "factor": params.get("rope_scaling_factor", 8.0),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def _default_context(params: dict, vocab_size: int) -> int:
    # params.json does not state the context; these are the published ones.
    if params.get("use_scaled_rope"):
        return 131072
    return 8192 if vocab_size >= 128000 else 4096 if params.get("dim", 0) >= 4096 else 2048


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.storage_offset() == b.storage_offset():
        return True
    return False
