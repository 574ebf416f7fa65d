#!/usr/bin/env python3
"""Convert a SentencePiece tokenizer.model into llama2.c's tokenizer.bin.

    python3 utils/tokenizer.py --tokenizer-model=PATH/tokenizer.model

writes PATH/tokenizer.bin, which the native runner reads. A GGUF file whose vocabulary is
SentencePiece's (tokenizer.ggml.model "llama": Llama 2, Mistral, TinyLlama) is read as the
SentencePiece model it was made from (torchchat/checkpoints/gguf.py gguf_sentencepiece_model).

tokenizer.bin (llama2.c's format, little-endian):
    int32 max_token_length
    per token, in id order: float32 score, int32 byte length, the piece's UTF-8 bytes
with the word-boundary mark U+2581 written as a space. The format has no piece
types, so they are written the way llama2.c's converter does and the runner
reads them back from the text:
    unknown piece   "<unk>"
    control pieces  "\\n<s>\\n", "\\n</s>\\n", ...  (inside newlines, so no text can merge into them)
    byte pieces     "<0x41>"  (byte fallback)

The runner reproduces sentencepiece's encoding exactly only for the kind of
model Llama 2 uses: BPE, identity normalization, a dummy prefix, no whitespace
collapsing. Any other model is refused with the reason, rather than converted
into a file that would tokenize differently.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

WORD_BOUNDARY = "\u2581"

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
MODEL_TYPE_NAMES = {1: "Unigram", 2: "BPE", 3: "Word", 4: "Char"}
BPE = 2


class ConversionError(Exception):
    """The model cannot be converted faithfully; the message says why."""


# ---- A minimal protobuf reader (sentencepiece_model.proto needs only this) ----


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ConversionError("not a SentencePiece model: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ConversionError("not a SentencePiece model: varint too long")


def _fields(data: bytes):
    """Yield (field_number, wire_type, value) for each field of a message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ConversionError(f"not a SentencePiece model: unknown wire type {wire_type}")
        if pos > len(data) or number == 0:
            raise ConversionError("not a SentencePiece model: truncated or corrupt protobuf")
        yield number, wire_type, value


@dataclass
class Piece:
    text: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class Model:
    pieces: list[Piece] = field(default_factory=list)
    model_type: int = 1  # proto default: UNIGRAM
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    normalization_rules: str = ""
    add_dummy_prefix: bool = True  # proto defaults
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    has_denormalizer: bool = False


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"not a SentencePiece model: {what} is not UTF-8") from None


def parse_model(data: bytes) -> Model:
    model = Model()
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == 2:
            piece = Piece("")
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    piece.text = _text(v, "a piece")
                elif n == 2 and w == 5:
                    piece.score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    piece.type = v
            model.pieces.append(piece)
        elif number == 2 and wire_type == 2:
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    model.model_type = v
                elif n == 35 and w == 0:
                    model.byte_fallback = bool(v)
                elif n == 24 and w == 0:
                    model.treat_whitespace_as_suffix = bool(v)
        elif number == 3 and wire_type == 2:
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    model.normalizer_name = _text(v, "the normalizer name")
                elif n == 2 and w == 2:
                    model.precompiled_charsmap = v
                elif n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    model.remove_extra_whitespaces = bool(v)
                elif n == 5 and w == 0:
                    model.escape_whitespaces = bool(v)
                elif n == 6 and w == 2:
                    model.normalization_rules = _text(v, "the normalization rules")
        elif number == 5 and wire_type == 2:
            for n, w, v in _fields(value):
                if (n == 2 and w == 2 and v) or (n == 6 and w == 2 and v):
                    model.has_denormalizer = True
    if not model.pieces:
        raise ConversionError("not a SentencePiece model: it has no pieces")
    return model


# ---- What tokenizer.bin can represent ----


def check_representable(model: Model) -> None:
    if model.model_type != BPE:
        name = MODEL_TYPE_NAMES.get(model.model_type, str(model.model_type))
        raise ConversionError(
            f"this is a {name} model; tokenizer.bin can only represent BPE models "
            "(the runner encodes by BPE merges, which would tokenize a Unigram model differently)"
        )
    if model.precompiled_charsmap or model.normalization_rules or model.normalizer_name not in ("", "identity"):
        raise ConversionError(
            f"the model normalizes its input ('{model.normalizer_name or 'custom rules'}', e.g. NFKC); "
            "tokenizer.bin cannot carry a normalizer, so only identity normalization is supported"
        )
    if model.remove_extra_whitespaces:
        raise ConversionError(
            "the model collapses whitespace (remove_extra_whitespaces=true); tokenizer.bin cannot express that, "
            "train with remove_extra_whitespaces=false (as Llama 2 does)"
        )
    if not model.add_dummy_prefix or not model.escape_whitespaces or model.treat_whitespace_as_suffix:
        raise ConversionError(
            "the model's whitespace handling is not Llama 2's "
            "(needs add_dummy_prefix=true, escape_whitespaces=true, treat_whitespace_as_suffix=false)"
        )
    if model.has_denormalizer:
        raise ConversionError("the model has a denormalizer, which tokenizer.bin cannot carry")
    for piece in model.pieces:
        if piece.type == USER_DEFINED:
            raise ConversionError(f"user-defined symbol {piece.text!r} cannot be represented in tokenizer.bin")
        if piece.type == UNUSED:
            raise ConversionError(f"unused piece {piece.text!r} cannot be represented in tokenizer.bin")


def _is_byte_piece_text(text: str) -> bool:
    return len(text) == 6 and text.startswith("<0x") and text.endswith(">") and all(
        c in "0123456789ABCDEF" for c in text[3:5]
    )


def bin_piece(piece: Piece) -> bytes:
    """The bytes stored for one piece (see the module docstring)."""
    if piece.type == UNKNOWN:
        return b"<unk>"
    if piece.type == CONTROL:
        return f"\n{piece.text}\n".encode()
    if piece.type == BYTE:
        if not _is_byte_piece_text(piece.text):
            raise ConversionError(f"byte piece {piece.text!r} is not of the form <0xNN>")
        return piece.text.encode()
    text = piece.text.replace(WORD_BOUNDARY, " ")
    ambiguous = (
        text == "<unk>"
        or _is_byte_piece_text(text)
        or (text.startswith("\n<") and text.endswith(">\n"))
    )
    if ambiguous:
        raise ConversionError(f"normal piece {piece.text!r} would be read back as a special piece")
    return text.encode()


def convert(model_bytes: bytes) -> bytes:
    model = parse_model(model_bytes)
    check_representable(model)
    pieces = [bin_piece(p) for p in model.pieces]
    if len(set(pieces)) != len(pieces):
        raise ConversionError("two pieces would be written identically (a piece contains a literal space?)")
    out = [struct.pack("<i", max(len(p) for p in pieces))]
    for piece, data in zip(model.pieces, pieces):
        out.append(struct.pack("<fi", piece.score, len(data)))
        out.append(data)
    return b"".join(out)


def read_model(path: Path) -> bytes:
    """The serialized SentencePiece model in `path`: the file itself, or rebuilt from a GGUF's vocabulary."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return path.read_bytes()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's torchchat package
    from torchchat.checkpoints.gguf import gguf_sentencepiece_model
    from torchchat.errors import UserError

    try:
        return gguf_sentencepiece_model(path)
    except UserError as e:
        raise ConversionError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a SentencePiece tokenizer.model to llama2.c's tokenizer.bin.")
    parser.add_argument("--tokenizer-model", required=True,
                        help="path to the SentencePiece tokenizer.model (or a GGUF with a SentencePiece vocabulary)")
    parser.add_argument("--output", help="where to write (default: beside the model, with the suffix .bin)")
    args = parser.parse_args(argv)
    model_path = Path(args.tokenizer_model)
    output = Path(args.output) if args.output else model_path.with_suffix(".bin")
    if output.resolve() == model_path.resolve():
        print(f"error: {output} is the input; give another --output", file=sys.stderr)
        return 1
    if output.is_dir():
        print(f"error: --output {output} is a directory", file=sys.stderr)
        return 1
    if not output.parent.is_dir():
        print(f"error: --output {output}: no directory {output.parent}", file=sys.stderr)
        return 1
    try:
        data = convert(read_model(model_path))
    except OSError as e:
        print(f"error: cannot read {model_path}: {e.strerror}", file=sys.stderr)
        return 1
    except ConversionError as e:
        print(f"error: cannot convert {model_path}: {e}", file=sys.stderr)
        return 1
    # A temporary file renamed over the output: an existing tokenizer.bin is replaced whole or not at all.
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        print(f"error: cannot write {output}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
