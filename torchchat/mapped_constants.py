"""Compiled-model constants stored outside AOT Inductor's library and mapped, not copied, at load.

AOT Inductor keeps the weights inside the .so and, on load, copies every one of them into
a fresh allocation: the file's pages and the copy are both resident (peak RSS 2x the
weights) and the copy alone takes most of the load time. Instead we compile with
`aot_inductor.package_constants_in_so=False`, record the constants inductor hands to its
code generator (after freezing: the weights as the kernels want them, prepacked where a
GEMM template packed them), and store them ourselves: in a .so after the library's ELF
content and metadata block (torchchat/metadata.py), in a .pt2 as the package's first entry
(`write_pt2`):

    "TCHCNST1", u64 LE index length, index JSON, zero padding to a 16 KiB file offset, data

The index lists, in the compiled model's own names, each constant's dtype, sizes, strides,
storage offset and where its storage lies in the data (a storage shared by several
constants, e.g. tied embedding/output weights, is stored once), or `"zeros": true` for an
all-zero storage (the KV cache), which the loader allocates instead of reading. Loaders
(runner/backends/aoti_backend.cpp, torchchat/backends/aoti.py) map the data copy-on-write and
hand the tensors to the model with `update_constant_buffer(..., user_managed=true)`, the
AOTI runtime's way to use caller-owned constants as they are.
"""
from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

MAGIC = b"TCHCNST1"
BLOCK_ALIGN = 16384  # the data starts on a page boundary (4 and 16 KiB pages)
DATA_ALIGN = 64  # each storage: a cache line, as AOT Inductor aligns its own blob


@contextlib.contextmanager
def capture() -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Within the block, record (name, tensor) of every constant AOT Inductor compiles into a model.

    Inductor builds these during compilation (freezing folds and prepacks weights), so they
    exist only inside it: we wrap the one function that receives the finished graph,
    AotCodeCompiler.compile (torch 2.13, pinned). The order and names are those of the
    model's constants_info_ table, which the loaders use as keys.
    """
    from torch._inductor.codecache import AotCodeCompiler  # here, not above: inductor takes seconds to import

    captured: list[tuple[str, torch.Tensor]] = []
    original = AotCodeCompiler.__dict__["compile"]

    def compile_and_record(cls, graph, *args, **kwargs):
        captured.clear()  # one model per compile
        for name in graph.constants:
            if name not in graph.folded_constants:
                captured.append((name, graph.get_original_value_of_constant(name)))
        return original.__func__(cls, graph, *args, **kwargs)

    AotCodeCompiler.compile = classmethod(compile_and_record)
    try:
        yield captured
    finally:
        AotCodeCompiler.compile = original


def can_map(constants: list[tuple[str, torch.Tensor]]) -> Optional[str]:
    """None if every constant is a plain CPU tensor we can store and map; else why not."""
    for name, t in constants:
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_mkldnn or t.is_quantized:
            return f"constant {name} is a {t.layout} tensor on {t.device}"
    return None


DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
          torch.int8: "int8", torch.uint8: "uint8", torch.int32: "int32", torch.int64: "int64",
          torch.bool: "bool"}
TORCH_DTYPES = {v: k for k, v in DTYPES.items()}


def align(n: int, to: int) -> int:
    return -(-n // to) * to


def storage_bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """The bytes of a storage as a uint8 tensor (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))


class Block:
    """The constants block of a model: its header (magic, index) and the storages to write after it."""

    def __init__(self, constants: list[tuple[str, torch.Tensor]]):
        self.storages: dict[int, tuple[int, Optional[torch.Tensor]]] = {}  # storage address -> (offset, bytes)
        index, size = [], 0
        for name, t in constants:
            if t.dtype not in DTYPES:
                raise ValueError(f"constant {name}: dtype {t.dtype} cannot be stored")
            storage = t.untyped_storage()
            entry = {"name": name, "dtype": DTYPES[t.dtype], "sizes": list(t.shape),
                     "strides": list(t.stride()), "storage_offset": t.storage_offset(), "nbytes": storage.nbytes()}
            key = storage.data_ptr()
            if storage.nbytes() and not storage_bytes(storage).any():
                entry["zeros"] = True
            else:
                if key not in self.storages:
                    self.storages[key] = (size, storage_bytes(storage) if storage.nbytes() else None)
                    size = align(size + storage.nbytes(), DATA_ALIGN)
                entry["data"] = self.storages[key][0]
            index.append(entry)
        self.data_bytes = size
        text = json.dumps({"version": 1, "data_bytes": size, "constants": index}).encode()
        self.header = MAGIC + struct.pack("<Q", len(text)) + text

    def size(self, at: int) -> int:
        """Bytes the block takes when it starts at file offset `at`."""
        return align(at + len(self.header), BLOCK_ALIGN) + self.data_bytes - at

    def write(self, f, at: int) -> None:
        """Write the block to `f` (any file-like object, positioned at file offset `at`)."""
        data_start = align(at + len(self.header), BLOCK_ALIGN)
        f.write(self.header + b"\0" * (data_start - at - len(self.header)))
        written = 0
        for offset, data in self.storages.values():  # in offset order (insertion order)
            if data is not None:
                f.write(b"\0" * (offset - written))
                f.write(memoryview(data.numpy()))
                written = offset + data.numel()
        f.write(b"\0" * (self.data_bytes - written))


def append_to_so(path: Path, constants: list[tuple[str, torch.Tensor]]) -> None:
    """Append the constants block to `path` (a library compiled without its constants)."""
    block = Block(constants)
    with open(path, "r+b") as f:
        block.write(f, f.seek(0, 2))


# In a .pt2 the block is the package's first entry (in the archive's root folder, which the
# loader takes from the first entry; a folder that PyTorch's loaders ignore), stored
# uncompressed with its data at this file offset (the local header's extra field pads it):
# readers find it without a zip parser.
PT2_ENTRY = "torchchat/constants.bin"
PT2_BLOCK_AT = BLOCK_ALIGN
PADDING_EXTRA_ID = 0xD935  # the extra-field id Android's zipalign uses for padding


def write_pt2(package: Path, out: Path, constants: list[tuple[str, torch.Tensor]]) -> None:
    """Write `out`: the block as first entry, then every entry of `package` (compiled without constants)."""
    block = Block(constants)
    size = block.size(PT2_BLOCK_AT)
    with zipfile.ZipFile(package) as src:
        root = src.infolist()[0].filename.split("/")[0]
    name = f"{root}/{PT2_ENTRY}"
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule: it then adds a 20-byte zip64 extra
    fixed = 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
    if fixed > PT2_BLOCK_AT:
        raise ValueError("zip header longer than the block offset")
    info.extra = struct.pack("<HH", PADDING_EXTRA_ID, PT2_BLOCK_AT - fixed) + b"\0" * (PT2_BLOCK_AT - fixed)
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w", allowZip64=True) as dst:
        with dst.open(info, "w") as w:
            block.write(w, PT2_BLOCK_AT)
        for item in src.infolist():
            with src.open(item) as r, dst.open(item, "w") as w:
                while chunk := r.read(1 << 24):
                    w.write(chunk)
    with open(out, "rb") as f:  # the data must be where readers look for it
        head = f.read(30)
        name_len, extra_len = struct.unpack_from("<HH", head, 26)
        if 30 + name_len + extra_len != PT2_BLOCK_AT:
            raise ValueError(f"constants entry placed at {30 + name_len + extra_len}, not {PT2_BLOCK_AT}")


def read_index(path: Path, at: int) -> Optional[tuple[int, dict]]:
    """(absolute offset of the data, index) of the block at `at` in `path`, or None if there is none."""
    with open(path, "rb") as f:
        f.seek(at)
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            return None
        n = struct.unpack("<Q", head[8:])[0]
        text = f.read(n)
        if len(text) != n:
            raise ValueError("truncated constants index")
        index = json.loads(text)
        data_start = align(at + 16 + n, BLOCK_ALIGN)
        f.seek(0, 2)
        if f.tell() < data_start + int(index["data_bytes"]):
            raise ValueError("the file is shorter than its constants (truncated?)")
        return data_start, index


def load(path: Path, at: int) -> Optional[tuple[dict[str, torch.Tensor], object]]:
    """({name: tensor}, the mapping to keep alive) for the block at `at`, or None without one.

    The data is mapped copy-on-write: pages are shared with the page cache and read on
    first use; a write (none is expected) would touch a private copy, never the file."""
    found = read_index(path, at)
    if found is None:
        return None
    data_start, index = found
    size = int(index["data_bytes"])
    mapped = np.memmap(path, dtype=np.uint8, mode="c", offset=data_start, shape=(size,)) if size else None
    data = torch.from_numpy(mapped) if size else None
    tensors = {}
    for e in index["constants"]:
        dtype = TORCH_DTYPES[e["dtype"]]
        itemsize = dtype.itemsize
        if e.get("zeros"):
            storage = torch.zeros(e["nbytes"] // itemsize, dtype=dtype)
        else:
            storage = data[e["data"]:e["data"] + e["nbytes"]].view(dtype)
        # as_strided counts the offset from the start of the whole mapping
        tensors[e["name"]] = storage.as_strided(e["sizes"], e["strides"], storage.storage_offset() + e["storage_offset"])
    return tensors, mapped
