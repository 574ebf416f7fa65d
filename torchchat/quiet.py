"""Keeping optional libraries' start-up noise off the user's terminal."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator


def quiet_executorch_imports() -> None:
    # executorch imports torchao, which logs a warning per CUDA-only extension it cannot load.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """ExecuTorch's runtime logs CPU probing to fd 2 while loading; its errors come back as exceptions."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
