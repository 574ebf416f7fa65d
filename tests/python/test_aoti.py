"""AOT Inductor export: eager fp32 = AOTI from Python = aoti_run, token for token, plus bad inputs.

Compiling is the cost (seconds per tiny model), so the artifacts are built once per session:
a llama2-style model (SentencePiece, tokenizer.bin for the runner) as .so and .pt2, and a
llama3-style model (tiktoken, tied embeddings, GQA) as .pt2. Runner tests skip when
./cmake-out/aoti_run has not been built (scripts/build_native.sh aoti).
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
    AOTI_RUN, CONTEXT, N_NEW, PROMPTS, SYSTEM, USER, Exported, aoti_run, assert_same_greedy,
    check_long_prompt_and_large_n, check_runner_chat_follows_the_models_template, cli, fed_tokens, greedy,
    model_args, older_version_copy, one_line_error, shared_folder, system_chat_turn, two_turn_chat,
)
from tiny_tokenizers import write_tiktoken  # noqa: E402

from torchchat.errors import UserError  # noqa: E402

AOTI_BENCH = AOTI_RUN.parent / "aoti_bench"

# Every test here runs exported artifacts (scripts/test.sh --quick leaves them out).
pytestmark = pytest.mark.export


@pytest.fixture(scope="session")
def llama2(tmp_path_factory) -> Exported:
    return Exported(shared_folder(tmp_path_factory, "llama2"), "llama2", ("so", "pt2"))


@pytest.fixture(scope="session")
def llama3(tmp_path_factory) -> Exported:
    return Exported(shared_folder(tmp_path_factory, "llama3"), "llama3", ("so", "pt2"))


CASES = [("llama2", "so"), ("llama2", "pt2"), ("llama3", "so"), ("llama3", "pt2")]


@pytest.fixture
def case(request):
    style, fmt = request.param
    return request.getfixturevalue(style), fmt


# ---------------------------------------------------------------------------------------------
# Python: the artifact against the eager model


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_metadata_round_trips(case):
    from torchchat.backends.aoti import AOTIDecoder

    m, fmt = case
    d = AOTIDecoder(m.paths[fmt])
    want = m.eager.info
    assert (d.info.vocab_size, d.info.bos_id, d.info.add_bos, d.info.stop_ids, d.info.tokenizer_kind,
            d.info.chat_template) == (want.vocab_size, want.bos_id, want.add_bos, want.stop_ids,
                                      want.tokenizer_kind, want.chat_template)
    assert d.info.max_seq_len == CONTEXT and d.dtype == "fp32"


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_python_greedy_matches_eager(case):
    from torchchat.backends.aoti import AOTIDecoder

    m, fmt = case
    d, e = AOTIDecoder(m.paths[fmt]), m.eager_decoder()
    tok, info = m.eager.tokenizer, m.eager.info
    ids = tok.encode(PROMPTS[0], bos=info.add_bos)
    # Logits first (prefill of T tokens, then one decode step): the same within fp32 noise.
    with torch.no_grad():
        a, b = d(torch.tensor([ids]), torch.arange(len(ids))), e(torch.tensor([ids]), torch.arange(len(ids)))
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-4)
    assert_same_greedy(d, e, tok, info)


@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_python_filled_cache_and_last_logits_match_eager(case):
    """The 4-input artifact (attention over the filled positions, logits where asked) against the
    eager model's full-cache form, along a chat: prompt, decode steps, a second chunk at
    start_pos > 0, to the end of the context, then a restart at 0 over the old entries."""
    from torchchat.backends.aoti import AOTIDecoder

    m, fmt = case
    d = AOTIDecoder(m.paths[fmt])
    full = m.eager.model
    full.setup_caches(CONTEXT)
    vocab = d.vocab_size
    g = torch.Generator().manual_seed(11)
    steps = [(0, 13), (13, 1), (14, 1), (15, 40), (55, 1), (56, CONTEXT - 56), (0, 6), (6, 1)]
    for start, n in steps:
        tokens, pos = torch.randint(0, vocab, (1, n), generator=g), torch.arange(start, start + n)
        with torch.no_grad():
            want = full(tokens, pos)  # no kv_len, no n_logits: the whole cache, every position
            last_only = n % 2 == 1  # both forms along the way, both writing the cache
            got = d(tokens, pos, last_only=last_only)
        assert got.shape == (1, 1 if last_only else n, vocab)
        torch.testing.assert_close(got, want[:, -got.size(1):], atol=1e-3, rtol=1e-3)  # fp32 noise over 200 positions


def test_python_chat_with_system_prompt_matches_eager(llama3):
    from torchchat.backends.aoti import AOTIDecoder

    tok, info = llama3.eager.tokenizer, llama3.eager.info
    exported = AOTIDecoder(llama3.paths["pt2"])
    assert two_turn_chat(exported, tok, info) == two_turn_chat(llama3.eager_decoder(), tok, info)


def test_cli_generate_with_exported_artifacts(llama2):
    common = ["--tokenizer-path", str(llama2.tokenizer), "--prompt", PROMPTS[0], "--temperature", "0",
              "--max-new-tokens", "16"]
    outs = []
    for flag, path in (("--checkpoint-path", llama2.checkpoint), ("--dso-path", llama2.paths["so"]),
                       ("--aoti-package-path", llama2.paths["pt2"])):
        p = cli("generate", flag, path, *common)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] == outs[1] == outs[2]


# ---------------------------------------------------------------------------------------------
# Python: bad input and atomic export


def test_python_rejects_foreign_and_truncated_files(llama2, tmp_path):
    from torchchat.backends.aoti import AOTIDecoder

    foreign = tmp_path / "foreign.so"
    foreign.write_bytes(b"hello world, not a library")
    libz = next((p for p in (Path("/usr/lib/x86_64-linux-gnu/libz.so.1"), Path("/lib/x86_64-linux-gnu/libz.so.1"))
                 if p.is_file()), None)
    cut_so, cut_pt2 = tmp_path / "cut.so", tmp_path / "cut.pt2"
    cut_so.write_bytes(llama2.paths["so"].read_bytes()[:100_000])
    cut_pt2.write_bytes(llama2.paths["pt2"].read_bytes()[:100_000])
    for path in [foreign, cut_so, cut_pt2, tmp_path / "missing.so"] + ([libz] if libz else []):
        with pytest.raises(UserError) as e:
            AOTIDecoder(path)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["so", "pt2"])
def test_weights_are_stored_once_and_mapped(llama3, fmt):
    """fp32: the constants live after the .so's ELF content / first in the .pt2 (mapped at load,
    not copied), the tied embedding/output matrix once and unpacked, the KV cache not at all
    (allocated as zeros)."""
    from torchchat import mapped_constants, metadata

    path = llama3.paths[fmt]
    at = metadata.read_so_metadata_block(path)[1] if fmt == "so" else mapped_constants.PT2_BLOCK_AT
    data_start, index = mapped_constants.read_index(path, at)
    by_name = {e["name"]: e for e in index["constants"]}
    weights = llama3.eager.model.state_dict()
    tied = llama3.eager.model.output.weight
    assert tied.data_ptr() == llama3.eager.model.tok_embeddings.weight.data_ptr()
    param_bytes = sum(t.numel() * t.element_size() for n, t in weights.items()
                      if "kv_cache" not in n and n != "output.weight")  # the tied matrix counted once
    # The packed weights of inductor's GEMM templates replace the originals; the tied matrix has no
    # packed copy (torchchat/export/program.py TiedOutput); the rest is the rope table.
    assert param_bytes <= index["data_bytes"] <= 1.05 * param_bytes
    if fmt == "so":
        assert path.stat().st_size == data_start + index["data_bytes"]
    caches = [e for n, e in by_name.items() if "kv_cache" in n]
    assert caches and all(e.get("zeros") and "data" not in e for e in caches)
    tied_entries = [e for e in index["constants"] if e["sizes"] == list(tied.shape) and not e.get("zeros")]
    assert len({e["data"] for e in tied_entries}) == 1
    stored = mapped_constants.load(path, at)[0][tied_entries[0]["name"]]
    assert torch.equal(stored, tied.detach())


def test_bf16_so_is_mapped_and_matches_eager(llama2, tmp_path):
    """bf16 compiles with inductor's C++ GEMM templates only, so its weights are plain tensors
    stored after the library and mapped; the artifact computes what eager bf16 does."""
    from torchchat import export, mapped_constants, metadata
    from torchchat.backends.aoti import AOTIDecoder
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    args = model_args(llama2.checkpoint, llama2.tokenizer)
    args.dtype = "bf16"
    out = tmp_path / "bf16.so"
    loaded = load_model(args)
    export.export_model(loaded.model, loaded.info, "bf16", CONTEXT, so_path=out)
    _, at = metadata.read_so_metadata_block(out)
    assert mapped_constants.read_index(out, at) is not None
    d, eager = AOTIDecoder(out), EagerDecoder(load_model(args).model, CONTEXT)
    assert d.dtype == "bf16"
    ids = llama2.eager.tokenizer.encode(PROMPTS[0], bos=True)
    tokens, pos = torch.tensor([ids]), torch.arange(len(ids))
    got, want = d(tokens, pos).float(), eager(tokens, pos).float()
    assert torch.allclose(got, want, atol=0.05 * want.abs().max().item()), (got - want).abs().max()
    if AOTI_RUN.is_file():
        p = aoti_run(out, llama2.runner_tokenizer, "-t", "0", "-n", "16", "-i", PROMPTS[0])
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("damage", ["truncated", "index"])
def test_damaged_constants_are_one_line_errors(llama2, tmp_path, damage):
    from torchchat import metadata
    from torchchat.backends.aoti import AOTIDecoder

    data = bytearray(llama2.paths["so"].read_bytes())
    _, at = metadata.read_so_metadata_block(llama2.paths["so"])
    if damage == "truncated":
        data = data[:-1000]
    else:
        data[at + 16:at + 24] = b"{broken "
    bad = tmp_path / f"{damage}.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        AOTIDecoder(bad)
    assert "\n" not in str(e.value) and "constants" in str(e.value)
    if AOTI_RUN.is_file():
        line = one_line_error(aoti_run(bad, llama2.runner_tokenizer, "-i", "hi", "-n", "8"))
        assert str(bad) in line and "constants" in line


def test_python_prompt_longer_than_context_is_a_user_error(llama2):
    from torchchat.backends.aoti import AOTIDecoder

    d = AOTIDecoder(llama2.paths["so"])
    with pytest.raises(UserError, match="context"):
        greedy(d, [1] * (CONTEXT + 1), [])


def test_tokenizer_larger_than_model_is_refused(llama2, tmp_path):
    from torchchat.load import load_exported

    big = write_tiktoken(tmp_path / "big.model", n_base=384)  # 640 tokens > the model's 512
    with pytest.raises(UserError, match="tokenizer"):
        load_exported(llama2.paths["pt2"], big)


def test_aoti_program_keeps_three_symbolic_sizes():
    """T, kv_len and n_logits stay three symbols over [1, context]: neither specialised to the
    example sizes nor unified with each other; ExecuTorch's program has T and n_logits, no kv_len."""
    from torchchat import export
    from torchchat.model import ModelArgs, Transformer

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32)).eval()
    ep = export.export_program(model, 16, aoti=True)
    vals = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
    sizes = [vals["tokens"].shape[1], vals["kv_len"].shape[0], vals["n_logits"].shape[0]]
    assert all(isinstance(s, torch.SymInt) for s in sizes)
    symbols = [s.node.expr for s in sizes]
    assert len(set(symbols)) == 3 and vals["input_pos"].shape[0].node.expr == symbols[0]
    for sym in symbols:
        assert (int(ep.range_constraints[sym].lower), int(ep.range_constraints[sym].upper)) == (1, 16)
    assert list(ep.graph_signature.user_inputs) == ["tokens", "input_pos", "kv_len", "n_logits"]
    et = export.export_program(model, 16)
    vals = {n.name: n.meta["val"] for n in et.graph.nodes if n.op == "placeholder"}
    assert [n for n in et.graph_signature.user_inputs if n] == ["tokens", "input_pos", "n_logits"]
    assert vals["n_logits"].shape[0].node.expr != vals["tokens"].shape[1].node.expr


@pytest.mark.parametrize("error", [RuntimeError("compiler crashed"), KeyboardInterrupt()])
def test_export_is_atomic(tmp_path, monkeypatch, error):
    """A failed or interrupted compile leaves neither the output nor temporary files behind."""
    from torchchat import export
    from torchchat.metadata import ModelInfo
    from torchchat.model import ModelArgs, Transformer

    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=64, max_seq_len=32)).eval()
    info = ModelInfo(64, 32, 1, True, [2], "sentencepiece", "llama2")

    def broken(gm, args, kwargs=None, options=None):
        out = Path(options["aot_inductor.output_path"])
        out.write_bytes(b"\x7fELF half written")
        raise error

    monkeypatch.setattr(torch._inductor, "aot_compile", broken)
    out = tmp_path / "model.so"
    out.write_bytes(b"previous artifact")
    with pytest.raises(type(error)):
        export.export_model(model, info, "fp32", 16, so_path=out)
    assert out.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so"]


# ---------------------------------------------------------------------------------------------
# The native runner: aoti_run on the same artifacts

needs_runner = pytest.mark.skipif(not AOTI_RUN.is_file(), reason="build it: scripts/build_native.sh aoti")


@needs_runner
@pytest.mark.parametrize("case", CASES, indirect=True, ids=[f"{s}-{f}" for s, f in CASES])
def test_runner_greedy_matches_eager(case, tmp_path):
    m, fmt = case
    e = m.eager_decoder()
    tok, info = m.eager.tokenizer, m.eager.info
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt, bos=info.add_bos)
        want = greedy(e, ids, info.stop_ids)
        trace = tmp_path / f"trace{i}.jsonl"
        p = aoti_run(m.paths[fmt], m.runner_tokenizer, "-t", "0", "-n", str(len(ids) + N_NEW), "-i", prompt,
                     trace=trace)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(prompt)
        fed = fed_tokens(trace)
        # -n counts positions; the runner may feed one more token than we compare
        assert fed[:len(ids) + len(want) - 1] == ids + want[:-1], prompt
        assert len(fed) >= len(ids) + len(want) - 1
        assert "tokens/s" in p.stderr


@needs_runner
def test_runner_chat_with_system_prompt_matches_eager(llama3, tmp_path):
    tok, info = llama3.eager.tokenizer, llama3.eager.info
    first = system_chat_turn(tok, info)
    want = greedy(llama3.eager_decoder(), first, info.stop_ids)
    trace = tmp_path / "chat.jsonl"
    p = aoti_run(llama3.paths["pt2"], llama3.runner_tokenizer, "-m", "chat", "-y", SYSTEM, "-i", USER, "-t", "0",
                 "-n", str(len(first) + N_NEW), trace=trace)
    assert p.returncode == 0, p.stderr
    assert "Assistant: " in p.stdout
    assert fed_tokens(trace)[:len(first) + len(want) - 1] == first + want[:-1]


@needs_runner
def test_runner_rejects_foreign_and_truncated_artifacts(llama2, tmp_path):
    cut_so, cut_pt2, foreign = tmp_path / "cut.so", tmp_path / "cut.pt2", tmp_path / "notes.so"
    cut_so.write_bytes(llama2.paths["so"].read_bytes()[:200_000])
    cut_pt2.write_bytes(llama2.paths["pt2"].read_bytes()[:200_000])
    foreign.write_text("not a model\n")
    zip_pt2 = tmp_path / "other.pt2"
    import zipfile

    with zipfile.ZipFile(zip_pt2, "w") as z:
        z.writestr("other/data.txt", "hello")
    for path in (cut_so, cut_pt2, foreign, zip_pt2, tmp_path / "missing.so"):
        line = one_line_error(aoti_run(path, llama2.runner_tokenizer, "-i", "hi", "-n", "8"))
        assert str(path) in line


@needs_runner
def test_runner_rejects_tokenizer_that_does_not_fit(llama2, llama3, tmp_path):
    # a tiktoken file for a SentencePiece model, and a tiktoken vocabulary larger than the model's
    one_line_error(aoti_run(llama2.paths["so"], llama3.runner_tokenizer, "-i", "hi", "-n", "8"))
    big = write_tiktoken(tmp_path / "big.model", n_base=400)  # 656 tokens > 640
    assert "tokenizer" in one_line_error(aoti_run(llama3.paths["pt2"], big, "-i", "hi", "-n", "8"))


@needs_runner
def test_runner_prompt_longer_than_context_and_large_n(llama2):
    check_long_prompt_and_large_n(aoti_run, llama2.paths["so"], llama2.paths["pt2"], llama2.runner_tokenizer)


def test_python_older_version_is_refused_in_one_line(llama2, tmp_path):
    from torchchat.backends.aoti import AOTIDecoder

    old = older_version_copy(llama2.paths["so"], tmp_path / "old.so")
    with pytest.raises(UserError) as e:
        AOTIDecoder(old)
    assert str(e.value) == f"{old}: exported by an older version; export again"
    p = cli("generate", "--dso-path", old, "--tokenizer-path", llama2.tokenizer, "--prompt", "hi")
    assert one_line_error(p) == f"error: {old}: exported by an older version; export again"


@needs_runner
def test_runner_older_version_is_refused_in_one_line(llama2, tmp_path):
    old = older_version_copy(llama2.paths["so"], tmp_path / "old.so")
    p = aoti_run(old, llama2.runner_tokenizer, "-i", "hi")
    assert one_line_error(p) == f"error: {old}: exported by an older version; export again"


def test_one_command_exports_so_with_four_inputs_and_pte_without_kv_len(tmp_path):
    """`export --output-dso-path --output-pte-path` together: ExecuTorch gets (tokens, input_pos, None, n_logits)."""
    pytest.importorskip("executorch")
    import json

    from torchchat.backends.executorch import PTEDecoder
    from torchchat.backends.aoti import AOTIDecoder

    m = Exported(tmp_path, "llama2", ("so", "pte"))
    so, pte = AOTIDecoder(m.paths["so"]), PTEDecoder(m.paths["pte"])
    (text,) = pte.program.load_method("get_metadata_json").execute([])
    assert json.loads(str(text))["format_version"] == 2
    assert pte._forward.metadata.num_inputs() == 4
    tok, info = m.eager.tokenizer, m.eager.info
    ids = tok.encode(PROMPTS[1], bos=True)
    with torch.no_grad():
        assert pte(torch.tensor([ids]), torch.arange(len(ids))).shape == (1, len(ids), info.vocab_size)
        last = pte(torch.tensor([ids]), torch.arange(len(ids)), last_only=True)  # the output layer once
        assert last.shape == (1, 1, info.vocab_size)
        assert torch.allclose(last[0, 0], pte(torch.tensor([ids]), torch.arange(len(ids)))[0, -1], atol=1e-5)
    assert greedy(so, ids, info.stop_ids) == greedy(pte, ids, info.stop_ids) == greedy(m.eager_decoder(), ids,
                                                                                           info.stop_ids)


def test_so_metadata_survives_weights_appended_to_the_library(llama2, tmp_path, monkeypatch):
    """Over 2 GB of weights, AOTI appends them to the .so and finds them from the file's end
    (on a 16 KiB boundary); the metadata block must not disturb that. Forced here on a tiny model."""
    from torchchat import export
    from torchchat.backends.aoti import AOTIDecoder
    from torchchat.load import load_model

    monkeypatch.setitem(export.aoti.INDUCTOR_CONFIGS, "aot_inductor.force_mmap_weights", True)
    loaded = load_model(model_args(llama2.checkpoint, llama2.tokenizer))
    out = tmp_path / "mmap.so"
    export.export_model(loaded.model, loaded.info, "fp32", CONTEXT, so_path=out)
    ids = llama2.eager.tokenizer.encode(PROMPTS[0], bos=True)
    d = AOTIDecoder(out)
    assert d.info.vocab_size == llama2.eager.info.vocab_size
    assert greedy(d, ids, d.info.stop_ids) == greedy(llama2.eager_decoder(), ids, d.info.stop_ids)
    if AOTI_RUN.is_file():
        p = aoti_run(out, llama2.runner_tokenizer, "-t", "0", "-n", "24", "-i", PROMPTS[0])
        assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------------------------------------
# The benchmark harness (bench/backend_bench.cpp): what it feeds the model is what its figures claim


@needs_runner
@pytest.mark.parametrize("depth", [0, 16])
def test_bench_decodes_as_llama_bench(llama2, tmp_path, depth):
    """aoti_bench measures pp and tg as llama-bench's separate tests: the prompt from position 0,
    then decode from position 0 again (tg128 of an empty context), or after -d positions."""
    trace = tmp_path / "trace.jsonl"
    p = subprocess.run([str(AOTI_BENCH), llama2.paths["so"], "-p", "8", "-g", "4", "-d", str(depth), "-r", "1"],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, TORCHCHAT_AOTI_TRACE=str(trace)))
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout)
    assert len(figures["pp_tps"]) == len(figures["tg_tps"]) == 1 and figures["tg_tps"][0] > 0
    calls = [(c["start_pos"], len(c["tokens"])) for c in map(json.loads, trace.read_text().splitlines())]
    one_rep = [(0, 8)] + ([(0, depth)] if depth else []) + [(depth + i, 1) for i in range(4)]
    assert calls == one_rep * 2  # the cold repetition, then the measured one


@needs_runner
def test_bench_refuses_more_than_the_context(llama2):
    p = subprocess.run([str(AOTI_BENCH), llama2.paths["so"], "-p", "8", "-g", "8", "-d", str(CONTEXT)],
                       capture_output=True, text=True, timeout=120)
    assert "context" in one_line_error(p)


@needs_runner
@pytest.mark.parametrize("flags", [["--mb", "0"], ["--mb", "-5"], ["-t", "0"]])
def test_bandwidth_probe_refuses_an_empty_buffer_or_no_threads(flags):
    p = subprocess.run([str(AOTI_BENCH), "--bandwidth", *flags], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.startswith("usage:")


@needs_runner
def test_bandwidth_probe_reads_the_buffer_it_is_given():
    p = subprocess.run([str(AOTI_BENCH), "--bandwidth", "-t", "1", "--mb", "16"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    probe = json.loads(p.stdout)
    assert probe["mb"] == 16 and probe["threads"] == 1 and probe["read_gb_per_s"] > 0


@needs_runner
def test_runner_chat_follows_the_models_template(llama3, tmp_path):
    check_runner_chat_follows_the_models_template(aoti_run, llama3.paths["pt2"], llama3, tmp_path / "chat.jsonl")
