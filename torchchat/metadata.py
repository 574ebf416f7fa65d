"""Model metadata stored inside exported artifacts, so the runners need no extra flags.

One JSON object, the same for every format (AOTI .so / .pt2, ExecuTorch .pte):

    {"format_version": 2, "arch": "llama", "vocab_size": ..., "max_seq_len": ...,
     "bos_id": ..., "add_bos": ..., "stop_ids": [...], "tokenizer": "sentencepiece"|"tiktoken"|"hf_bpe",
     "chat_template": "llama2"|"llama3"|"chatml"|"none", "dtype": "fp32"|"bf16"|"fp16",
     "chat_turns": {"first": [...], "first_with_system": [...], "next": [...]},   (the model's own
        template cut into turns, torchchat/chat_template.py; absent: the built-in chat_template)
     "quantize": {"linear:int4": {"groupsize": 32}, ...},   (only if exported with --quantize)
     "target_cpu": "avx2", "cpu_features": ["avx", "avx2", ...]}   (torchchat/target_cpu.py; absent: not recorded)

The format version fixes the program's calling convention (torchchat/model.py
Transformer.forward): (tokens, input_pos, kv_len, n_logits), kv_len None in an ExecuTorch
program (attention over the whole cache). An artifact of an older version is refused.

`max_seq_len` is the exported context (the KV cache size), not the model's trained one.
The C++ twin is `parse_metadata_json` in runner/src. Where each format keeps it:
- .pte: the constant method `get_metadata_json` (PTE_METHOD), beside ExecuTorch's own LLM-runner
  methods (torchchat/export/executorch.py).
- .pt2: the package's AOTI metadata, key `torchchat` (AOTIModelPackageLoader::get_metadata).
- .so: a block inserted right after the ELF content of the shared library (see
  `insert_so_metadata`), because a bare AOTI library has no metadata of its own. The
  dynamic loader reads only what the ELF headers point to, so the file stays a normal .so.
  Not at the very end: for weights over 2 GB AOTI appends them to the file and finds them
  at (file size - their size) on a 16 KiB boundary, so the block is a multiple of 16 KiB
  placed before them. Where torchchat stores the weights itself, their block
  (torchchat/mapped_constants.py) follows this one.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torchchat.errors import UserError

FORMAT_VERSION = 2  # runner/include/torchchat/metadata.h kFormatVersion is its twin
OLDER_VERSION = "exported by an older version; export again"
PT2_KEY = "torchchat"
PTE_METHOD = "get_metadata_json"
SO_MAGIC = b"TCHMETA1"  # then the JSON length (u64 LE), the JSON, zero padding to a 16 KiB multiple
SO_BLOCK_ALIGN = 16384
# In the block's padding, right after the JSON: CRC-32s of the ELF content and of the JSON, so that
# a damaged library is refused before it is loaded (its code would run as it is).
SO_CHECKSUMS = b"TCHCRC32"  # then u32 LE CRC-32 of bytes [0, block start), u32 LE CRC-32 of the JSON
TOKENIZER_KINDS = ("sentencepiece", "tiktoken", "hf_bpe")


@dataclass
class ModelInfo:
    """What generate and chat need to know besides the weights (also stored in exported artifacts)."""

    vocab_size: int
    max_seq_len: int
    bos_id: Optional[int]
    add_bos: bool
    stop_ids: list[int]
    tokenizer_kind: str
    chat_template: str
    quantize: Optional[dict] = None  # the --quantize spec the weights went through (torchchat/quantize.py)
    chat_turns: Optional[dict] = None  # the model's own template cut into turns (torchchat/chat_template.py)


def to_json(info: ModelInfo, dtype: str, cpu: Optional[dict] = None) -> str:
    """cpu: target_cpu.metadata_fields(...), the CPU the artifact's compiled code needs."""
    if info.bos_id is None and info.add_bos:
        raise UserError("the tokenizer adds a BOS token but has none")
    if info.tokenizer_kind not in TOKENIZER_KINDS:
        raise UserError(f"tokenizer kind '{info.tokenizer_kind}' cannot be exported (known: {', '.join(TOKENIZER_KINDS)})")
    meta = {
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
    }
    if info.quantize:
        meta["quantize"] = info.quantize  # readers that do not know it ignore it
    if info.chat_turns:
        meta["chat_turns"] = chat_turns_to_json(info.chat_turns)  # older readers use chat_template
    if cpu:
        meta.update(cpu)
    return json.dumps(meta)


def from_json(text: str, where: str) -> tuple[ModelInfo, str]:
    """(ModelInfo, dtype) from the JSON; `where` names the artifact in error messages."""
    try:
        d = json.loads(text)
        version = d.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
            raise UserError(f"{where}: {OLDER_VERSION}")
        if version != FORMAT_VERSION or d.get("arch") != "llama":
            raise UserError(f"{where}: unsupported metadata (format_version {d.get('format_version')}, arch {d.get('arch')})")
        info = ModelInfo(
            vocab_size=int(d["vocab_size"]),
            max_seq_len=int(d["max_seq_len"]),
            bos_id=int(d["bos_id"]),
            add_bos=bool(d["add_bos"]),
            stop_ids=[int(i) for i in d["stop_ids"]],
            tokenizer_kind=str(d["tokenizer"]),
            chat_template=str(d["chat_template"]),
            quantize=d.get("quantize") if isinstance(d.get("quantize"), dict) else None,
            chat_turns=chat_turns_from_json(d["chat_turns"]) if "chat_turns" in d else None,
        )
        return info, str(d["dtype"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{where}: malformed torchchat metadata ({e})") from None


def chat_turns_to_json(turns: dict) -> dict:
    """The metadata form of torchchat/chat_template.py's turns: segments as "text",
    {"token": "<|im_end|>"} or {"message": "user"}."""
    def segment(kind: str, s: str):
        return s if kind == "text" else {"token": s} if kind == "token" else {"message": kind}

    return {name: [segment(*seg) for seg in segs] for name, segs in turns.items() if segs is not None}


def chat_turns_from_json(d: dict) -> dict:
    def segment(x) -> tuple[str, str]:
        if isinstance(x, str):
            return ("text", x)
        if isinstance(x, dict) and isinstance(x.get("token"), str):
            return ("token", x["token"])
        if isinstance(x, dict) and x.get("message") in ("system", "user"):
            return (x["message"], "")
        raise ValueError(f"bad chat_turns segment {x!r}")

    turns: dict = {"first": None, "first_with_system": None, "next": None}
    for name in turns:
        if d.get(name) is not None:
            turns[name] = [segment(x) for x in d[name]]
    if turns["first"] is None or turns["next"] is None:
        raise ValueError("chat_turns lacks first or next")
    return turns


def elf_end(head: bytes, f) -> int:
    """Offset just past everything the ELF headers describe (segments, sections, header tables)."""
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise UserError("not a 64-bit little-endian ELF shared library")
    phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
    end = max(64, phoff + phentsize * phnum, shoff + shentsize * shnum)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        offset, filesz = struct.unpack_from("<Q", table, i * phentsize + 8)[0], struct.unpack_from("<Q", table, i * phentsize + 32)[0]
        end = max(end, offset + filesz)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    for i in range(shnum):
        kind = struct.unpack_from("<I", table, i * shentsize + 4)[0]
        offset, size = struct.unpack_from("<QQ", table, i * shentsize + 24)
        if kind != 8:  # SHT_NOBITS (.bss) takes no room in the file
            end = max(end, offset + size)
    return end


def insert_so_metadata(path: Path, text: str) -> None:
    """Rewrite `path` with the metadata block inserted after its ELF content."""
    data = text.encode()
    tmp = path.with_name(path.name + ".meta")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        at = elf_end(src.read(64), src)
        src.seek(0)
        elf = src.read(at)
        block = SO_MAGIC + struct.pack("<Q", len(data)) + data
        block += SO_CHECKSUMS + struct.pack("<II", zlib.crc32(elf), zlib.crc32(data))
        block += b"\0" * (-len(block) % SO_BLOCK_ALIGN)
        dst.write(elf)
        dst.write(block)
        shutil.copyfileobj(src, dst, 64 << 20)  # what AOTI appended (weights), if anything
    os.replace(tmp, path)


def read_so_metadata(path: Path) -> Optional[str]:
    """The JSON inserted by `insert_so_metadata`, or None if the library has none."""
    found = read_so_metadata_block(path)
    return found[0] if found else None


def read_so_metadata_block(path: Path) -> Optional[tuple[str, int]]:
    """(the JSON inserted by `insert_so_metadata`, the file offset just past its block), or None."""
    with open(path, "rb") as f:
        try:
            at = elf_end(f.read(64), f)
        except (UserError, struct.error):
            return None
        f.seek(at)
        head = f.read(16)
        if len(head) < 16 or head[:8] != SO_MAGIC:
            return None
        n = struct.unpack("<Q", head[8:])[0]
        data = f.read(n) if n <= SO_BLOCK_ALIGN * 64 else b""
        if len(data) != n or not n:
            return None
        checksums = f.read(16)
        has_checksums = checksums[:8] == SO_CHECKSUMS
        if has_checksums:
            elf_crc, json_crc = struct.unpack("<II", checksums[8:])
            f.seek(0)
            if zlib.crc32(f.read(at)) != elf_crc or zlib.crc32(data) != json_crc:
                raise UserError(f"{path}: damaged shared library (its checksum does not match)")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise UserError(f"{path}: malformed torchchat metadata (not UTF-8)") from None
        return text, at + -(-(16 + n + 16 * has_checksums) // SO_BLOCK_ALIGN) * SO_BLOCK_ALIGN
