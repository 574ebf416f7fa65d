"""GGUF (llama.cpp's format): weights, config and tokenizer from one file.

Weights are dequantized to float tensors under model.py's names. llama.cpp's converter already
stores q/k in Meta's interleaved rotary layout, so no permutation is needed. The tokenizer is
rebuilt from the metadata as llama.cpp reads it: a byte-level BPE vocabulary ("gpt2") as a Hugging
Face tokenizer.json, a SentencePiece one ("llama") as a SentencePiece model.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Optional

import gguf
import numpy as np
import torch
from torch import Tensor

from torchchat.checkpoints.checks import check_shapes
from torchchat.errors import UserError, first_line
from torchchat.model import ModelArgs, rope_frequencies

_LAYER_NAMES = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm",
    "ffn_norm": "ffn_norm",
}
_GLOBAL_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight", "output.weight": "output.weight"}


def open_gguf(path: Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    stat = path.stat()
    return _read_gguf(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_gguf(path: str, mtime_ns: int, size: int):
    # Parsing the metadata of a real model takes seconds (tens of thousands of token strings),
    # and loading a model reads it twice (weights, then tokenizer); the key notices a changed file.
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # truncated files fail in numpy memmap/reshape, garbage on the magic
        raise UserError(f"{path}: cannot read as GGUF ({first_line(e)})") from None


def field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value.item() if isinstance(value, np.generic) else value


def load_gguf(path: Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    path = Path(path)
    reader = open_gguf(path)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"{path}: architecture {arch!r} is not supported (only llama)")
    state_dict, rope_factors = {}, None
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            rope_factors = torch.from_numpy(np.array(t.data, dtype=np.float32))
            continue
        name = gguf_to_meta_name(t.name)
        if name is None:
            raise UserError(f"{path}: unexpected tensor {t.name!r}: not a plain llama model")
        try:
            state_dict[name] = dequantize_tensor(t)
        except NotImplementedError:
            raise UserError(f"{path}: {t.name}: quantization {t.tensor_type.name} is not supported") from None
    args = gguf_model_args(reader, path, state_dict, rope_factors)
    check_shapes(args, state_dict, path)
    return args, state_dict


def gguf_to_meta_name(name: str) -> Optional[str]:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def dequantize_tensor(t) -> Tensor:
    # numpy shape is GGUF's shape reversed: [rows, cols] like torch's Linear.weight.
    shape = tuple(int(n) for n in reversed(t.shape))
    kind = t.tensor_type
    if kind == gguf.GGMLQuantizationType.F16:
        return torch.from_numpy(np.array(t.data, dtype=np.float16).reshape(shape))
    values = gguf.quants.dequantize(np.asarray(t.data), kind)
    # np.array copies: the reader's arrays are read-only views of the memory-mapped file.
    tensor = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
    # BF16 round-trips exactly through fp32; keep the file's precision and half the memory.
    return tensor.to(torch.bfloat16) if kind == gguf.GGMLQuantizationType.BF16 else tensor


def gguf_model_args(reader, path: Path, state_dict: dict[str, Tensor], rope_factors: Optional[Tensor]) -> ModelArgs:
    def key(name, default=None):
        value = field(reader, f"llama.{name}", default)
        if value is None:
            raise UserError(f"{path}: metadata llama.{name} missing")
        return value

    emb = state_dict.get("tok_embeddings.weight")
    if emb is None:
        raise UserError(f"{path}: no token_embd.weight tensor")
    dim, n_heads = key("embedding_length"), key("attention.head_count")
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads <= 0 or not isinstance(dim, int):
        raise UserError(f"{path}: bad model metadata: llama.attention.head_count is {n_heads!r}")
    rot_dim = field(reader, "llama.rope.dimension_count", dim // n_heads)
    if rot_dim != dim // n_heads:
        raise UserError(f"{path}: partial rotary ({rot_dim} of {dim // n_heads} dims) is not supported")
    scaling_type = field(reader, "llama.rope.scaling.type", "none")
    if scaling_type not in ("none", "llama3") and field(reader, "llama.rope.scaling.factor", 1.0) != 1.0:
        raise UserError(f"{path}: rope scaling {scaling_type!r} is not supported")
    try:
        args = ModelArgs(
            dim=dim,
            n_layers=key("block_count"),
            n_heads=n_heads,
            n_kv_heads=field(reader, "llama.attention.head_count_kv", n_heads),
            # The embedding is the truth; llama.vocab_size and the token list should agree with it.
            vocab_size=emb.shape[0],
            hidden_dim=key("feed_forward_length"),
            norm_eps=key("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=field(reader, "llama.rope.freq_base", 10000.0),
            max_seq_len=key("context_length", 2048),
            tie_embeddings="output.weight" not in state_dict,
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: bad model metadata: {first_line(e)}") from None
    if rope_factors is not None:
        args.rope_scaling = llama3_scaling_from_factors(rope_factors, args, path)
    return args


def llama3_scaling_from_factors(factors: Tensor, args: ModelArgs, path: Path) -> dict:
    """llama.cpp stores llama3.1 rope scaling as per-frequency divisors (rope_freqs.weight).

    model.py wants the parameters instead; Llama 3.1/3.2 all use low 1, high 4, original 8192
    with a varying factor, so recover the factor and check the divisors it implies.
    """
    base = ModelArgs(**{**args.to_dict(), "rope_scaling": None})
    plain = rope_frequencies(base)
    scaling = {
        "factor": float(factors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    scaled = rope_frequencies(ModelArgs(**{**args.to_dict(), "rope_scaling": scaling}))
    if factors.shape != plain.shape or not torch.allclose(plain / scaled, factors.float(), rtol=1e-3):
        raise UserError(f"{path}: rope_freqs does not match llama3 rope scaling; not supported")
    return scaling


# ---------------------------------------------------------------------------------------------
# Tokenizer and chat metadata

# llama.cpp's tokenizer.ggml.token_type values (SentencePiece's piece types)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers that llama.cpp's vocabulary loader (llama-vocab.cpp) reads with ignore_merges (a
# pre-token that is in the vocabulary is one token, whatever the merges say) and BOS added by
# default, as Llama 3's own tokenizer.json does. Of its list, the ones we can split for.
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe")

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _pre_tokenizer(pre: str, path: Path) -> dict:
    """The split before BPE, per llama.cpp's tokenizer.ggml.pre name."""
    if pre in ("default", "gpt2", "gpt-2"):
        return _byte_level(True)
    if pre == "smollm":
        # SmolLM's tokenizer.json: every digit alone, then GPT-2's byte-level regex.
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)]}
    if pre in ("llama-bpe", "llama3", "llama-v3", "smaug-bpe"):
        split = {"type": "Split", "pattern": {"Regex": _LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, _byte_level(False)]}
    raise UserError(f"GGUF pre-tokenizer {pre!r} is not supported yet (smollm, llama-bpe, gpt2 are)")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte, the alphabet of byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    spelled, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelled[b] = chr(b)
        else:
            spelled[b] = chr(256 + extra)
            extra += 1
    return spelled


def gguf_tokenizer_json(path: Path, reader=None) -> str:
    """A Hugging Face tokenizer.json equivalent to the GGUF's byte-level BPE tokenizer."""
    path = Path(path)
    reader = reader or open_gguf(path)
    model = field(reader, "tokenizer.ggml.model")
    if model is None:
        raise UserError(f"{path}: the GGUF carries no tokenizer; give --tokenizer-path")
    if model != "gpt2":
        raise UserError(f"{path}: GGUF tokenizer {model!r} is not byte-level BPE ('gpt2')")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges") or []
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    pre = field(reader, "tokenizer.ggml.pre", "default")

    alphabet = set(_bytes_to_unicode().values())
    spelled = _bytes_to_unicode()
    vocab, added = {}, []
    for i, (token, kind) in enumerate(zip(tokens, types)):
        # User-defined tokens are stored as plain text; the BPE vocab wants the byte alphabet.
        key = token if set(token) <= alphabet else "".join(spelled[b] for b in token.encode("utf-8"))
        if key in vocab:  # tokenizers and our runners would each keep a different one of the two
            raise UserError(f"{path}: tokens {vocab[key]} and {i} have the same byte-level spelling {key!r}: "
                            "a vocabulary we cannot represent")
        vocab[key] = i
        if kind in (_CONTROL, _USER_DEFINED):
            added.append({
                "id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": kind == _CONTROL,
            })
    info = gguf_chat_info(path, reader)
    post: dict = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if info["add_bos"] and info["bos_id"] is not None:
        bos = tokens[info["bos_id"]]
        template = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [info["bos_id"]], "tokens": [bos]}},
        }
        post = {"type": "Sequence", "processors": [post, template]}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(pre, path),
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": pre in _LLAMA3_PRE,
            "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    return json.dumps(doc, ensure_ascii=False)


def gguf_chat_info(path: Path, reader=None) -> dict:
    """bos/eos ids, whether plain prompts start with BOS, and the raw jinja chat template."""
    reader = reader or open_gguf(path)
    model = field(reader, "tokenizer.ggml.model")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    return {
        "bos_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "eot_id": field(reader, "tokenizer.ggml.eot_token_id"),
        # llama.cpp adds BOS for SentencePiece vocabularies and Llama 3's pre-tokenizers unless told otherwise.
        "add_bos": bool(field(reader, "tokenizer.ggml.add_bos_token", model == "llama" or pre in _LLAMA3_PRE)),
        "chat_template": field(reader, "tokenizer.chat_template"),
    }



def gguf_sentencepiece_model(path: Path, reader=None) -> bytes:
    """A SentencePiece model (serialized ModelProto) equivalent to the GGUF's "llama" vocabulary:
    its pieces, scores and types, BPE as llama.cpp's SentencePiece tokenizer runs them."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # here, not above: only this format needs it

    path = Path(path)
    reader = reader or open_gguf(path)
    if field(reader, "tokenizer.ggml.model") != "llama":
        raise UserError(f"{path}: GGUF tokenizer is not SentencePiece ('llama')")
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    if not tokens:
        raise UserError(f"{path}: the GGUF's SentencePiece vocabulary is empty")
    scores = field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = field(reader, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise UserError(f"{path}: tokenizer.ggml.scores / token_type do not match the {len(tokens)} tokens")
    model = pb.ModelProto()
    seen: dict[str, int] = {}
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        if token in seen:
            raise UserError(f"{path}: tokens {seen[token]} and {i} are both {token!r}: a vocabulary we cannot represent")
        seen[token] = i
        if kind not in (_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE):
            raise UserError(f"{path}: token {i} has an unknown type {kind}")
        model.pieces.add(piece=token, score=float(score), type=kind)
    if _UNKNOWN not in types:
        raise UserError(f"{path}: the SentencePiece vocabulary has no unknown token")
    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = _BYTE in types
    # The processor finds these by piece text; -1 where the vocabulary lacks one.
    for name, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        if name == "unk" and i is None:
            i = list(types).index(_UNKNOWN)
        ok = isinstance(i, int) and 0 <= i < len(tokens)
        setattr(spec, f"{name}_id", i if ok else -1)
        if ok:
            setattr(spec, f"{name}_piece", tokens[i])
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(field(reader, "tokenizer.ggml.remove_extra_whitespaces", False))
    norm.escape_whitespaces = True
    return model.SerializeToString()
