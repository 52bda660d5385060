"""A loopback fake of the Hugging Face hub's file and commit endpoints, speaking the wire format huggingface_hub
(>= 1) reads and writes. Model repos live in ``models``, dataset repos in ``repos``.

Reading:

- ``GET /api/{models,datasets}/<repo>/revision/<rev>`` — the repo info behind ``repo_info`` / ``snapshot_download``
  (``sha``, ``siblings``);
- ``GET /api/{models,datasets}/<repo>/tree/<rev>[/<path>]?recursive=..`` — the listing behind
  ``list_repo_files`` / ``list_repo_tree``;
- ``HEAD|GET [/datasets]/<repo>/resolve/<rev>/<file>`` — what ``hf_hub_download`` asks: LFS files (``.parquet``,
  ``.safetensors``, ``.npz``…, and any of ``lfs_min_size`` or more) answer ``302`` to a CDN URL on another host name (``localhost`` instead of
  ``127.0.0.1``, as the real hub sends ``cdn-lfs…``) with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and
  ``X-Linked-Size``; other files answer ``200`` with their bytes and their git blob id as ``ETag``;
  a missing repo is ``404`` + ``X-Error-Code: RepoNotFound``, a missing file ``404`` + ``EntryNotFound``;
  a gated repo without a token with access is ``401`` / ``403`` + ``X-Error-Code: GatedRepo``;
- ``HEAD|GET /cdn/<sha256>`` — the bytes, with ``Content-Length``, ``ETag`` and ``Range`` support.

Writing (a ``write`` token, or a fine-grained one with ``repo.write``, in ``Authorization: Bearer``):

- ``GET /api/whoami-v2`` — the token's user and role (``tokens`` maps token → user, role);
- ``POST /api/repos/create`` — ``409`` when the repo exists;
- ``POST /api/{models,datasets}/<repo>/preupload/<rev>`` — every file ``uploadMode: "regular"``, so the commit
  carries its bytes base64-inline;
- ``POST /api/{models,datasets}/<repo>/commit/<rev>`` — the NDJSON commit (``header``, ``file``, ``deletedFile``
  lines), applied at once: a new commit id, logged in ``commits``.

Faults: :meth:`FakeHub.fail` answers the next N matching requests with a status; :meth:`FakeHub.hold` makes a
file's download stop after its first bytes until released (for kill tests). Every request is logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "b08601e04326c79dfdd32d625aee71d232d685c3"


@dataclass
class _Fault:
    method: str | None
    pattern: re.Pattern
    status: int
    times: int


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # dataset repo id -> {path: bytes}
    models: dict[str, dict[str, bytes]] = field(default_factory=dict)  # model repo id -> {path: bytes}
    gated: set[str] = field(default_factory=set)  # repo ids whose files need a token in ``granted``
    granted: set[str] = field(default_factory=set)  # tokens that accepted every gated repo's licence
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (user, "write" | "read" | perms)
    commits: list[dict] = field(default_factory=list)  # every commit received: repo, summary, files
    heads: dict[str, str] = field(default_factory=dict)  # repo id -> commit id (COMMIT until a commit)
    lfs_min_size: int = 10 * 1024 * 1024  # larger files are LFS whatever their name (the hub's own limit)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    _faults: list[_Fault] = field(default_factory=list)
    _held: dict[str, threading.Event] = field(default_factory=dict)  # sha256 -> release
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ control
    def add_file(self, repo: str, path: str, data: bytes) -> None:
        self.repos.setdefault(repo, {})[path] = data

    def add_model_file(self, repo: str, path: str, data: bytes) -> None:
        self.models.setdefault(repo, {})[path] = data

    def head(self, repo: str) -> str:
        return self.heads.get(repo, COMMIT)

    def fail(self, pattern: str, status: int, *, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` requests whose path matches ``pattern`` (and ``method``) get ``status``."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(pattern), status, times))

    def hold(self, repo: str, path: str) -> threading.Event:
        """Downloads of that file send a few bytes, then wait until the returned event is set."""
        ev = threading.Event()
        self._held[hashlib.sha256(self.repos[repo][path]).hexdigest()] = ev
        return ev

    def release_all(self) -> None:
        for ev in self._held.values():
            ev.set()

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, int]]:
        return [r for r in list(self.log) if (method is None or r[0] == method) and contains in r[1]]

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ lookups
    def _take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self._faults:
                if f.times > 0 and (f.method in (None, method)) and f.pattern.search(path):
                    f.times -= 1
                    return f.status
        return None

    def _blob(self, sha: str) -> bytes | None:
        for files in [*self.repos.values(), *self.models.values()]:
            for data in files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that went away (killed) is expected
        pass


def _lfs(name: str) -> bool:
    """Which files the fake stores as LFS (served through the CDN redirect), as the hub does for weights and data."""
    return name.endswith((".parquet", ".safetensors", ".npz", ".bin", ".gguf"))


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, headers: dict[str, str], payload: bytes = b"", body: bool = True) -> None:
        self.fake.log.append((self.command, self.path, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, body: bool, extra: dict | None = None) -> None:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
        self._send(status, headers, json.dumps({"error": message}).encode(), body)

    def do_POST(self) -> None:
        self._route(body=True)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None

    def _store(self, kind: str) -> dict[str, dict[str, bytes]]:
        return self.fake.models if kind == "models" else self.fake.repos

    def _request_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        if (status := self.fake._take_fault(self.command, path)) is not None:
            if self.command == "POST":
                self._request_body()
            self._error(status, None, f"injected {status}", body)
            return
        if self.command == "POST":
            self._post(path, body)
        elif path == "/api/whoami-v2":
            self._whoami(body)
        elif m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/revision/([^/]+)", path):
            self._info(m.group(1), m.group(2), body)
        elif m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            self._tree(m.group(1), m.group(2), m.group(4) or "", parse_qs(url.query), body)
        elif m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self._resolve("datasets", m.group(1), m.group(3), body)
        elif m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            self._cdn(m.group(1), body)
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self._resolve("models", m.group(1), m.group(3), body)
        else:
            self._error(404, None, "not found", body)

    # ------------------------------------------------------------------ reading
    def _whoami(self, body: bool) -> None:
        token = self._token()
        if token not in self.fake.tokens:
            self._error(401, None, "Invalid credentials in Authorization header", body)
            return
        user, role = self.fake.tokens[token]
        access: dict = {"displayName": "test", "role": "fineGrained" if role.startswith("repo.") else role}
        if role.startswith("repo."):
            access["fineGrained"] = {"canReadGatedRepos": True, "global": [], "scoped": [
                {"entity": {"_id": "1", "type": "user", "name": user}, "permissions": role.split(",")}]}
        self._send(200, {"Content-Type": "application/json"}, json.dumps({
            "type": "user", "id": "1", "name": user, "fullname": user, "orgs": [],
            "auth": {"type": "access_token", "accessToken": access}}).encode(), body)

    def _info(self, kind: str, repo: str, body: bool) -> None:
        files = self._store(kind).get(repo)
        if files is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return
        info = {"id": repo, "_id": "1", "sha": self.fake.head(repo), "private": False,
                "gated": "manual" if repo in self.fake.gated else False, "disabled": False,
                "lastModified": "2024-08-01T00:00:00.000Z", "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(files)]}
        if kind == "models":
            info["modelId"] = repo
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)

    def _tree(self, kind: str, repo: str, under: str, query: dict, body: bool) -> None:
        files = self._store(kind).get(repo)
        if files is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{under.strip('/')}/" if under else ""
        entries, folders = [], set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                data = files[name]
                entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
                if _lfs(name) or len(data) >= self.fake.lfs_min_size:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
        for folder in sorted(folders):
            if recursive or "/" not in folder[len(prefix):]:
                entries.append({"type": "directory", "oid": _git_oid(folder.encode()), "path": folder})
        self._send(200, {"Content-Type": "application/json"}, json.dumps(entries).encode(), body)

    def _resolve(self, kind: str, repo: str, filename: str, body: bool) -> None:
        files = self._store(kind).get(repo)
        if files is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return
        if repo in self.fake.gated and self._token() not in self.fake.granted:
            status = 403 if self._token() else 401
            self._error(status, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                        "and be authenticated to access it. Please log in.", body)
            return
        if filename not in files:
            self._error(404, "EntryNotFound", f"{filename} does not exist on main", body,
                        {"X-Repo-Commit": self.fake.head(repo)})
            return
        data = files[filename]
        if not _lfs(filename) and len(data) < self.fake.lfs_min_size:
            self._send(200, {"Content-Type": "application/octet-stream", "X-Repo-Commit": self.fake.head(repo),
                             "ETag": f'"{_git_oid(data)}"', "Accept-Ranges": "bytes"}, data, body)
            return
        sha = hashlib.sha256(data).hexdigest()
        self._send(302, {
            "Location": f"http://localhost:{self.fake.port}/cdn/{sha}",
            "X-Repo-Commit": self.fake.head(repo),
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{_git_oid(data)}"',
        }, b"", body)

    # ------------------------------------------------------------------ writing
    def _may_write(self, body: bool) -> str | None:
        """The user of a token that may write, else an error answer has been sent and None is returned."""
        token = self._token()
        if token not in self.fake.tokens:
            self._error(401, None, "Invalid username or password.", body)
            return None
        user, role = self.fake.tokens[token]
        if role != "write" and "repo.write" not in role.split(","):
            self._error(403, None, "You don't have the rights to create or write to this repository", body)
            return None
        return user

    def _post(self, path: str, body: bool) -> None:
        payload = self._request_body()
        if self._may_write(body) is None:
            return
        if path == "/api/repos/create":
            req = json.loads(payload or b"{}")
            repo = f"{req.get('organization') or self.fake.tokens[self._token()][0]}/{req['name']}"
            kind = "datasets" if req.get("type") == "dataset" else "models"
            store = self._store(kind)
            url = f"{self.fake.endpoint}{'/datasets' if kind == 'datasets' else ''}/{repo}"
            if repo in store:  # the hub names the existing repo's url in its 409 answer
                self._send(409, {"Content-Type": "application/json"}, json.dumps(
                    {"error": "You already created this repo", "url": url}).encode(), body)
                return
            store[repo] = {}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(
                {"url": url, "name": repo, "id": "1"}).encode(), body)
        elif m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/preupload/([^/]+)", path):
            if m.group(2) not in self._store(m.group(1)):
                self._error(404, "RepoNotFound", "Repository not found", body)
                return
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                     for f in json.loads(payload)["files"]]
            self._send(200, {"Content-Type": "application/json"}, json.dumps({"files": files}).encode(), body)
        elif m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/commit/([^/]+)", path):
            self._commit(m.group(1), m.group(2), payload, body)
        else:
            self._error(404, None, "not found", body)

    def _commit(self, kind: str, repo: str, payload: bytes, body: bool) -> None:
        files = self._store(kind).get(repo)
        if files is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
            return
        summary, added, deleted = "", {}, []
        for line in payload.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"]["summary"]
            elif item["key"] == "file":
                value = item["value"]
                assert value.get("encoding") == "base64", value
                added[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(item["value"]["path"])
            else:
                self._error(400, None, f"unsupported commit operation {item['key']}", body)
                return
        for name in deleted:
            for existing in [f for f in files if f == name or f.startswith(name.rstrip("/") + "/")]:
                del files[existing]
        files.update(added)
        oid = hashlib.sha1(json.dumps([repo, len(self.fake.commits), summary]).encode()).hexdigest()
        self.fake.heads[repo] = oid
        self.fake.commits.append({"repo": repo, "kind": kind, "summary": summary, "files": dict(added),
                                  "deleted": deleted, "oid": oid})
        prefix = "/datasets" if kind == "datasets" else ""
        self._send(200, {"Content-Type": "application/json"}, json.dumps({
            "success": True, "commitOid": oid, "commitUrl": f"{self.fake.endpoint}{prefix}/{repo}/commit/{oid}",
            "hookOutput": ""}).encode(), body)

    def _cdn(self, sha: str, body: bool) -> None:
        data = self.fake._blob(sha)
        if data is None:
            self._error(404, None, "no such object", body)
            return
        start = 0
        if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start = int(m.group(1))
        part = data[start:]
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{sha}"', "Accept-Ranges": "bytes",
                   "Content-Length": str(len(part))}
        status = 200
        if start:
            status, headers["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
        held = self.fake._held.get(sha)
        if not body or held is None:
            self._send(status, headers, part, body)
            return
        # a held download: headers and the first bytes now, the rest once released
        self.fake.log.append((self.command, self.path, status))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(part[:64])
        self.wfile.flush()
        while not held.wait(0.05):
            time.sleep(0)
        self.wfile.write(part[64:])


# ---------------------------------------------------------------------------------------------- pointing at it
def point_in_process(monkeypatch, endpoint: str, hf_cache) -> None:
    """Make this process's huggingface_hub talk to ``endpoint``. It reads ``HF_ENDPOINT`` once, at import, into
    ``huggingface_hub.constants`` (its own tests patch those constants the same way)."""
    from huggingface_hub import constants

    from neuroscope.store.hf import hub_reachable

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_reachable.cache_clear()


def subprocess_env(endpoint: str, tmp_path) -> dict[str, str]:
    """The environment of a ``neuroscope`` subprocess using ``endpoint`` as the hub, with caches under tmp_path."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               NEUROSCOPE_CACHE=str(tmp_path / "cache"), COLUMNS="200")
    return env


def refused_endpoint() -> str:
    """A loopback URL where nothing listens (connection refused: what an offline machine sees, fast)."""
    from tests.support.net import closed_port

    return f"http://127.0.0.1:{closed_port()}"
