"""`eval --tasks`: lm-eval harness tasks on local data files, scored against transformers.

The tasks are defined here (YAML + JSONL written to a temporary folder), so nothing is
fetched. The reference is transformers' LlamaForCausalLM on the same weights, with the
scoring rules of lm-eval's request types written out here: per-choice log-likelihoods
(so accuracy must match exactly), rolling-window log-likelihoods (perplexity), and
greedy generation cut at a stop string.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import ROOT, Exported, cli, shared_folder  # noqa: E402
from tiny_models import hf_greedy, tiny_llama2_files  # noqa: E402
BOS = 1

QUESTIONS = [
    ("The capital of France is", [" Paris", " London", " a dog"]),
    ("The quick brown fox jumps over the", [" lazy dog", " moon", " cat"]),
    ("Once upon a time there was a little", [" girl", " mountain", " fibonacci"]),
    ("The tallest mountain in the world is", [" Mount Everest", " the mat"]),
    ("What is the weather like today? It is", [" sunny and warm", " Paris", " 1000"]),
    ("Whenever she went out, the little girl wore a red", [" riding cloak", " fox", " number"]),
    ("You are a helpful", [" assistant", " mountain", " village"]),
    ("Numbers: 0 1 2 3", [" 4 5 6", " cat dog", " ; : !"]),
    ("The cat sleeps on the", [" mat", " forest", " capital"]),
    ("def fibonacci(n): return", [" n", " Paris", " red"]),
]
DOCS = [
    "Once upon a time there was a little girl who lived in a village near the forest. Whenever she went out, "
    "the little girl wore a red riding cloak, so everyone in the village called her Little Red Riding Hood.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat.",
    "The capital of France is Paris.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = tiny_llama2_files(tmp_path_factory.mktemp("lm_eval"))
    folder = t.folder
    with open(folder / "mc.jsonl", "w") as f:
        for i, (q, choices) in enumerate(QUESTIONS):
            f.write(json.dumps({"question": q, "choices": choices, "answer": i % len(choices)}) + "\n")
    (folder / "docs.json").write_text(json.dumps([{"text": d} for d in DOCS]))
    (folder / "tiny_mc.yaml").write_text(f"""\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (folder / "tiny_ppl.yaml").write_text(f"""\
task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "docs.json"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
    (folder / "missing.yaml").write_text((folder / "tiny_mc.yaml").read_text()
                                         .replace("tiny_mc", "tiny_missing").replace("mc.jsonl", "gone.jsonl"))
    import sentencepiece as spm

    t.sp = spm.SentencePieceProcessor(model_file=str(t.tok))
    return t


def model_flags(tiny):
    return ["--checkpoint-path", str(tiny.ckpt), "--tokenizer-path", str(tiny.tok)]


def one_line_error(p) -> str:
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The reference: transformers, with lm-eval's scoring rules written out


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return F.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


def hf_choice_loglikelihood(tiny, context: str, continuation: str) -> float:
    # lm-eval's split: continuation tokens = tokens(context + continuation) past tokens(context).
    ctx = [BOS] + tiny.sp.encode(context)
    whole = [BOS] + tiny.sp.encode(context + continuation)
    assert whole[:len(ctx)] == ctx, "test data must not merge tokens across the boundary"
    cont = whole[len(ctx):]
    logprobs = hf_logprobs(tiny.hf, whole[:-1])[len(ctx) - 1:]
    return logprobs.gather(1, torch.tensor(cont)[:, None]).sum().item()


def hf_rolling_loglikelihood(tiny, text: str, window: int) -> float:
    # Every token predicted once, in chunks of `window` predictions; a chunk sees the
    # `window` tokens before its end (the last chunk: a full window, overlapping the previous).
    ids = tiny.sp.encode(text)
    seq = [BOS] + ids
    total = 0.0
    for start in range(0, len(ids), window):
        end = min(start + window, len(ids))
        inputs = seq[max(0, end - window):end]
        logprobs = hf_logprobs(tiny.hf, inputs)[-(end - start):]
        total += logprobs.gather(1, torch.tensor(ids[start:end])[:, None]).sum().item()
    return total


# ---------------------------------------------------------------------------------------------
# The adapter against the reference, request by request


def make_adapter(tiny, max_len=64):
    from torchchat.lm_eval_adapter import make_lm
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    args = SimpleNamespace(model=None, checkpoint_path=str(tiny.ckpt), gguf_path=None, params_path=None,
                           tokenizer_path=str(tiny.tok), dtype="fp32")
    loaded = load_model(args)
    return make_lm(EagerDecoder(loaded.model, max_len), loaded.tokenizer, loaded.info, max_len, progress=False)


def instance(kind, args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_per_choice_matches_transformers(tiny):
    lm = make_adapter(tiny)
    pairs = [(q, c) for q, choices in QUESTIONS for c in choices]  # choices of a question in a row: shared prefix
    got = lm.loglikelihood([instance("loglikelihood", p) for p in pairs])
    want = [hf_choice_loglikelihood(tiny, *p) for p in pairs]
    for (ll, _), ref in zip(got, want):
        assert ll == pytest.approx(ref, rel=1e-4, abs=1e-3)
    # Out of order (no shared prefix to reuse) gives the same numbers.
    again = lm.loglikelihood([instance("loglikelihood", p) for p in reversed(pairs)])
    assert [ll for ll, _ in reversed(again)] == pytest.approx([ll for ll, _ in got], rel=1e-5, abs=1e-4)


def test_loglikelihood_is_greedy_and_truncation(tiny):
    lm = make_adapter(tiny, max_len=8)
    # A continuation that is the model's own greedy choice is greedy; a long context is cut from the left.
    ids = [BOS] + tiny.sp.encode("The quick brown fox jumps over the lazy dog")
    nxt = hf_greedy(tiny.hf, ids[-8:], 1)[0]
    text = tiny.sp.decode(ids[1:])
    cont = tiny.sp.decode(ids[1:] + [nxt])[len(text):]
    [(ll, greedy)] = lm.loglikelihood([instance("loglikelihood", (text, cont))])
    assert tiny.sp.encode(text + cont) == ids[1:] + [nxt]  # the split gives back exactly the greedy token
    assert greedy
    ref = hf_logprobs(tiny.hf, ids[-8:])[-1, nxt].item()
    assert ll == pytest.approx(ref, rel=1e-4, abs=1e-3)


def test_loglikelihood_rolling_matches_transformers(tiny):
    lm = make_adapter(tiny, max_len=16)
    got = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (d,)) for d in DOCS])
    want = [hf_rolling_loglikelihood(tiny, d, 16) for d in DOCS]
    assert len(tiny.sp.encode(DOCS[0])) > 3 * 16  # several windows, the last one partial
    assert got == pytest.approx(want, rel=1e-4)


def test_generate_until_matches_transformers_greedy(tiny):
    lm = make_adapter(tiny)
    prompt = "Once upon a time"
    ids = [BOS] + tiny.sp.encode(prompt)
    full = tiny.sp.decode(hf_greedy(tiny.hf, ids, 12))
    stop = full[4:6]  # a stop string the greedy text does contain
    assert stop and stop in full
    got = lm.generate_until([instance("generate_until", (prompt, {"until": [stop], "max_gen_toks": 12})),
                             instance("generate_until", (prompt, {"until": ["@@never@@"], "max_gen_toks": 12}))])
    assert got == [full[:full.index(stop)], full]


# ---------------------------------------------------------------------------------------------
# The command: tasks from local YAML files, scores against the reference


WINDOW = 24  # --max-seq-length: every question fits, a document takes several windows


def test_tasks_command_scores_match_transformers(tiny, tmp_path):
    out = tmp_path / "tasks.json"
    p = cli("eval", *model_flags(tiny), "--tasks", f"{tiny.folder / 'tiny_mc.yaml'},{tiny.folder / 'tiny_ppl.yaml'}",
            "--max-seq-length", str(WINDOW), "--output-json", str(out))
    assert p.returncode == 0, p.stderr
    results = json.loads(out.read_text())["tasks"]

    # Multiple choice: the reference's argmax over choices, exactly (every question fits the window).
    assert max(len(tiny.sp.encode(q + c)) for q, choices in QUESTIONS for c in choices) <= WINDOW
    acc, acc_norm = [], []
    for i, (q, choices) in enumerate(QUESTIONS):
        lls = [hf_choice_loglikelihood(tiny, q, c) for c in choices]
        norm = [ll / len(c) for ll, c in zip(lls, choices)]  # lm-eval's acc_norm: per character
        acc.append(max(range(len(lls)), key=lls.__getitem__) == i % len(choices))
        acc_norm.append(max(range(len(norm)), key=norm.__getitem__) == i % len(choices))
    assert results["tiny_mc"]["acc"] == sum(acc) / len(acc)
    assert results["tiny_mc"]["acc_norm"] == sum(acc_norm) / len(acc_norm)
    assert results["tiny_mc"]["samples"] == len(QUESTIONS)
    assert 0 < sum(acc) < len(acc)  # a random model: some right, some wrong, so a mismatch would show

    # Rolling log-likelihood: word perplexity and bits per byte over the documents.
    assert len(tiny.sp.encode(DOCS[0])) > 2 * WINDOW
    lls = [hf_rolling_loglikelihood(tiny, d, WINDOW) for d in DOCS]
    words = sum(len(re.split(r"\s+", d)) for d in DOCS)
    nbytes = sum(len(d.encode()) for d in DOCS)
    assert results["tiny_ppl"]["word_perplexity"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-4)
    assert results["tiny_ppl"]["bits_per_byte"] == pytest.approx(-sum(lls) / nbytes / math.log(2), rel=1e-4)

    # The table on stdout shows the same figures.
    assert f"| tiny_mc | acc | {results['tiny_mc']['acc']:.4f} |" in p.stdout
    assert f"| tiny_ppl | bits_per_byte | {results['tiny_ppl']['bits_per_byte']:.4f} |" in p.stdout


def test_tasks_limit(tiny, tmp_path):
    out = tmp_path / "tasks.json"
    p = cli("eval", *model_flags(tiny), "--tasks", str(tiny.folder / "tiny_mc.yaml"), "--limit", "3",
            "--output-json", str(out))
    assert p.returncode == 0, p.stderr
    results = json.loads(out.read_text())
    assert results["tasks"]["tiny_mc"]["samples"] == 3 and results["limit"] == 3


@pytest.mark.parametrize("tasks,extra,pattern", [
    ("no_such_task_anywhere", [], "unknown task 'no_such_task_anywhere'"),
    ("{folder}/absent.yaml", [], "no such task file"),
    ("{folder}/missing.yaml", [], "gone.jsonl"),
    ("{folder}/tiny_mc.yaml", ["--text-file", "corpus.txt"], "--text-file"),
    (",", [], "at least one task"),
    ("{folder}/tiny_mc.yaml", ["--limit", "0"], "--limit"),
    ("{folder}/tiny_mc.yaml", ["--max-seq-length", "1"], "--max-seq-length"),
])
def test_tasks_bad_input(tiny, tasks, extra, pattern):
    p = cli("eval", *model_flags(tiny), "--tasks", tasks.format(folder=tiny.folder), *extra)
    assert pattern in one_line_error(p)


def test_generate_does_not_import_lm_eval():
    code = ("import sys, torchchat.cli, torchchat.generate, torchchat.chat, torchchat.load, torchchat.eval; "
            "print(any(m.split('.')[0] in ('lm_eval', 'datasets') for m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr


@pytest.mark.export
def test_tasks_through_executorch_program_match_eager(tiny, tmp_path_factory, tmp_path):
    """The same tasks on the exported .pte (ExecuTorch's Python runtime) score as eager does."""
    exported = Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ("pte",))
    tasks = f"{tiny.folder / 'tiny_mc.yaml'},{tiny.folder / 'tiny_ppl.yaml'}"
    scores = {}
    for flag, path in (("--checkpoint-path", exported.checkpoint), ("--pte-path", exported.paths["pte"])):
        out = tmp_path / f"{flag.strip('-')}.json"
        p = cli("eval", flag, str(path), "--tokenizer-path", str(exported.tokenizer), "--tasks", tasks,
                "--max-seq-length", str(WINDOW), "--output-json", str(out))
        assert p.returncode == 0, p.stderr
        scores[flag] = json.loads(out.read_text())["tasks"]
    eager, et = scores["--checkpoint-path"], scores["--pte-path"]
    assert et["tiny_mc"]["acc"] == eager["tiny_mc"]["acc"]
    assert et["tiny_ppl"]["word_perplexity"] == pytest.approx(eager["tiny_ppl"]["word_perplexity"], rel=1e-4)
