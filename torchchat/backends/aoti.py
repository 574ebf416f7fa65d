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
                    runner.update_constant_buffer(self._constants[0], False, True, True)
            except RuntimeError as e:
                raise UserError(f"{path}: cannot load the shared library: {first_line(e)}") from None
            self._run = lambda *inputs: runner.run(list(inputs))[0]
        else:
            if not zipfile.is_zipfile(path):
                raise UserError(f"{path}: truncated or damaged .pt2 package")
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
                package.loader.update_constant_buffer(self._constants[0], False, True, True)
            if metadata.PT2_KEY not in meta:
                raise UserError(f"{path}: no torchchat metadata (export it with `torchchat.py export`)")
            self.info, self.dtype = metadata.from_json(meta[metadata.PT2_KEY], where)
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

