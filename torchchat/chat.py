"""Chat templates and the interactive chat loop.

The conversation lives in the KV cache: each turn feeds only its new tokens at the
next free position. The token sequence equals the model's chat template rendered over
the whole history (what transformers' `apply_chat_template` gives), so a turn starts by
feeding the previous reply's last token, which was sampled but never fed, and an
end-of-turn token when the reply was cut short.

A model's own Jinja template is followed through the pieces torchchat/chat_template.py cuts it
into (the same pieces exported artifacts carry for the native runners). Models without one use
the built-in templates below, also implemented in the C++ runner (runner/src/chat_template.cpp);
tests hold both to transformers' rendering.
"""
from __future__ import annotations

import sys
from typing import Optional

from torchchat import chat_template
from torchchat.errors import UserError
from torchchat.backends import Decoder
from torchchat.generate import Sampler, Stats, TextStream, generate

TEMPLATES = ("llama2", "llama3", "chatml", "none")


def turn_pieces(template: str, user: str, system: Optional[str], first: bool) -> tuple[list[tuple[str, bool]], bool]:
    """One user turn up to where the assistant's reply begins, as (text, is_control_token) pieces,
    and whether it starts with BOS. Only the template's pieces are control tokens: a message that
    spells one ("<|im_end|>") stays text, so a user cannot end their turn or forge a system turn."""
    def c(token: str) -> tuple[str, bool]:
        return token, True

    def t(text: str) -> tuple[str, bool]:
        return text, False

    if template == "chatml":
        pieces = [] if first else [t("\n")]  # the newline that follows the previous <|im_end|>
        if first and system:
            pieces += [c("<|im_start|>"), t("system\n" + system), c("<|im_end|>"), t("\n")]
        pieces += [c("<|im_start|>"), t("user\n" + user), c("<|im_end|>"), t("\n"), c("<|im_start|>"), t("assistant\n")]
        return pieces, False
    if template == "llama3":
        def block(role: str, text: Optional[str]) -> list[tuple[str, bool]]:
            head = [c("<|start_header_id|>"), t(role), c("<|end_header_id|>"), t("\n\n")]
            return head if text is None else head + [t(text), c("<|eot_id|>")]

        head = [c("<|begin_of_text|>")] + (block("system", system) if system else []) if first else []
        return head + block("user", user) + block("assistant", None), False
    if template == "llama2":
        if first and system:
            return [t(f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]")], True
        return [t(f"[INST] {user} [/INST]")], True
    if template == "none":
        return [t(user)], first
    raise UserError(f"unknown chat template '{template}' (known: {', '.join(TEMPLATES)})")


def render_turn(template: str, user: str, system: Optional[str], first: bool) -> tuple[str, bool]:
    """Text of one user turn up to where the assistant's reply begins, and whether it starts with BOS."""
    pieces, bos = turn_pieces(template, user, system, first)
    return "".join(text for text, _ in pieces), bos


def encode_turn(tokenizer, pieces: list[tuple[str, bool]], bos: bool) -> list[int]:
    """Control pieces by id; the text between them encoded as plain text, one run per gap (as the
    reference libraries split rendered text at special tokens)."""
    ids, run = [], ""
    for text, control in pieces + [("", True)]:
        if not control:
            run += text
            continue
        if run:
            ids += tokenizer.encode(run, bos=False, specials=False)
            run = ""
        if text:
            token = tokenizer.token_id(text)
            if token is None:
                raise UserError(f"the chat template needs the special token {text}, which this tokenizer lacks")
            ids.append(token)
    return [tokenizer.bos_id] + ids if bos and tokenizer.bos_id is not None else ids


END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def end_of_turn_id(tokenizer, info) -> int:
    """The token that closes an assistant turn in this template (llama2: eos)."""
    marker = END_OF_TURN.get(info.chat_template)
    token = tokenizer.token_id(marker) if marker else None
    return token if token is not None else info.stop_ids[0]


class Conversation:
    """Turns a user message into the tokens to feed next, given what the cache already holds.

    template: a built-in template's name, or the model's own template as chat_template.chat_turns
    cut it (then end_of_turn is the token that opens its later turns)."""

    def __init__(self, tokenizer, template, end_of_turn: Optional[int], system: Optional[str] = None):
        self.tokenizer, self.template, self.end_of_turn, self.system = tokenizer, template, end_of_turn, system
        self.pending: list[int] = []  # sampled but not yet fed to the model
        self.first = True
        if not isinstance(template, str):
            self.end_of_turn = encode_turn(tokenizer, chat_template.turn_pieces(template, "", None, False)[:1], False)[0]
            if system and template["first_with_system"] is None:
                raise UserError("this model's chat template takes no system prompt")

    def turn_tokens(self, user: str) -> list[int]:
        if isinstance(self.template, str):
            pieces, bos = turn_pieces(self.template, user, self.system, self.first)
        else:
            pieces, bos = chat_template.turn_pieces(self.template, user, self.system, self.first), False
        ids = self.pending + encode_turn(self.tokenizer, pieces, bos)
        self.first, self.pending = False, []
        return ids

    def reply_done(self, reply: list[int], stop_ids) -> None:
        """After a reply: its last token was sampled but not fed. A stop token is replaced by the
        template's own closing token (which opens a later turn of the model's template)."""
        if not reply:
            return
        if not isinstance(self.template, str):
            self.pending = [] if reply[-1] in stop_ids else [reply[-1]]
        else:
            self.pending = [reply[-1]] if reply[-1] in stop_ids else [reply[-1], self.end_of_turn]


def conversation(tokenizer, info, system: Optional[str] = None) -> Conversation:
    """The chat for this model: its own template when it has one, else the built-in one named by info."""
    if info.chat_turns is not None:
        return Conversation(tokenizer, info.chat_turns, None, system)
    if info.chat_template == "none":
        raise UserError("this model has no chat template; use `generate` instead")
    return Conversation(tokenizer, info.chat_template, end_of_turn_id(tokenizer, info), system)


def chat_loop(model: Decoder, tokenizer, info, sampler: Sampler, max_new_tokens: int,
              system: Optional[str] = None, stdin=None, out=None) -> None:
    """Read user messages from stdin until EOF or '/bye'; stream each reply."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    if stdin is None:  # started with standard input closed
        raise UserError("chat reads the user's turns from standard input, which is closed")
    if stdin is sys.stdin:
        stdin.reconfigure(errors="replace")  # ill-formed UTF-8 becomes U+FFFD, as in the runners
    conv = conversation(tokenizer, info, system)
    stop_ids = list(dict.fromkeys(info.stop_ids + [conv.end_of_turn]))
    pos = 0
    interactive = stdin.isatty()
    if interactive:
        print("Chatting (Ctrl-D or /bye to end).", file=sys.stderr)
    while True:
        if interactive:
            out.write("User: ")
            out.flush()
        line = stdin.readline()
        if not line or line.strip() == "/bye":
            break
        user = line.rstrip("\n")
        if not user.strip():
            continue
        prompt = conv.turn_tokens(user)
        if pos + len(prompt) >= model.max_seq_len:
            raise UserError(f"the message is too long: its turn is {len(prompt)} tokens, and {model.max_seq_len - pos} "
                            f"of the {model.max_seq_len} positions are left; ending the chat")
        out.write("Assistant: ")
        stream = TextStream(tokenizer, context=prompt, skip=stop_ids, out=out)
        stats = Stats()
        reply = generate(model, prompt, max_new_tokens, sampler, stop_ids, start_pos=pos,
                         on_token=stream, stats=stats)
        stream.finish()
        out.write("\n")
        out.flush()
        print(stats.summary(), file=sys.stderr)
        pos += len(prompt) + len(reply) - 1  # the last reply token is fed with the next turn
        conv.reply_done(reply, stop_ids)
