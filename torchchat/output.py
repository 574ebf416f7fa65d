"""Output files: checked before the work that fills them, and written whole.

A command that writes a file checks the path first (minutes of loading or evaluating must not end
in "no such directory"), writes under a temporary name in the same folder, and renames it over the
path at the end: what was there before is replaced whole or not at all. The new file gets the mode
of the one it replaces, or that of any new file (0666 less the umask), not a temporary file's 0600.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from torchchat.errors import UserError


def check_output_path(path: Path, flag: str) -> Path:
    """`path`, if a file can be written there; otherwise a UserError naming `flag`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: the folder {parent} is not writable")
    return path


def final_mode(path: Path) -> int:
    """The mode the file at `path` should have once written."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def replace_with(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` over `path`, with `path`'s mode (final_mode)."""
    os.chmod(tmp, final_mode(path))
    os.replace(tmp, path)
