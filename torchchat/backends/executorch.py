"""The ExecuTorch backend: a .pte program (`export --output-pte-path`) as a Decoder, run from Python
(`--pte-path`) through ExecuTorch's Python runtime.

The program takes (tokens, input_pos, None, n_logits): whole-cache attention (no kv_len) and
logits for the last n_logits positions (the runner asks for 1, `eval --pte-path` for all). The
KV cache is a pair of mutable buffers per layer inside the program, and the sequence length is
dynamic (1..max_seq_len), so the whole prompt is prefilled in one call and decode is T = 1.
Attention over an fp32 or bf16 cache and linear:int8 / linear:int4 layers call our kernels
(kernels/executorch_ops.cpp), which PTEDecoder loads before the program; the metadata comes
from the constant method `get_metadata_json` (torchchat/metadata.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from torchchat import kernels, metadata, target_cpu
from torchchat.errors import UserError, first_line
from torchchat.model import length_tensor, n_logits_input
from torchchat.quiet import native_stderr_silenced, quiet_executorch_imports

PTE_MAGIC = b"ET"  # bytes 4..6 of a .pte: the flatbuffer file identifier "ET12", "ET13", ...


def sniff_pte(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:6] != PTE_MAGIC:
        raise UserError(f"{path}: not an ExecuTorch program (.pte)")


class PTEDecoder:
    """Runs a .pte through ExecuTorch's Python runtime: (tokens [1, T], input_pos [T]) -> logits [1, T, vocab]."""

    def __init__(self, path: str | Path):
        quiet_executorch_imports()
        from executorch.runtime import Runtime  # here, not above: an optional dependency, seconds to import

        path = Path(path)
        sniff_pte(path)
        # Our attention and linear:int8/int4 kernels (kernels/executorch_ops.cpp), before forward's
        # load, which resolves its operators; first of all, as loading them turns a fatal check in
        # the runtime into one line.
        kernels.load_executorch()
        try:
            with native_stderr_silenced():
                program = Runtime.get().load_program(path)
        except Exception as e:  # the loader raises RuntimeError/ValueError for damaged files
            raise UserError(f"{path}: cannot load the ExecuTorch program (truncated or damaged?): {first_line(e)}") from None
        if metadata.PTE_METHOD not in program.method_names or "forward" not in program.method_names:
            raise UserError(f"{path}: no torchchat metadata (export it with `torchchat.py export --output-pte-path`)")
        try:
            # Constant methods first: host methods share memory arenas in this runtime, so
            # nothing else may run once forward's KV cache holds state.
            (text,) = program.load_method(metadata.PTE_METHOD).execute([])
            self.info, self.dtype = metadata.from_json(str(text), str(path))
            target_cpu.check(str(text), str(path))  # ours need nothing ("any"), but honour what one says
            errors_before, _ = kernels.executorch_errors()
            with native_stderr_silenced():
                self._forward = program.load_method("forward")
            # ExecuTorch 1.5.1 can log an error while loading a method and still succeed (an operator
            # index out of range), leaving an instruction without a kernel: refused here.
            errors, last_error = kernels.executorch_errors()
            if errors > errors_before:
                raise UserError(f"{path}: cannot load the forward method: {last_error}")
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: cannot load the ExecuTorch program: {first_line(e)}") from None
        self.program = program  # keeps the methods' program alive
        self.max_seq_len, self.vocab_size = self.info.max_seq_len, self.info.vocab_size
        # (tokens, input_pos, kv_len = None, n_logits): Transformer.forward's inputs, kv_len left out
        # (whole-cache attention).
        if self._forward.metadata.num_inputs() != 4:
            raise UserError(f"{path}: {metadata.OLDER_VERSION}")
        self.lengths = length_tensor(self.max_seq_len)

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        # last_only (torchchat/backends Decoder): logits of the last position only, [1, 1, vocab]; else every position's.
        n, start = tokens.size(1), int(input_pos[0]) if input_pos.numel() else 0
        if n < 1 or start < 0 or start + n > self.max_seq_len:
            raise UserError(f"{n} tokens at position {start} do not fit the model's context of {self.max_seq_len}")
        # No kv_len: whole-cache attention.
        inputs = [tokens.contiguous(), input_pos.contiguous(), None, n_logits_input(self.lengths, n, last_only)]
        try:
            (logits,) = self._forward.execute(inputs)
        except RuntimeError as e:
            raise UserError(f"the ExecuTorch program failed: {first_line(e)}") from None
        return logits.clone()  # the runtime's output memory is reused by the next call
