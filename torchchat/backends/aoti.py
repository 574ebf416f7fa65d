"""The AOT Inductor backend: an exported artifact (.so / .pt2) as a Decoder, for validation from Python.

`generate`, `chat` and `eval` take `--dso-path model.so` or `--aoti-package-path model.pt2`
instead of a checkpoint; the artifact brings its own metadata (torchchat/metadata.py),
the tokenizer still comes from the alias' cache folder or --tokenizer-path (torchchat/load.py).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from torchchat import kernels, mapped_constants, metadata, target_cpu
from torchchat.errors import UserError, first_line
from torchchat.model import length_tensor, size_inputs

ELF_MAGIC = b"\x7fELF"
ZIP_MAGIC = b"PK\x03\x04"


def sniff(path: Path) -> str:
    """'so' or 'pt2' from the file's first bytes (not its name)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ELF_MAGIC:
        return "so"
    if head == ZIP_MAGIC:
        return "pt2"
    raise UserError(f"{path}: not an AOT Inductor artifact (neither a shared library nor a .pt2 package)")


class AOTIDecoder:
    """Runs an exported artifact: (tokens [1, T], input_pos [T]) -> logits [1, T, vocab],
    or [1, 1, vocab] with last_only; its program takes (tokens, input_pos, kv_len, n_logits)
    (torchchat/model.py Transformer.forward)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        kind = sniff(path)
        where = str(path)
        if kind == "so":
            found = metadata.read_so_metadata_block(path)
            if found is None:
                raise UserError(f"{path}: no torchchat metadata (export it with `torchchat.py export`)")
            text, metadata_end = found
            target_cpu.check(text, where)  # before any of its code is loaded
            self.info, self.dtype = metadata.from_json(text, where)
            kernels.load()
            self._constants = map_constants(path, metadata_end)
            try:
                runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(path.resolve()), 1)  # dlopen needs a slash
                if self._constants is not None:
                    check_stored_constants(path, self._constants[0], runner.get_constant_names_to_dtypes())
                    runner.update_constant_buffer(self._constants[0], False, True, True)
                check_context(path, runner.extract_constants_map(False), self.info.max_seq_len)
            except RuntimeError as e:
                raise UserError(f"{path}: cannot load the shared library: {first_line(e)}") from None
            self._run = lambda *inputs: runner.run(list(inputs))[0]
        else:
            if not zipfile.is_zipfile(path):
                raise UserError(f"{path}: truncated or damaged .pt2 package")
            check_pt2_checksums(path)
            early = target_cpu.pt2_metadata(path, metadata.PT2_KEY)
            if early is not None:
                target_cpu.check(early, where)  # before the package's shared library is loaded
            kernels.load()
            try:
                package = torch._inductor.aoti_load_package(str(path))
                meta = package.get_metadata()
            except Exception as e:  # the loader raises RuntimeError/KeyError/... for foreign zips
                raise UserError(f"{path}: not a loadable AOT Inductor package: {first_line(e)}") from None
            self._constants = map_constants(path, mapped_constants.PT2_BLOCK_AT)
            if self._constants is not None:
                names = {fqn.replace(".", "_") for fqn in package.get_constant_fqns()}  # AOTI's normalize_name
                check_stored_constants(path, self._constants[0], dict.fromkeys(names))
                package.loader.update_constant_buffer(self._constants[0], False, True, True)
            if metadata.PT2_KEY not in meta:
                raise UserError(f"{path}: no torchchat metadata (export it with `torchchat.py export`)")
            self.info, self.dtype = metadata.from_json(meta[metadata.PT2_KEY], where)
            if self._constants is not None:
                check_context(path, self._constants[0], self.info.max_seq_len)
            self._run = package
        self.max_seq_len, self.vocab_size = self.info.max_seq_len, self.info.vocab_size
        self.lengths = length_tensor(self.max_seq_len)  # sliced for kv_len and n_logits

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        tokens, input_pos = tokens.contiguous(), input_pos.contiguous()
        return self._run(tokens, input_pos, *size_inputs(self.lengths, input_pos, tokens.size(1), last_only))


def map_constants(path: Path, at: int):
    """The artifact's own stored constants (torchchat/mapped_constants.py), or None if AOTI keeps them.

    The model is given them as user-managed constants (used as they are, no copy), so it
    keeps pointers to them: the decoder holds the result as long as the model."""
    try:
        return mapped_constants.load(path, at)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: damaged constants ({e})") from None



# c10::ScalarType's values, as the compiled model reports its constants' dtypes.
SCALAR_TYPE_CODES = {torch.uint8: 0, torch.int8: 1, torch.int32: 3, torch.int64: 4, torch.float16: 5, torch.float32: 6,
                     torch.bool: 11, torch.bfloat16: 15}


def check_stored_constants(path: Path, stored: dict, model_dtypes: dict) -> None:
    """The stored constants must be exactly those the compiled model reads ({name: dtype code or
    None}): AOTI only warns about one it is not given (a damaged name in the index) and runs on
    with a null tensor in its place."""
    missing = sorted(model_dtypes.keys() - stored.keys())
    if missing:
        raise UserError(f"{path}: damaged constants: the model's constant {missing[0]} is not stored")
    if stored.keys() - model_dtypes.keys():
        raise UserError(f"{path}: damaged constants: the index holds constants the model does not have")
    for name, code in model_dtypes.items():
        if code is not None and SCALAR_TYPE_CODES.get(stored[name].dtype) != code:
            raise UserError(f"{path}: damaged constants: {name} is stored as {stored[name].dtype}, "
                            "not the dtype the model reads")


def check_context(path: Path, constants: dict, max_seq_len: int) -> None:
    """The metadata's context must fit the compiled model's rotary table (a row per position) and
    KV caches [1, Hkv, S, D] (torchchat/model.py setup_caches); keys are names or FQNs."""
    rope = [t.size(0) for k, t in constants.items() if k == "rope" and t.dim() >= 1]
    caches = [t.size(2) for k, t in constants.items() if k.replace(".", "_").endswith(("kv_cache_k", "kv_cache_v"))
              and t.dim() == 4]
    if not rope or not caches:
        raise UserError(f"{path}: the model has no rotary table or KV cache (not a torchchat export?)")
    context = min(rope + caches)
    if max_seq_len > context:
        raise UserError(f"{path}: the metadata's max_seq_len {max_seq_len} exceeds the compiled model's context of "
                        f"{context} (damaged metadata?)")


def check_pt2_checksums(path: Path) -> None:
    """The package's records against their CRC-32s, which PyTorch's reader does not check (a flipped
    byte in its library would run); all but our constants (weights, checked against their index)."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith("torchchat/constants.bin"):
                    with z.open(info) as record:
                        while record.read(1 << 20):  # the CRC is checked at the end of the record
                            pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise UserError(f"{path}: damaged .pt2 package ({first_line(e)})") from None
