"""Atomic output: an artifact is written under a temporary name in its folder and renamed at the
end, so the output path never holds a half-written file (failure, Ctrl-C, kill)."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from torchchat.errors import UserError
from torchchat.output import replace_with


@contextlib.contextmanager
def staged_output(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary file path in `path`'s folder; renamed to `path` only if the block succeeds."""
    path = path.resolve()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = tmpdir / f"model{suffix}"
        yield staged
        if not staged.is_file():
            raise UserError(f"the compiler did not produce {staged.name}")
        replace_with(staged, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
