"""Session-wide fixtures shared by several test files."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def trained_llama() -> Path:
    """Folder with a small llama trained on public-domain text (trained_llama.py): model.pt,
    tokenizer.model, heldout.txt. Trained once and kept in the temp folder across sessions."""
    from trained_llama import cached

    return cached(Path(tempfile.gettempdir()) / "torchchat-tests")
