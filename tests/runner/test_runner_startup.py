"""What the runners load and how they end: each loads only its own backend's runtime, when it opens
a model (libtorch's start-up alone is ~0.15 s of CPU: et_run must never pay it), and the output
of a process that ends without static destructors is all there."""

from __future__ import annotations

import os
import subprocess

import pytest

from native_helpers import binary


def loaded_libraries(cmd: list) -> tuple[subprocess.CompletedProcess, str]:
    """Runs cmd with the dynamic loader's trace; (result, the trace)."""
    env = dict(os.environ, LD_DEBUG="files")
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=120)
    return result, result.stderr


@pytest.mark.parametrize("runner", ["aoti_run", "et_run"])
def test_usage_loads_no_runtime_and_reaches_a_pipe(runner):
    result, trace = loaded_libraries([binary(runner), "-h"])
    assert result.returncode == 0
    assert "usage" in result.stdout.lower()  # written, and flushed before the process ended
    assert "libtorch_cpu.so" not in trace and "libexecutorch.so" not in trace


@pytest.mark.parametrize("runner, own, other", [
    ("aoti_run", "libtorch_cpu.so", "libexecutorch.so"),
    ("et_run", "libexecutorch.so", "libtorch_cpu.so"),
])
def test_a_runner_loads_its_own_runtime_only(runner, own, other, small_hf_tokenizer_json, tmp_path):
    # A model file that is missing: the backend's library is loaded, then its loader says why.
    model = tmp_path / ("model.so" if runner == "aoti_run" else "model.pte")
    result, trace = loaded_libraries([binary(runner), model, "-z", small_hf_tokenizer_json, "-i", "hi"])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(model) in errors[0], result.stderr[-2000:]
    assert own in trace and other not in trace


def test_a_bad_tokenizer_is_reported_before_the_model(tmp_path):
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"model": ')
    result = subprocess.run([str(binary("et_run")), tmp_path / "missing.pte", "-z", tokenizer, "-i", "hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and "missing.pte" not in result.stderr
