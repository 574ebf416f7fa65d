"""A short corruption campaign (scripts/corruption_campaign.py): damaged ExecuTorch programs,
tokenizer files and checkpoints through et_run (and its ASan/UBSan build), the tokenize tool and the
Python CLI. Every run either runs or fails with one line: no signal, sanitizer report, traceback or
hang. The full campaign (thousands of runs, AOT Inductor artifacts too) runs outside CI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.export  # exports a tiny ExecuTorch program
ROOT = Path(__file__).resolve().parents[2]


def test_damaged_files_fail_cleanly(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "corruption_campaign.py"), "--trials", "12",
                        "--python-trials", "1", "--cases", "et_run,tokenize,python --checkpoint-path",
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "| et_run .pte | 12 |" in p.stdout
