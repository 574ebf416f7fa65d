"""A fake Hugging Face hub on 127.0.0.1, enough for `huggingface_hub.hf_hub_download`.

It speaks the resolve endpoint the real hub serves:
  HEAD/GET /{org}/{name}/resolve/{revision}/{path}
    small files: 200 with ETag, Content-Length, X-Repo-Commit;
    large ("LFS") files: 302 to {cdn}/cdn/{sha256} with X-Linked-Etag, X-Linked-Size, X-Repo-Commit.
  GET {cdn}/cdn/{sha256}: the bytes, with `Range: bytes=N-` support (huggingface_hub resumes with it).
The "CDN" is a second server on another port: another origin, as on the real hub, so
huggingface_hub neither follows the HEAD redirect nor sends the token there.
Errors carry X-Error-Code like the hub's (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo), which huggingface_hub turns into its typed exceptions. A gated repo answers
401 without an Authorization header and 403 with a wrong token.

Faults to test against: `drop[path] = n` sends n bytes of that file then closes the
connection, and answers 503 to every later request for it (a network that died);
`stall[path] = n` sends n bytes then waits until `release` is set (for killing the client).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_THRESHOLD = 1024  # bytes; files this big are served like LFS files (redirect to the CDN)


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    commit: str = ""

    def __post_init__(self):
        if not self.commit:
            listing = sorted((path, hashlib.sha1(data).hexdigest()) for path, data in self.files.items())
            self.commit = hashlib.sha1(json.dumps(listing).encode()).hexdigest()


@dataclass
class FakeHub:
    token: str = "hf_test_token"
    repos: dict[str, Repo] = field(default_factory=dict)
    drop: dict[str, int] = field(default_factory=dict)
    stall: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a stalled file is half sent
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization header)

    def add(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> Repo:
        self.repos[repo_id] = Repo(dict(files), gated)
        return self.repos[repo_id]

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._dropped: set[str] = set()
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        """The endpoint to put in HF_ENDPOINT."""
        return _url(self.servers[0])

    @property
    def cdn(self) -> str:
        return _url(self.servers[1])

    def blob(self, sha256: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return path, data
        return None


def _url(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._route(body=False)

    def do_GET(self):
        self._route(body=True)

    def _route(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self.hub.log.append((self.command, path, self.headers.get("Authorization", "")))
        if m := RESOLVE.match(path):
            self._resolve(m["repo"], m["rev"], m["path"], body)
        elif m := CDN.match(path):
            found = self.hub.blob(m["sha"])
            if found is None:
                self._error(404, "EntryNotFound")
            else:
                self._send_file(*found, body=body)
        else:
            self._error(404, "RepoNotFound")

    def _resolve(self, repo_id: str, rev: str, path: str, body: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if repo.gated:
            auth = self.headers.get("Authorization", "")
            if not auth:
                return self._error(401, "GatedRepo", "Access to this model is restricted: log in")
            if auth != f"Bearer {self.hub.token}":
                return self._error(403, "GatedRepo", "You have not accepted this model's license")
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        if path not in repo.files:
            return self._error(404, "EntryNotFound", commit=repo.commit)
        data = repo.files[path]
        if len(data) >= LFS_THRESHOLD:
            sha = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn}/cdn/{sha}")
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(path, data, body, extra={"X-Repo-Commit": repo.commit})

    def _send_file(self, path: str, data: bytes, body: bool, extra: dict | None = None) -> None:
        if body and path in self.hub._dropped:
            return self._error(503, None, "Service Unavailable")
        start = 0
        if body and (m := re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))):
            start = int(m[1])
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not body:
            return
        payload = data[start:]
        if path in self.hub.drop:
            self.hub._dropped.add(path)
            self.wfile.write(payload[: self.hub.drop[path]])
            self.wfile.flush()
            self.close_connection = True
            return
        if path in self.hub.stall:
            self.wfile.write(payload[: self.hub.stall[path]])
            self.wfile.flush()
            self.hub.stalled.set()
            self.hub.release.wait(timeout=60)
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str = "", commit: str | None = None) -> None:
        body = json.dumps({"error": message or code or "error"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
