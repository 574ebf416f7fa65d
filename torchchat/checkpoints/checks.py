"""What every checkpoint format shares: the format by content, JSON configs, and the shape check
that fails with one line when weights and config disagree (before the model is built)."""
from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from torchchat.errors import UserError, first_line
from torchchat.model import ModelArgs

StateDict = dict[str, Tensor]


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
        raise UserError(f"{path}: not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
