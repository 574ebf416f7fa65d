"""`eval --tasks`: our model as an lm-eval harness `LM`, and the runner around it.

The model is any Decoder that `eval.perplexity` takes (eager, AOT Inductor, ExecuTorch):
`decoder(tokens [1, T], input_pos [T]) -> logits [1, T, vocab]` with a KV cache of
`max_seq_len` positions. Every request starts at position 0, so no state leaks from one
request to the next; the causal mask follows `input_pos`, so cache entries past the
current position (left by an earlier, longer request) are never read.

lm-eval (and the `datasets` stack under it) is imported only here, and this module only
by `eval --tasks`: generate and chat never pay for it.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from torchchat.errors import UserError


def import_lm_eval():
    try:
        import lm_eval  # noqa: F401  (optional dependency: a clear message when it is missing)
        from lm_eval.api.model import LM
    except ImportError:
        raise UserError("--tasks needs the lm-eval package: pip install -c constraints.txt -r requirements.txt") from None
    # lm-eval reports at INFO level to the root handlers; keep stderr for our progress and errors.
    for name in ("lm_eval", "lm-eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return LM


def make_lm(decoder, tokenizer, info, max_len: int, progress: bool = True):
    """A TorchchatLM (the class is made here so that lm-eval is imported only when used)."""
    LM = import_lm_eval()

    class TorchchatLM(LM):
        """lm-eval's three request types over a Decoder, one request at a time (batch 1).

        Text is tokenized the way `eval` and `generate` do: the context starts with BOS
        when the model adds one. A continuation's tokens are those of context + continuation
        past the context's own tokens (lm-eval's rule), so a word's leading space goes with it.
        """

        def __init__(self):
            super().__init__()
            self.decoder, self.tokenizer, self.info, self.max_len = decoder, tokenizer, info, max_len
            # The token a document is conditioned on when nothing precedes it: BOS, or
            # end-of-text for models without BOS (what lm-eval's own models use).
            self.prefix = info.bos_id if info.add_bos and info.bos_id is not None else info.stop_ids[0]
            self._last: Optional[tuple[list[int], torch.Tensor]] = None  # (prefix tokens, its last logits)

        # -- helpers ------------------------------------------------------------------------

        def encode_context(self, text: str) -> list[int]:
            ids = self.tokenizer.encode(text, bos=self.info.add_bos) if text else []
            return ids if ids else [self.prefix]

        def split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            # Trailing spaces of the context belong to the continuation (lm-eval's convention).
            n = len(context) - len(context.rstrip())
            if n:
                context, continuation = context[:-n], context[-n:] + continuation
            whole = self.encode_context(context + continuation)
            ctx = self.encode_context(context)
            if whole[:len(ctx)] != ctx:  # the tokenizer merged across the boundary
                return ctx, self.tokenizer.encode(continuation, bos=False)
            return ctx, whole[len(ctx):]

        def logits(self, tokens: list[int], start: int = 0, last_only: bool = False) -> torch.Tensor:
            """[T, vocab], or [1, vocab] (the last position) with last_only."""
            with torch.no_grad():
                out = self.decoder(torch.tensor([tokens]), torch.arange(start, start + len(tokens)), last_only=last_only)
            return out[0, -1:].float() if last_only else out[0].float()

        def score(self, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
            """Sum of log p(target) over the last len(targets) positions of one forward of `inputs`.

            Consecutive requests with the same context (the choices of a multiple-choice
            question) run the shared prefix once: the next request starts where it ends."""
            shared = len(inputs) - len(targets) + 1  # the prefix up to the first predicting position
            prefix, rest = inputs[:shared], inputs[shared:]
            if self._last is not None and self._last[0] == prefix:
                first = self._last[1]
            else:
                first = self.logits(prefix, last_only=True)
                self._last = (prefix, first)
            rows = torch.cat([first, self.logits(rest, start=shared)]) if rest else first
            logprobs = F.log_softmax(rows, dim=-1)
            target = torch.tensor(targets)
            total = logprobs.gather(1, target[:, None]).sum().item()
            return total, bool((rows.argmax(-1) == target).all())

        def bar(self, requests, desc: str):
            return tqdm(requests, desc=desc, unit="req", disable=not progress, file=sys.stderr)

        # -- lm-eval's interface ------------------------------------------------------------

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            results = []
            for request in self.bar(requests, "loglikelihood"):
                ctx, cont = self.split(*request.args)
                if not cont:
                    results.append((0.0, True))
                    continue
                # Keep the end: the continuation, and as much context as the window holds.
                tokens = (ctx + cont)[-(self.max_len + 1):]
                results.append(self.score(tokens[:-1], cont[-(len(tokens) - 1):]))
            return results

        def loglikelihood_rolling(self, requests) -> list[float]:
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # optional dependency

            results = []
            for request in self.bar(requests, "loglikelihood_rolling"):
                (text,) = request.args
                ids = self.tokenizer.encode(text, bos=False)
                total = 0.0
                # Windows of max_len predictions; each token is scored once, with all the
                # context the window leaves room for (lm-eval's definition of this request).
                for ctx, pred in map(make_disjoint_window,
                                     get_rolling_token_windows(ids, self.prefix, self.max_len, context_len=1)):
                    self._last = None  # a new window: no shared prefix with anything before
                    total += self.score(ctx + pred[:-1], pred)[0]
                results.append(total)
            return results

        def generate_until(self, requests) -> list[str]:
            results = []
            for request in self.bar(requests, "generate_until"):
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kwargs.get("max_gen_toks", 256))
                max_new = max(1, min(max_new, self.max_len - 1))
                prompt = self.encode_context(context)[-(self.max_len - max_new):]
                results.append(self.greedy(prompt, max_new, until))
            self._last = None  # generation wrote over the cache a cached prefix may rely on
            return results

        def greedy(self, prompt: list[int], max_new: int, until: list[str]) -> str:
            stop_ids, out = set(self.info.stop_ids), []
            logits, pos = self.logits(prompt, last_only=True)[-1], len(prompt)
            while len(out) < max_new:
                token = int(logits[: self.tokenizer.vocab_size].argmax())
                if token in stop_ids:
                    break
                out.append(token)
                text = self.tokenizer.decode(out)
                cut = min((text.find(s) for s in until if s and s in text), default=-1)
                if cut >= 0:
                    return text[:cut]
                if pos >= self.max_len:
                    break
                logits, pos = self.logits([token], start=pos)[-1], pos + 1
            return self.tokenizer.decode(out)

    return TorchchatLM()


def resolve_tasks(names: list[str]):
    """A TaskManager that knows every name: lm-eval's registered tasks, or YAML task files.

    Names are checked before the model loads, so a typo costs seconds, not a model load."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager  # optional dependency (import_lm_eval says how to install it)

    files = [n for n in names if n.endswith((".yaml", ".yml"))]
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"--tasks: no such task file: {f}")
    # Indexing lm-eval's own ~15k task configs takes seconds; skip it when every task is a file.
    manager = TaskManager(include_defaults=len(files) < len(names),
                          include_path=sorted({str(Path(f).resolve().parent) for f in files}) or None)
    unknown = [n for n in names if n not in files and n not in manager.all_tasks]
    if unknown:
        raise UserError(f"--tasks: unknown task {unknown[0]!r} (not an lm-eval task name nor a .yaml task file)")
    return manager


def run_tasks(lm, manager, names: list[str], limit: Optional[int]) -> dict:
    """{task: {metric: value}} from lm-eval's simple_evaluate; dataset failures become one line."""
    from lm_eval import simple_evaluate  # optional dependency (import_lm_eval says how to install it)

    try:
        out = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, bootstrap_iters=0,
                              log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types (missing files, no network, bad JSON)
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"--tasks: cannot run {','.join(names)}: {type(e).__name__}: "
                        f"{lines[0] if lines else 'no message'}") from None
    results = {}
    for task, metrics in out["results"].items():
        # lm-eval names metrics "acc,none" (metric, filter); stderr is off (bootstrap_iters=0).
        row = {k.split(",")[0]: v for k, v in metrics.items()
               if k not in ("alias", "sample_len") and "_stderr" not in k and isinstance(v, (int, float))}
        results[task] = {**row, "samples": metrics.get("sample_len")}
    return results


def format_table(results: dict) -> str:
    rows = ["| task | metric | value |", "|---|---|---:|"]
    for task, metrics in results.items():
        for name, value in metrics.items():
            rows.append(f"| {task} | {name} | {value:.4f} |" if isinstance(value, float) and math.isfinite(value)
                        else f"| {task} | {name} | {value} |")
    return "\n".join(rows)
