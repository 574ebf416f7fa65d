"""Model metadata stored inside exported artifacts, so the runners need no extra flags.

One JSON object, the same for every format (AOTI .so / .pt2, ExecuTorch .pte):

    {"format_version": 1, "arch": "llama", "vocab_size": ..., "max_seq_len": ...,
     "bos_id": ..., "add_bos": ..., "stop_ids": [...], "tokenizer": "sentencepiece"|"tiktoken"|"hf_bpe",
     "chat_template": "llama2"|"llama3"|"chatml"|"none", "dtype": "fp32"|"bf16"|"fp16"}

`max_seq_len` is the exported context (the KV cache size), not the model's trained one.
The C++ twin is `parse_metadata_json` in runner/src. Where each format keeps it:
- .pt2: the package's AOTI metadata, key `torchchat` (AOTIModelPackageLoader::get_metadata).
- .so: a trailer appended to the shared library (see `append_so_trailer`), because a bare
  AOTI library has no metadata of its own; the dynamic loader ignores bytes past the ELF
  segments, so the file stays a normal .so.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

from torchchat.errors import UserError
from torchchat.loader import ModelInfo

FORMAT_VERSION = 1
PT2_KEY = "torchchat"
SO_MAGIC = b"TCHMETA1"  # last 8 bytes of an exported .so; preceded by the JSON length (u64 LE)
TOKENIZER_KINDS = ("sentencepiece", "tiktoken", "hf_bpe")


def to_json(info: ModelInfo, dtype: str) -> str:
    if info.bos_id is None and info.add_bos:
        raise UserError("the tokenizer adds a BOS token but has none")
    if info.tokenizer_kind not in TOKENIZER_KINDS:
        raise UserError(f"tokenizer kind '{info.tokenizer_kind}' cannot be exported (known: {', '.join(TOKENIZER_KINDS)})")
    return json.dumps({
        "format_version": FORMAT_VERSION,
        "arch": "llama",
        "vocab_size": info.vocab_size,
        "max_seq_len": info.max_seq_len,
        # The runner wants an id in range; a model without BOS never adds one (add_bos false).
        "bos_id": info.bos_id if info.bos_id is not None else 0,
        "add_bos": bool(info.add_bos),
        "stop_ids": [int(i) for i in info.stop_ids],
        "tokenizer": info.tokenizer_kind,
        "chat_template": info.chat_template,
        "dtype": dtype,
    })


def from_json(text: str, where: str) -> tuple[ModelInfo, str]:
    """(ModelInfo, dtype) from the JSON; `where` names the artifact in error messages."""
    try:
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION or d.get("arch") != "llama":
            raise UserError(f"{where}: unsupported metadata (format_version {d.get('format_version')}, arch {d.get('arch')})")
        info = ModelInfo(
            vocab_size=int(d["vocab_size"]),
            max_seq_len=int(d["max_seq_len"]),
            bos_id=int(d["bos_id"]),
            add_bos=bool(d["add_bos"]),
            stop_ids=[int(i) for i in d["stop_ids"]],
            tokenizer_kind=str(d["tokenizer"]),
            chat_template=str(d["chat_template"]),
        )
        return info, str(d["dtype"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{where}: malformed torchchat metadata ({e})") from None


def append_so_trailer(path: Path, text: str) -> None:
    data = text.encode()
    with open(path, "ab") as f:
        f.write(data + struct.pack("<Q", len(data)) + SO_MAGIC)


def read_so_trailer(path: Path) -> Optional[str]:
    """The JSON appended by `append_so_trailer`, or None if the file has none."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 16:
            return None
        f.seek(size - 16)
        tail = f.read(16)
        if tail[8:] != SO_MAGIC:
            return None
        n = struct.unpack("<Q", tail[:8])[0]
        if n > size - 16 or n > 1 << 20:
            return None
        f.seek(size - 16 - n)
        return f.read(n).decode()
