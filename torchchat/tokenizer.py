"""One tokenizer interface, one wrapper per library: SentencePiece, tiktoken (Llama 3), HF tokenizers.

`load_tokenizer` picks the wrapper from the file's content, never from its name: a GGUF magic,
a JSON object (tokenizer.json), lines of "base64 rank" (tiktoken), else a SentencePiece proto.
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Iterator, Optional

from torchchat.errors import UserError

# Tokens that end a turn in chat models; generation stops on these as well as on eos.
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>")


class Tokenizer:
    """The interface generate and chat use. Subclasses fill in the attributes and three methods."""

    kind: str
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]
    add_bos: bool

    def encode(self, text: str, bos: bool, specials: bool = True) -> list[int]:
        """Ids of `text`. With specials=False, text that spells a special token ("<|im_end|>") stays
        text: what a chat user types cannot become a control token (the C++ runner's
        SpecialTokens::AsText)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_id(self, text: str) -> Optional[int]:
        """Id of a special token such as "<|eot_id|>", or None if this vocabulary lacks it."""
        raise NotImplementedError

    @property
    def control_tokens(self) -> list[str]:
        """The special tokens that text is split at before encoding (what a chat template's
        rendered text is cut at, as the reference libraries cut it)."""
        raise NotImplementedError

    def template_tokens(self) -> dict[str, str]:
        """bos_token / eos_token as a chat template names them."""
        names = {}
        for name, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            text = next((t for t in self.control_tokens if self.token_id(t) == i), None) if i is not None else None
            if text is not None:
                names[name] = text
        return names

    @property
    def stop_ids(self) -> list[int]:
        ids = [self.eos_id] + [self.token_id(t) for t in END_OF_TURN]
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def chat_template(self) -> str:
        if self.kind == "sentencepiece":
            return "llama2"
        if self.token_id("<|start_header_id|>") is not None:
            return "llama3"
        if self.token_id("<|im_start|>") is not None:
            return "chatml"
        return "none"

    def _with_bos(self, ids: list[int], bos: bool) -> list[int]:
        return [self.bos_id] + ids if bos and self.bos_id is not None else ids


# ---------------------------------------------------------------------------------------------


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"
    add_bos = True

    def __init__(self, model_proto: bytes, path: Path):
        import sentencepiece  # here, not above: each library only for its own format (start-up time)

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception:  # RuntimeError / OSError on a non-proto
            raise UserError(f"{path}: not a tokenizer we can read (SentencePiece, tiktoken, tokenizer.json)") from None
        if self.sp.vocab_size() == 0:
            raise UserError(f"{path}: empty SentencePiece model")
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str, bos: bool, specials: bool = True) -> list[int]:
        # SentencePiece never matches control tokens like "<s>" in text; that is llama2's behaviour.
        return self._with_bos(self.sp.encode(text), bos)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))

    def token_id(self, text: str) -> Optional[int]:
        i = self.sp.piece_to_id(text)
        return i if self.sp.id_to_piece(i) == text else None

    @property
    def control_tokens(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size) if self.sp.is_control(i)]


# ---------------------------------------------------------------------------------------------

# Llama 3's pre-tokenizer and special tokens, as defined by llama_models/llama3/tokenizer.py.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
LLAMA3_NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]


def llama3_special_tokens(num_base: int) -> dict[str, int]:
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(LLAMA3_NAMED_SPECIAL))]
    return {tok: num_base + i for i, tok in enumerate(LLAMA3_NAMED_SPECIAL + reserved)}


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"
    add_bos = True

    # tiktoken fails on very long runs of (non-)whitespace (openai/tiktoken#195); Llama 3 cuts
    # input into pieces below these limits, and so do we to give identical ids.
    MAX_CHUNK = 400_000
    MAX_RUN = 25_000

    def __init__(self, ranks: dict[bytes, int], path: Path):
        import tiktoken  # here, not above: each library only for its own format (start-up time)

        self.special = llama3_special_tokens(len(ranks))
        self.enc = tiktoken.Encoding(name=path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=self.special)
        self.vocab_size = len(ranks) + len(self.special)
        self.bos_id = self.special["<|begin_of_text|>"]
        self.eos_id = self.special["<|end_of_text|>"]

    def encode(self, text: str, bos: bool, specials: bool = True) -> list[int]:
        ids = []
        allowed = "all" if specials else set()
        for i in range(0, len(text), self.MAX_CHUNK):
            for piece in _split_long_runs(text[i : i + self.MAX_CHUNK], self.MAX_RUN):
                ids.extend(self.enc.encode(piece, allowed_special=allowed, disallowed_special=()))
        return self._with_bos(ids, bos)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(list(ids))

    def token_id(self, text: str) -> Optional[int]:
        return self.special.get(text)

    @property
    def control_tokens(self) -> list[str]:
        return list(self.special)


def _split_long_runs(s: str, limit: int) -> Iterator[str]:
    """Cut s so no piece has more than `limit` consecutive whitespace or non-whitespace characters."""
    start, run, run_is_space = 0, 0, s[:1].isspace()
    for i, ch in enumerate(s):
        if ch.isspace() != run_is_space:
            run, run_is_space = 1, ch.isspace()
        else:
            run += 1
            if run > limit:
                yield s[start:i]
                start, run = i, 1
    yield s[start:]


def read_tiktoken_ranks(text: str, path: Path) -> dict[bytes, int]:
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"{path}: line {n} is not 'base64-token rank': truncated or corrupt tiktoken file") from None
        ranks[token] = rank
    return ranks


# ---------------------------------------------------------------------------------------------


class HFTokenizer(Tokenizer):
    kind = "hf_bpe"

    # Without a tokenizer_config.json, guess bos/eos from the usual names, most specific first.
    BOS_NAMES = ("<|begin_of_text|>", "<s>", "<|im_start|>", "<bos>")
    EOS_NAMES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<|im_end|>", "<eos>")

    def __init__(self, text: str, path: Path, config: Optional[dict] = None):
        import tokenizers  # here, not above: each library only for its own format (start-up time)

        try:
            self.tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:
            raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:150]})") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        config = config or {}
        self.bos_id = self._config_token(config.get("bos_token")) or self._first_present(self.BOS_NAMES)
        self.eos_id = self._config_token(config.get("eos_token")) or self._first_present(self.EOS_NAMES)
        # The post-processor says whether plain prompts start with BOS.
        with_special = self.tok.encode("a", add_special_tokens=True).ids
        plain = self.tok.encode("a", add_special_tokens=False).ids
        self.add_bos = len(with_special) > len(plain) and with_special[0] != plain[0]
        if self.add_bos and self.bos_id is None:
            self.bos_id = with_special[0]

    def _config_token(self, token) -> Optional[int]:
        if isinstance(token, dict):  # older tokenizer_config.json spells AddedToken out
            token = token.get("content")
        return self.tok.token_to_id(token) if isinstance(token, str) else None

    def _first_present(self, names) -> Optional[int]:
        for name in names:
            i = self.tok.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode(self, text: str, bos: bool, specials: bool = True) -> list[int]:
        self.tok.encode_special_tokens = not specials  # tokenizers' switch: special added tokens as text
        return self._with_bos(self.tok.encode(text, add_special_tokens=False).ids, bos)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_id(self, text: str) -> Optional[int]:
        return self.tok.token_to_id(text)

    @property
    def control_tokens(self) -> list[str]:
        return [t.content for t in self.tok.get_added_tokens_decoder().values()]


# ---------------------------------------------------------------------------------------------


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer not found: {path}")
    with open(path, "rb") as f:
        head = f.read(256)
    if head[:4] == b"GGUF":
        return _gguf_tokenizer(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write before JSON
        data = data[3:]
    if not data.strip():
        raise UserError(f"{path}: empty tokenizer file")
    if data.lstrip()[:1] == b"{":
        text = _utf8(data, path)
        try:
            doc = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise UserError(f"{path}: {e.args[0]!r} appears twice in one object (two tokens spelled the same?): "
                            "an ambiguous tokenizer") from None
        except ValueError:
            raise UserError(f"{path}: truncated or corrupt JSON tokenizer") from None
        if not isinstance(doc, dict) or "model" not in doc:
            raise UserError(f"{path}: JSON but not a tokenizer.json (no 'model')")
        return HFTokenizer(text, path, _read_tokenizer_config(path.parent / "tokenizer_config.json"))
    first_line = data[:256].split(b"\n", 1)[0]
    if re.fullmatch(rb"[A-Za-z0-9+/]+=* \d+\s*", first_line):
        return TiktokenTokenizer(read_tiktoken_ranks(_utf8(data, path), path), path)
    # Anything else must parse as a SentencePiece model proto.
    return SentencePieceTokenizer(data, path)


def _gguf_tokenizer(path: Path) -> Tokenizer:
    """A GGUF carries its tokenizer: rebuild it as tokenizer.json (byte-level BPE) or a SentencePiece
    model, with bos/eos from the metadata."""
    # Here, not above: imports torch and gguf, which a tokenizer file does not need (start-up time).
    from torchchat.checkpoints.gguf import field, gguf_chat_info, gguf_sentencepiece_model, gguf_tokenizer_json, open_gguf

    reader = open_gguf(path)
    info = gguf_chat_info(path, reader)
    if field(reader, "tokenizer.ggml.model") == "llama":
        tok = SentencePieceTokenizer(gguf_sentencepiece_model(path, reader), path)
        tok.add_bos = info["add_bos"]
        return tok
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    name = lambda i: tokens[i] if i is not None and 0 <= i < len(tokens) else None  # noqa: E731
    config = {"bos_token": name(info["bos_id"]), "eos_token": name(info["eos_id"])}
    return HFTokenizer(gguf_tokenizer_json(path, reader), path, config)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all distinct: libraries differ on which of two equal keys wins."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return d


def _utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text: corrupt tokenizer file") from None


def _read_tokenizer_config(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None  # optional metadata; the tokenizer itself is fine
    return config if isinstance(config, dict) else None


def check_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """A tokenizer may be smaller than the model's (padded) vocabulary, never larger."""
    if tokenizer.vocab_size > vocab_size:
        raise UserError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}: wrong tokenizer for this model?"
        )
