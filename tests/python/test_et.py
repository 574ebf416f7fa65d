"""ExecuTorch export: eager fp32 = ExecuTorch from Python = et_run, token for token, plus bad inputs.

Lowering is the cost (seconds per tiny model), so the programs are built once per session:
a llama2-style model (SentencePiece, tokenizer.bin for the runner) and a llama3-style model
(tiktoken, tied embeddings, GQA), the same tiny models as test_aoti.py. Runner tests skip
when ./cmake-out/et_run has not been built (scripts/build_native.sh et); the bad-input ones
also run on ./cmake-out-asan/et_run (scripts/build_native.sh et --sanitize) when it is there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend_helpers import (  # noqa: E402
    CONTEXT, N_NEW, PROMPTS, ROOT, SYSTEM, USER, Exported, assert_same_greedy, check_long_prompt_and_large_n,
    check_runner_chat_follows_the_models_template, cli, et_run, fed_tokens, greedy, model_args, one_line_error,
    older_version_copy, pte_kernel_calls, shared_folder, system_chat_turn, two_turn_chat,
)
from tiny_tokenizers import write_tiktoken  # noqa: E402

from torchchat.kernels import isa as kernels_isa  # noqa: E402
from torchchat.errors import UserError  # noqa: E402


# Every test here runs exported artifacts (scripts/test.sh --quick leaves them out).
pytestmark = pytest.mark.export


@pytest.fixture(scope="session")
def llama2(tmp_path_factory) -> Exported:
    return Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ("pte",))


@pytest.fixture(scope="session")
def llama3(tmp_path_factory) -> Exported:
    return Exported(shared_folder(tmp_path_factory, "llama3"), "llama3", ("pte",))


@pytest.fixture(scope="session")
def no_metadata_pte(tmp_path_factory) -> Path:
    """A valid program with a forward but none of our constant methods."""
    from executorch.exir import to_edge_transform_and_lower

    ep = torch.export.export(torch.nn.Linear(4, 4).eval(), (torch.zeros(1, 4),))
    path = tmp_path_factory.mktemp("et_plain") / "plain.pte"
    path.write_bytes(to_edge_transform_and_lower(ep).to_executorch().buffer)
    return path


def test_older_version_is_refused_in_one_line(llama2, tmp_path):
    from torchchat.backends.executorch import PTEDecoder

    old = older_version_copy(llama2.paths["pte"], tmp_path / "old.pte")
    with pytest.raises(UserError) as e:
        PTEDecoder(old)
    assert str(e.value) == f"{old}: exported by an older version; export again"
    p = et_run(old, llama2.runner_tokenizer, "-i", "hi")
    assert one_line_error(p) == f"error: {old}: exported by an older version; export again"


@pytest.fixture
def model(request):
    return request.getfixturevalue(request.param)


STYLES = ["llama2", "llama3"]


# ---------------------------------------------------------------------------------------------
# Python: the program against the eager model


@pytest.mark.parametrize("model", STYLES, indirect=True)
def test_metadata_round_trips(model):
    from torchchat.backends.executorch import PTEDecoder

    d = PTEDecoder(model.paths["pte"])
    want = model.eager.info
    assert (d.info.vocab_size, d.info.bos_id, d.info.add_bos, d.info.stop_ids, d.info.tokenizer_kind,
            d.info.chat_template) == (want.vocab_size, want.bos_id, want.add_bos, want.stop_ids,
                                      want.tokenizer_kind, want.chat_template)
    assert d.info.max_seq_len == CONTEXT and d.dtype == "fp32"


def test_program_selects_rotary_halves_once_and_norms_in_xnnpack(llama2):
    """The rotary cos/sin are selected once per forward (model.rope_cos_sin) and each rotation
    selects its pairs' halves once (apply_rope): 2 + 4 per layer in this fp32 program, whose q and
    k come from separate projections (a quantized program rotates them as one: test_kernels).
    RMSNorm's mean is in the form XNNPACK takes: no portable mean. (Otherwise SmolLM2's decode step
    had 12 selects per layer and 61 means in its 1155 instructions.)"""
    kernels = pte_kernel_calls(llama2.paths["pte"])
    assert kernels["aten::select_copy"] == 2 + 4 * llama2.eager.model.args.n_layers
    assert kernels["aten::mean"] == 0


def test_executorch_llm_runner_constant_methods(llama3):
    """The methods ExecuTorch's own LLM runner reads (extension/llm/runner/constants.h)."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(llama3.paths["pte"])
    info = llama3.eager.info

    def value(name):
        return program.load_method(name).execute([])

    assert value("get_max_seq_len") == [CONTEXT] and value("get_max_context_len") == [CONTEXT]
    assert value("get_vocab_size") == [info.vocab_size] and value("get_bos_id") == [info.bos_id]
    assert value("get_eos_ids") == info.stop_ids
    assert value("use_kv_cache") == [True] and value("enable_dynamic_shape") == [True]


@pytest.mark.parametrize("model", STYLES, indirect=True)
def test_python_greedy_matches_eager(model):
    from torchchat.backends.executorch import PTEDecoder

    d, e = PTEDecoder(model.paths["pte"]), model.eager_decoder()
    tok, info = model.eager.tokenizer, model.eager.info
    ids = tok.encode(PROMPTS[0], bos=info.add_bos)
    # Logits first: the whole prompt in one call (dynamic T), then one decode step.
    with torch.no_grad():
        for tokens, pos in ((torch.tensor([ids]), torch.arange(len(ids))),
                            (torch.tensor([[ids[-1]]]), torch.tensor([len(ids)]))):
            assert torch.allclose(d(tokens, pos), e(tokens, pos), atol=2e-4, rtol=1e-4)
    assert_same_greedy(d, e, tok, info)


def test_python_chat_with_system_prompt_matches_eager(llama3):
    from torchchat.backends.executorch import PTEDecoder

    tok, info = llama3.eager.tokenizer, llama3.eager.info
    exported = PTEDecoder(llama3.paths["pte"])
    assert two_turn_chat(exported, tok, info) == two_turn_chat(llama3.eager_decoder(), tok, info)


def et_kernels_loaded_by(*argv) -> bool:
    """Whether `torchchat.py ARGV`, run in a fresh process, loads our ExecuTorch kernels."""
    code = ("import sys\nfrom torchchat import cli, kernels\nrc = cli.main(sys.argv[1:])\n"
            "print('loaded' if kernels._et_loaded else 'not loaded')\nsys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()[-1] == "loaded"


def test_cli_generate_chat_and_eval_with_pte(llama2):
    model = ["--tokenizer-path", llama2.tokenizer]
    outs = {}
    for flag, path in (("--checkpoint-path", llama2.checkpoint), ("--pte-path", llama2.paths["pte"])):
        args = ("generate", flag, path, *model, "--prompt", PROMPTS[0], "--temperature", "0", "--max-new-tokens", "16")
        gen = cli(*args)
        chat = cli("chat", flag, path, *model, "--temperature", "0", "--max-new-tokens", "16", "--system-prompt",
                   SYSTEM, stdin=f"{USER}\nAnd the second?\n")
        ev = cli("eval", flag, path, *model, "--limit", "2")
        for p in (gen, chat, ev):
            assert p.returncode == 0, p.stderr
        perplexity = next(line for line in ev.stdout.splitlines() if line.startswith("| perplexity"))
        outs[flag] = (gen.stdout, chat.stdout, float(perplexity.split("|")[2]))
        assert "cpuinfo" not in gen.stderr + chat.stderr + ev.stderr  # the runtime's load-time log stays quiet
        # ours (attention, quantized linears) are built and loaded for ExecuTorch programs only
        assert et_kernels_loaded_by(*args) == (flag == "--pte-path")
    eager, et = outs["--checkpoint-path"], outs["--pte-path"]
    assert eager[:2] == et[:2]
    assert et[2] == pytest.approx(eager[2], rel=1e-5)  # fp32 noise: attention sums in another order
    both = cli("generate", "--pte-path", llama2.paths["pte"], "--dso-path", "x.so", *model)
    assert both.returncode == 1 and "one of" in both.stderr


# ---------------------------------------------------------------------------------------------
# Python: bad input


@pytest.fixture(scope="session")
def bf16_pte(llama2, tmp_path_factory) -> Path:
    """A bf16 program: attention on our kernel over its bf16 cache (cache_attention.out with bf16 q,
    caches and out, kernels/executorch_ops.cpp)."""
    from torchchat import export
    from torchchat.load import load_model

    args = model_args(llama2.checkpoint, llama2.tokenizer)
    args.dtype = "bf16"
    out = tmp_path_factory.mktemp("et_bf16") / "bf16.pte"
    loaded = load_model(args)
    export.export_model(loaded.model, loaded.info, "bf16", CONTEXT, pte_path=out)
    return out


def test_bf16_pte_matches_eager(llama2, bf16_pte):
    """Logits within bf16 noise of eager bf16's, for a prompt and then the next token."""
    from torchchat.backends.executorch import PTEDecoder
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    args = model_args(llama2.checkpoint, llama2.tokenizer)
    args.dtype = "bf16"
    d, eager = PTEDecoder(bf16_pte), EagerDecoder(load_model(args).model, CONTEXT)
    ids = llama2.eager.tokenizer.encode(PROMPTS[0], bos=True)
    prompt = torch.tensor([ids]), torch.arange(len(ids))
    next_token = torch.tensor([[ids[1]]]), torch.tensor([len(ids)])  # decode, from the prompt's cache
    for tokens, pos in (prompt, next_token):
        got, want = d(tokens, pos).float(), eager(tokens, pos).float()
        assert torch.allclose(got, want, atol=0.05 * want.abs().max().item()), (got - want).abs().max()


@pytest.mark.parametrize("build", ["release", "asan"])
def test_runner_generates_from_a_bf16_program(llama2, bf16_pte, build):
    p = et_run(bf16_pte, llama2.runner_tokenizer, "-t", "0", "-n", "16", "-i", PROMPTS[0], build=build)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()


def test_python_rejects_garbage_truncated_and_foreign_programs(llama2, no_metadata_pte, tmp_path):
    from torchchat.backends.executorch import PTEDecoder

    garbage, cut, cut_small = tmp_path / "garbage.pte", tmp_path / "cut.pte", tmp_path / "tiny.pte"
    garbage.write_bytes(os.urandom(4096))
    data = llama2.paths["pte"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cut_small.write_bytes(data[:6])
    for path, words in ((garbage, "not an ExecuTorch"), (cut, "truncated"), (cut_small, "not an ExecuTorch"),
                        (no_metadata_pte, "no torchchat metadata"), (tmp_path / "missing.pte", "no such file")):
        with pytest.raises(UserError) as e:
            PTEDecoder(path)
        assert words in str(e.value) and "\n" not in str(e.value), path


def test_python_tokenizer_that_does_not_fit_is_refused(llama2, tmp_path):
    from torchchat.backends.executorch import PTEDecoder
    from torchchat.load import load_exported

    big = write_tiktoken(tmp_path / "big.model", n_base=384)  # 640 tokens > the model's 512
    with pytest.raises(UserError, match="tokenizer"):
        load_exported(llama2.paths["pte"], big, decoder_class=PTEDecoder)


def test_python_prompt_longer_than_context_is_a_user_error(llama2):
    from torchchat.backends.executorch import PTEDecoder

    with pytest.raises(UserError, match="context"):
        greedy(PTEDecoder(llama2.paths["pte"]), [1] * (CONTEXT + 1), [])


# ---------------------------------------------------------------------------------------------
# The native runner: et_run on the same programs


@pytest.mark.parametrize("model", STYLES, indirect=True)
def test_runner_greedy_matches_eager(model, tmp_path):
    e = model.eager_decoder()
    tok, info = model.eager.tokenizer, model.eager.info
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt, bos=info.add_bos)
        want = greedy(e, ids, info.stop_ids)
        trace = tmp_path / f"trace{i}.jsonl"
        p = et_run(model.paths["pte"], model.runner_tokenizer, "-t", "0", "-n", len(ids) + N_NEW, "-i", prompt,
                   trace=trace)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(prompt) and "tokens/s" in p.stderr
        # The model line (runners built since it exists), then the stats line; the runtime's own log stays quiet.
        lines = p.stderr.strip().splitlines()
        # fp32: attention runs our kernels, at the level this process's dispatch picks as well
        model_line = (f"model: llama, vocab {info.vocab_size}, context {CONTEXT}, dtype fp32, quantize none, "
                      f"kernels {kernels_isa()}")
        assert lines[:-1] in ([], [model_line]) and "tokens/s" in lines[-1], p.stderr
        first = json.loads(trace.read_text().splitlines()[0])
        assert first["tokens"] == ids  # the whole prompt in one call (dynamic sequence length)
        fed = fed_tokens(trace)
        assert fed[:len(ids) + len(want) - 1] == ids + want[:-1], prompt


@pytest.mark.parametrize("build", ["release", "asan"])
def test_runner_chat_with_system_prompt_matches_eager(llama3, tmp_path, build):
    tok, info = llama3.eager.tokenizer, llama3.eager.info
    first = system_chat_turn(tok, info)
    want = greedy(llama3.eager_decoder(), first, info.stop_ids)
    trace = tmp_path / "chat.jsonl"
    p = et_run(llama3.paths["pte"], llama3.runner_tokenizer, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0",
               "-n", len(first) + N_NEW, trace=trace, build=build)
    assert p.returncode == 0, p.stderr
    assert "Assistant: " in p.stdout
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]


@pytest.mark.parametrize("build", ["release", "asan"])
def test_runner_rejects_bad_programs(llama2, no_metadata_pte, tmp_path, build):
    data = llama2.paths["pte"].read_bytes()
    cases = {
        "cut.pte": data[: len(data) // 2],
        "header.pte": data[:200],
        "garbage.pte": os.urandom(4096),
        "text.pte": b"not a model\n",
        "flipped.pte": data[:64] + bytes(b ^ 0x5A for b in data[64:4096]) + data[4096:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    for path in [tmp_path / n for n in cases] + [no_metadata_pte, tmp_path / "missing.pte"]:
        line = one_line_error(et_run(path, llama2.runner_tokenizer, "-i", "hi", "-n", "8", build=build))
        assert str(path) in line
    assert "no torchchat metadata" in one_line_error(et_run(no_metadata_pte, llama2.runner_tokenizer, "-i", "hi",
                                                            build=build))


@pytest.mark.parametrize("build", ["release", "asan"])
def test_runner_rejects_tokenizer_that_does_not_fit(llama2, llama3, tmp_path, build):
    # a tiktoken file for a SentencePiece model, and a tiktoken vocabulary larger than the model's
    assert "tokenizer" in one_line_error(et_run(llama2.paths["pte"], llama3.runner_tokenizer, "-i", "hi", build=build))
    big = write_tiktoken(tmp_path / "big.model", n_base=400)  # 656 tokens > 640
    assert "tokenizer" in one_line_error(et_run(llama3.paths["pte"], big, "-i", "hi", build=build))


def test_runner_prompt_longer_than_context_and_large_n(llama2):
    check_long_prompt_and_large_n(et_run, llama2.paths["pte"], llama2.paths["pte"], llama2.runner_tokenizer)


@pytest.mark.parametrize("build", ["release"])
def test_runner_chat_follows_the_models_template(llama3, tmp_path, build):
    check_runner_chat_follows_the_models_template(et_run, llama3.paths["pte"], llama3, tmp_path / "chat.jsonl",
                                                  build=build)
