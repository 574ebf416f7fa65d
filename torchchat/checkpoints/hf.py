"""Hugging Face checkpoints: `*.safetensors` (one file, or shards named by an index) with `config.json`,
under model.py's names (q/k rows back in Meta's interleaved rotary layout)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from safetensors import safe_open
from torch import Tensor

from torchchat.checkpoints.checks import StateDict, check_shapes, read_json, sniff
from torchchat.errors import UserError, first_line
from torchchat.model import ModelArgs


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
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError for truncated / corrupt headers
        raise UserError(f"{path}: cannot read safetensors ({first_line(e)})") from None


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
        raise UserError(f"{config_path}: bad config: {first_line(e)}") from None
