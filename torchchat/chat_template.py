"""The model's own chat template (Jinja), rendered as transformers renders it, and cut into the
fixed pieces a chat is built from turn by turn.

A chat keeps its history in the KV cache, so each turn feeds only what the template adds after
the previous reply. `chat_turns` renders the template over conversations whose messages are
sentinel words and cuts the text at them:

    first              the opening user turn without a system prompt (with the template's own
                       default system turn, if it adds one), up to where the reply begins
    first_with_system  the same with a system prompt (None if the template refuses one)
    next               every later user turn, from the token that closes the previous reply

Each is a list of segments: ("text", s) for the template's own text, ("token", s) for a control
token the template spells (split off as the tokenizer would split the rendered text), and
("system", "") / ("user", "") where the message goes. The same lists go into exported artifacts
(torchchat/metadata.py "chat_turns") for the native runners, which need no Jinja engine.
The cut is checked: the pieces put together must give the template's own rendering of longer
conversations, or the template cannot be followed turn by turn and `chat_turns` says so.
A reply stays in the cache as the model sampled it: where a template trims messages (Llama 3),
a reply that ends in whitespace differs from transformers' re-rendering of the conversation.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Optional

from torchchat.errors import UserError

Segment = tuple[str, str]  # (kind, text), kind: text | token | system | user
ChatTurns = dict[str, Optional[list[Segment]]]

# Templates for checkpoints that carry none (Meta's checkpoints, llama2.c files), by registry name;
# "llama3" is Meta-Llama-3-Instruct's tokenizer_config.json template.
# "llama2" stays the built-in SentencePiece template of torchchat/chat.py: its replies are framed
# by spaces that SentencePiece folds into the tokens around them.
DEFAULT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
}

# Message contents that no template changes (no spaces to trim, no markup) and no text contains.
_SYSTEM, _USER, _REPLY = "xqzSYSTEMzqx", "xqzUSER{}zqx", "xqzREPLY{}zqx"


def render(source: str, messages: list[dict], add_generation_prompt: bool, special_tokens: dict[str, str]) -> str:
    """The template's text for `messages`, as transformers' apply_chat_template(tokenize=False) renders it."""
    return _compile(source).render(messages=messages, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **special_tokens)


_COMPILED: dict[str, object] = {}


def _compile(source: str):
    if source not in _COMPILED:
        import jinja2  # here, not above: only chat needs it (start-up time)
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        class Generation(jinja2.ext.Extension):
            """{% generation %}...{% endgeneration %}: transformers marks the assistant's text with it
            (for training masks); it renders its body."""

            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

            def _body(self, caller):
                return caller()

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[Generation, jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            _COMPILED[source] = env.from_string(source)
        except jinja2.TemplateError as e:
            raise UserError(f"the model's chat template is not valid Jinja: {str(e).splitlines()[0][:200]}") from None
    return _COMPILED[source]


def _messages(system: Optional[str], n_users: int) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for i in range(n_users):
        if i:
            msgs.append({"role": "assistant", "content": _REPLY.format(i)})
        msgs.append({"role": "user", "content": _USER.format(i + 1)})
    return msgs


def chat_turns(source: str, special_tokens: dict[str, str], controls: list[str]) -> ChatTurns:
    """The template cut into first / first_with_system / next segments (module docstring).

    special_tokens: the names the template may use (bos_token, eos_token, ...); controls: the
    tokenizer's special tokens, at which rendered text is split."""
    import jinja2  # here, not above: only chat needs it (start-up time)

    def text(system: Optional[str], n_users: int) -> Optional[str]:
        try:
            return render(source, _messages(system, n_users), True, special_tokens)
        except jinja2.TemplateError as e:
            if system is not None:
                return None  # a template may refuse a system prompt (raise_exception)
            raise UserError(f"the model's chat template fails: {str(e).splitlines()[0][:200]}") from None

    def cut(rendered: str, holes: list[tuple[str, str]]) -> list[Segment]:
        segments: list[Segment] = []
        for word, kind in holes:
            before, sep, rendered = rendered.partition(word)
            if not sep or word in rendered:
                raise _NotIncremental(f"the message {kind} does not appear once, unchanged")
            segments += _split_controls(before, controls) + [(kind, "")]
        return segments + _split_controls(rendered, controls)

    one = text(None, 1)
    turns: ChatTurns = {"first": None, "first_with_system": None, "next": None}
    try:
        turns["first"] = cut(one, [(_USER.format(1), "user")])
        with_system = text(_SYSTEM, 1)
        if with_system is not None:
            turns["first_with_system"] = cut(with_system, [(_SYSTEM, "system"), (_USER.format(1), "user")])
        two = text(None, 2)
        if not two.startswith(one + _REPLY.format(1)):
            raise _NotIncremental("a later turn changes what the template rendered for the earlier ones")
        turns["next"] = cut(two[len(one) + len(_REPLY.format(1)):], [(_USER.format(2), "user")])
        if not turns["next"] or turns["next"][0][0] != "token":
            raise _NotIncremental("a reply is not closed by a control token")
        # Put together, the pieces must give the template's own rendering of longer conversations.
        for system in (None, _SYSTEM):
            opening = turns["first"] if system is None else turns["first_with_system"]
            if opening is None:
                continue
            for n in (2, 3):
                built = _fill(opening, system, _USER.format(1)) + "".join(
                    _REPLY.format(i) + _fill(turns["next"], None, _USER.format(i + 1)) for i in range(1, n))
                if built != text(system, n):
                    raise _NotIncremental(f"a conversation of {n} turns renders differently from its turns one by one")
    except _NotIncremental as e:
        raise UserError(f"the model's chat template cannot be followed turn by turn: {e}") from None
    return turns


class _NotIncremental(Exception):
    pass


def _fill(segments: list[Segment], system: Optional[str], user: str) -> str:
    return "".join(system if kind == "system" else user if kind == "user" else s for kind, s in segments)


def _split_controls(text: str, controls: list[str]) -> list[Segment]:
    """Text with the control tokens it spells split off, longest match first (as tokenizers split)."""
    if not text:
        return []
    names = sorted((c for c in controls if c), key=len, reverse=True)
    if not names:
        return [("text", text)]
    segments: list[Segment] = []
    for part in re.split("(" + "|".join(map(re.escape, names)) + ")", text):
        if part:
            segments.append(("token" if part in controls else "text", part))
    return segments


def turn_pieces(turns: ChatTurns, user: str, system: Optional[str], first: bool) -> list[tuple[str, bool]]:
    """One user turn as (text, is_control_token) pieces; the messages are text, never control tokens."""
    if first:
        segments = turns["first"] if not system else turns["first_with_system"]
        if segments is None:
            raise UserError("this model's chat template takes no system prompt")
    else:
        segments = turns["next"]
    return [(system or "", False) if kind == "system" else (user, False) if kind == "user" else (s, kind == "token")
            for kind, s in segments]


# ---------------------------------------------------------------------------------------------
# Where a checkpoint keeps its template


def hf_chat_template(folder: Path) -> Optional[str]:
    """The template of a Hugging Face model folder: chat_template.jinja, or tokenizer_config.json's
    chat_template (a string, or a list of named templates of which "default" is the chat)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None
