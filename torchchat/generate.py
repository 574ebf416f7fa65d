"""Token generation: sampling, prefill, decode, and the streaming loop.

Works with any Decoder (torchchat/backends): the eager model, its torch.compile'd form, or an
exported artifact loaded back into Python. The loop is the same for all of them, so what we
validate in Python is what the native runner does.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from torchchat.backends import Decoder
from torchchat.errors import UserError


@dataclass
class SamplingConfig:
    temperature: float = 0.8  # 0 = greedy
    top_k: Optional[int] = 200
    top_p: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:  # checked once, where the options are made
        if not 0 <= self.temperature < math.inf:  # as the runner's -t
            raise UserError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise UserError(f"--seed must be in [0, 2**64), got {self.seed}")
        if not 0.0 <= self.top_p <= 1.0:
            raise UserError(f"--top-p must be in [0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {self.top_k}")


class Sampler:
    """Greedy, temperature, top-k and top-p sampling with its own seeded generator."""

    def __init__(self, config: SamplingConfig, vocab_size: Optional[int] = None):
        # Models often pad their embedding table past the tokenizer's vocabulary; the
        # padding rows are no tokens, so they are never sampled.
        self.config, self.vocab_size = config, vocab_size
        self.generator = torch.Generator()
        self.generator.manual_seed(config.seed if config.seed is not None else int(time.time_ns()))

    def __call__(self, logits: Tensor) -> int:
        """logits [vocab] (fp32) -> token id."""
        c = self.config
        if self.vocab_size is not None:
            logits = logits[: self.vocab_size]
        if c.temperature == 0:
            return int(torch.argmax(logits))
        # The largest logit first made 0, as the runner's sampler does: a tiny temperature then sharpens
        # towards greedy instead of overflowing to inf - inf = NaN.
        logits = (logits - logits.max()) / c.temperature
        if c.top_k is not None and c.top_k < logits.numel():
            kth = torch.topk(logits, c.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if c.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            outside = torch.cumsum(sorted_probs, 0) - sorted_probs >= c.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # prompt in, first token out
    decode_s: float = 0.0  # every token after the first

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        prompt_rate = self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0
        return (
            f"prompt {self.prompt_tokens} tokens, generated {self.new_tokens} tokens, "
            f"time to first token {self.prefill_s:.3f} s ({prompt_rate:.1f} tok/s prompt), "
            f"decode {self.decode_tokens_per_s:.2f} tok/s"
        )


def generate(
    model: Decoder,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: Sequence[int] = (),
    start_pos: int = 0,
    on_token: Optional[Callable[[int], None]] = None,
    stats: Optional[Stats] = None,
) -> list[int]:
    """Prefill `prompt` at `start_pos`, then sample up to `max_new_tokens` tokens.

    Returns the new tokens (a stop token, if hit, is included: it ends the turn and
    a chat feeds it back in as the start of the next one). The KV cache keeps
    everything up to, not including, the last returned token.
    """
    if not prompt:
        raise UserError("the prompt is empty (no tokens to start from)")
    end = start_pos + len(prompt)
    if end > model.max_seq_len:
        raise UserError(
            f"the prompt needs {end} positions but the context holds {model.max_seq_len}; "
            f"shorten it or raise --max-seq-length"
        )
    max_new_tokens = min(max_new_tokens, model.max_seq_len - end + 1)
    stats = stats if stats is not None else Stats()
    stats.prompt_tokens = len(prompt)
    stop = set(stop_ids)

    t0 = time.perf_counter()
    tokens = torch.tensor([list(prompt)], dtype=torch.long)
    positions = torch.arange(start_pos, end, dtype=torch.long)
    with torch.no_grad():
        logits = model(tokens, positions, last_only=True)[0, -1]
    out: list[int] = []
    pos = end
    while len(out) < max_new_tokens:
        token = sampler(logits)
        out.append(token)
        if len(out) == 1:
            stats.prefill_s = time.perf_counter() - t0
            t0 = time.perf_counter()
        if on_token is not None:
            on_token(token)
        if token in stop or len(out) == max_new_tokens:
            break
        with torch.no_grad():
            logits = model(torch.tensor([[token]]), torch.tensor([pos]), last_only=True)[0, -1]
        pos += 1
    stats.new_tokens = len(out)
    stats.decode_s = time.perf_counter() - t0
    return out


class TextStream:
    """Prints decoded text as tokens arrive, holding back an unfinished UTF-8 character.

    It decodes `context + new tokens` and prints what the new tokens added: the one way
    that is exact for every tokenizer (SentencePiece drops the leading space of a
    sequence's first piece; byte-fallback and byte-level pieces can split a character).
    `context` is the last few tokens before the new ones, e.g. the end of the prompt.
    """

    def __init__(self, tokenizer, context: Sequence[int] = (), skip: Sequence[int] = (), out=None):
        self.tokenizer, self.skip, self.out = tokenizer, set(skip), out or sys.stdout
        self.context = list(context)[-8:]
        self.ids = list(self.context)
        self.printed = len(tokenizer.decode(self.ids)) if self.ids else 0

    def __call__(self, token: int) -> None:
        if token in self.skip:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next bytes
            return
        self._write(text)

    def finish(self) -> None:
        self._write(self.tokenizer.decode(self.ids))

    def _write(self, text: str) -> None:
        self.out.write(text[self.printed:])
        self.out.flush()
        self.printed = len(text)
