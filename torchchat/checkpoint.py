"""Read a checkpoint in any format we know into ModelArgs plus a state dict in model.py's naming.

Formats, detected from the file's content rather than its name:
  * llama2.c / torchchat `.pt`: a pickle with "model" (state dict) and "model_args", or a bare
    state dict with a params.json.
  * Meta `consolidated.NN.pth` shards with `params.json`.
  * Hugging Face `*.safetensors` (one file or sharded by an index) with `config.json`.
  * GGUF (see gguf_loader).
Every problem with the input becomes a one-line UserError.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from torchchat.errors import UserError
from torchchat.model import ModelArgs

StateDict = dict[str, Tensor]


def load_checkpoint(path: Path, params_path: Optional[Path] = None) -> tuple[ModelArgs, StateDict]:
    path = Path(path)
    params_path = Path(params_path) if params_path else None
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if params_path is not None and not params_path.is_file():
        raise UserError(f"params file not found: {params_path}")
    if path.is_dir():
        return _load_dir(path, params_path)
    kind = sniff(path)
    if kind == "gguf":
        from torchchat.gguf_loader import load_gguf

        return load_gguf(path)
    if kind in ("safetensors", "safetensors_index", "hf_config"):
        return load_hf(path, params_path)
    if kind == "pickle":
        return _load_pickle(path, params_path)
    raise UserError(f"{path}: not a checkpoint we can read (expected .pt/.pth, safetensors or GGUF)")


def sniff(path: Path) -> str:
    """The format of a file from its first bytes: gguf, safetensors, pickle, json kinds, or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"GGUF":
        return "gguf"
    # torch.save writes a zip archive; older torch and python pickles start with the protocol byte.
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    # safetensors: little-endian u64 header length, then a JSON header.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return "unknown"
        if isinstance(data, dict) and "weight_map" in data:
            return "safetensors_index"
        if isinstance(data, dict) and "hidden_size" in data:
            return "hf_config"
    return "unknown"


def _load_dir(path: Path, params_path: Optional[Path]) -> tuple[ModelArgs, StateDict]:
    if (path / "config.json").is_file() and (list(path.glob("*.safetensors"))):
        return load_hf(path, params_path)
    shards = sorted(path.glob("consolidated.*.pth"))
    if shards:
        return load_meta(shards, params_path or path / "params.json")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_checkpoint(ggufs[0])
    raise UserError(f"{path}: no checkpoint found in this directory (config.json + *.safetensors, consolidated.*.pth or one .gguf)")


# ---------------------------------------------------------------------------------------------
# Pickles: llama2.c / torchchat .pt and Meta consolidated.pth


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
        raise UserError(f"{path}: cannot read as a PyTorch checkpoint ({_first_line(e)})") from None


def _load_pickle(path: Path, params_path: Optional[Path]) -> tuple[ModelArgs, StateDict]:
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
        return _meta_args_and_weights(params, state_dict, path)
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
    return _meta_args_and_weights(read_json(params_path), obj, path)


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
    return _meta_args_and_weights(params, state_dict, shards[0])


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


def _meta_args_and_weights(params: dict, state_dict: StateDict, path: Path) -> tuple[ModelArgs, StateDict]:
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
        raise UserError(f"{path}: bad model config: {_first_line(e)}") from None
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


# ---------------------------------------------------------------------------------------------
# Hugging Face safetensors + config.json


_HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def load_hf(path: Path, config_path: Optional[Path] = None, raw: Optional[StateDict] = None) -> tuple[ModelArgs, StateDict]:
    folder = path if path.is_dir() else path.parent
    config_path = config_path or folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path}: config.json not found beside the Hugging Face weights; give --params-path")
    config = read_json(config_path)
    if raw is None:
        raw = {}
        for f in _safetensors_files(path, folder):
            raw.update(read_safetensors(f))
    args = hf_model_args(config, config_path)
    state_dict = {}
    for name, tensor in raw.items():
        ours = hf_to_meta_name(name)
        if ours is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise UserError(f"{path}: unexpected tensor {name!r}: not a plain llama model")
        if ours.endswith("attention.wq.weight"):
            tensor = unpermute_hf_rotary(tensor, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            tensor = unpermute_hf_rotary(tensor, args.n_kv_heads)
        state_dict[ours] = tensor
    if args.tie_embeddings:
        state_dict.pop("output.weight", None)
    elif "output.weight" not in state_dict:
        # Some exports leave out lm_head while config says untied; the embedding is the only candidate.
        args.tie_embeddings = True
    check_shapes(args, state_dict, path)
    return args, state_dict


def _safetensors_files(path: Path, folder: Path) -> list[Path]:
    kind = sniff(path) if path.is_file() else None
    if kind == "safetensors":
        return [path]
    index = path if kind == "safetensors_index" else folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index}: shard missing: {missing[0]}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no .safetensors files")
    return files


def read_safetensors(path: Path) -> StateDict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError for truncated / corrupt headers
        raise UserError(f"{path}: cannot read safetensors ({_first_line(e)})") from None


def hf_to_meta_name(name: str) -> Optional[str]:
    if name == "model.embed_tokens.weight":
        return "tok_embeddings.weight"
    if name == "model.norm.weight":
        return "norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
    if m and m.group(2) in _HF_LAYER_NAMES:
        return f"layers.{m.group(1)}.{_HF_LAYER_NAMES[m.group(2)]}.weight"
    return None


def unpermute_hf_rotary(w: Tensor, n_heads: int) -> Tensor:
    """HF's rotate-half layout -> Meta's interleaved pairs (inverse of HF's convert_llama_weights permute).

    Per head, HF stores the first halves of all rotary pairs, then the second halves;
    Meta interleaves them: (x0, x1), (x2, x3), ...
    """
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_model_args(config: dict, config_path: Path) -> ModelArgs:
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "mistral"):
        raise UserError(f"{config_path}: model_type {model_type!r} is not a llama model")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise UserError(f"{config_path}: attention/MLP biases are not supported")
    if model_type == "mistral" and config.get("sliding_window"):
        raise UserError(f"{config_path}: sliding-window attention is not supported")
    try:
        dim, n_heads = config["hidden_size"], config["num_attention_heads"]
        head_dim = config.get("head_dim") or dim // n_heads
        if head_dim * n_heads != dim:
            raise UserError(f"{config_path}: head_dim {head_dim} x {n_heads} heads != hidden_size {dim}; not supported")
        # transformers 5 writes rope_parameters; older configs rope_theta + rope_scaling.
        rope = dict(config.get("rope_scaling") or {})
        rope.update(config.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise UserError(f"{config_path}: rope scaling {rope_type!r} is not supported (only llama3)")
        scaling = None
        if rope_type == "llama3":
            scaling = {
                "factor": rope["factor"],
                "low_freq_factor": rope.get("low_freq_factor", 1.0),
                "high_freq_factor": rope.get("high_freq_factor", 4.0),
                "original_max_position_embeddings": rope.get("original_max_position_embeddings", 8192),
            }
        return ModelArgs(
            dim=dim,
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            vocab_size=config["vocab_size"],
            hidden_dim=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=config.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=scaling,
            max_seq_len=config.get("max_position_embeddings", 2048),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise UserError(f"{config_path}: config lacks {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"{config_path}: bad config: {_first_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# Shared checks


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    d, hd, kv = args.dim, args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {"tok_embeddings.weight": (args.vocab_size, d), "norm.weight": (d,)}
    if not args.tie_embeddings:
        shapes["output.weight"] = (args.vocab_size, d)
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (args.n_heads * hd, d),
            p + "attention.wk.weight": (kv, d),
            p + "attention.wv.weight": (kv, d),
            p + "attention.wo.weight": (d, args.n_heads * hd),
            p + "feed_forward.w1.weight": (args.hidden_dim, d),
            p + "feed_forward.w2.weight": (d, args.hidden_dim),
            p + "feed_forward.w3.weight": (args.hidden_dim, d),
            p + "attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
        })
    return shapes


def check_shapes(args: ModelArgs, state_dict: StateDict, path: Path) -> None:
    """Fail with one line when the weights and the config disagree, before the model is built."""
    expected = expected_shapes(args)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise UserError(f"{path}: weight {missing[0]} missing ({len(missing)} missing in all)")
    extra = [k for k in state_dict if k not in expected]
    if extra:
        raise UserError(f"{path}: unexpected weight {extra[0]} for a {args.n_layers}-layer model")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise UserError(
                f"{path}: {name} has shape {tuple(state_dict[name].shape)}, the config implies {shape}"
            )


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
