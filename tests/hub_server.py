"""A small Hugging Face Hub-compatible HTTP server for tests (no network beyond 127.0.0.1).

It implements what the real `huggingface_hub` client (2.x) calls to create a repo, commit files and
download them:

- `POST /api/repos/create`                       create a model repo (409 if it exists)
- `POST /api/validate-yaml`                      model-card metadata check (YAML must parse to a mapping)
- `POST /api/models/{repo}/preupload/{rev}`      answers `uploadMode: "regular"` for every file, so the client
                                                 sends contents inline (no LFS / Xet even with hf_xet installed)
- `POST /api/models/{repo}/commit/{rev}`         NDJSON commit with base64 files / deletions
- `POST /api/models/{repo}/branch/{branch}`      create a branch
- `GET  /api/models/{repo}[/revision/{rev}]`     repo info with `sha` and `siblings`
- `GET  /api/models/{repo}/tree/{rev}[/{path}]`  file listing
- `HEAD|GET /{repo}/resolve/{rev}/{path}`        file download with `X-Repo-Commit`, `ETag`, `Content-Length`

Errors carry the Hub's `X-Error-Code` headers (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) so the
client raises its usual exception classes. Every request is recorded in `FakeHub.requests`.

Use the `hub_server` fixture (import it into a test module: `from hub_server import hub_server`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


def _serve(handler: type[BaseHTTPRequestHandler], name: str) -> tuple[ThreadingHTTPServer, str]:
    """Serve `handler` on 127.0.0.1 (a free port) from a daemon thread; returns the server and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _shutdown(server: ThreadingHTTPServer | None) -> None:
    """Stop a server started by `_serve` (no-op for None); returns None for the caller's attribute."""
    if server is not None:
        server.shutdown()
        server.server_close()


class FakeHub:
    """State of the fake Hub; `endpoint` is its base URL once started."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorization: list[str | None] = []
        self.yaml_validations = 0
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    # -------------------------------------------------------------- state changes
    def _new_commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = repo.branches.get(branch)
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + message.encode() + str(len(repo.commits)).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode())
        commit = Commit(digest.hexdigest(), dict(files), message, parent)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id, private)
        self._new_commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.repos[repo_id] = repo
        return repo

    # -------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server, self.endpoint = _serve(Handler, "fake-hub")
        return self

    def stop(self) -> None:
        self._server = _shutdown(self._server)
        with self.lock:  # close kept-alive client connections too, so a stopped hub really is unreachable
            for connection in list(self.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeHub

    def setup(self) -> None:
        super().setup()
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self) -> None:
        with self.state.lock:
            self.state.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default stderr log
        pass

    # -------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode())

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        body = self._body() if method == "POST" else b""
        with self.state.lock:
            self.state.requests.append((method, self.path))
            self.state.authorization.append(self.headers.get("Authorization"))
        try:
            self._route(method, parts, query, body)
        except _HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send(error.status, json.dumps({"error": error.message}).encode(), headers, head=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -------------------------------------------------------------- routes
    def _repo(self, namespace: str, name: str) -> Repo:
        repo = self.state.repos.get(f"{namespace}/{name}")
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _route(self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes) -> None:
        state = self.state
        if method == "POST" and parts == ["api", "repos", "create"]:
            payload = json.loads(body)
            if payload.get("type", "model") != "model":
                raise _HubError(400, "the fake hub only holds model repos")
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            with state.lock:
                if repo_id in state.repos:  # the Hub's 409 body also carries the url (create_repo(exist_ok) reads it)
                    return self._json({"error": "You already created this model repo",
                                       "url": f"{state.endpoint}/{repo_id}"}, status=409)
                state.create_repo(repo_id, private=payload.get("visibility") == "private")
            return self._json({"url": f"{state.endpoint}/{repo_id}", "name": repo_id})
        if method == "POST" and parts == ["api", "validate-yaml"]:
            content = json.loads(body)["content"]
            state.yaml_validations += 1
            errors = []
            if content.startswith("---"):
                front = content.split("---", 2)[1]
                try:
                    if not isinstance(yaml.safe_load(front), dict):
                        errors.append({"message": "metadata is not a mapping"})
                except yaml.YAMLError as error:
                    errors.append({"message": f"invalid YAML: {error}"})
            return self._json({"errors": errors, "warnings": []}, status=400 if errors else 200)
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo = self._repo(parts[2], parts[3])
            rest = parts[4:]
            if method == "GET" and (not rest or rest[0] == "revision"):
                commit = self._commit(repo, rest[1] if len(rest) > 1 else "main")
                return self._json({
                    "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.sha, "private": repo.private,
                    "tags": [], "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                })
            if method == "GET" and rest and rest[0] == "tree":
                commit = self._commit(repo, rest[1] if len(rest) > 1 else "main")
                prefix = "/".join(rest[2:])
                entries = [
                    {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
                    for path, data in sorted(commit.files.items())
                    if not prefix or path.startswith(prefix.rstrip("/") + "/")
                ]
                return self._json(entries)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                commit = repo.resolve(rest[1])
                files = []
                for item in json.loads(body)["files"]:
                    existing = commit.files.get(item["path"]) if commit else None
                    files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                                  "oid": git_blob_oid(existing) if existing is not None else None})
                return self._json({"files": files, "commitOid": commit.sha if commit else None})
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                with state.lock:
                    if rest[1] in repo.branches:
                        raise _HubError(409, f"Branch {rest[1]} already exists")
                    start = json.loads(body or b"{}").get("startingPoint") or "main"
                    repo.branches[rest[1]] = self._commit(repo, start).sha
                return self._json({})
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit_files(repo, rest[1], query, body)
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo(parts[0], parts[1])
            commit = self._commit(repo, parts[3])
            path = "/".join(parts[4:])
            if path not in commit.files:
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
            data = commit.files[path]
            headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes"}
            status = 200
            range_header = self.headers.get("Range")
            if range_header and range_header.startswith("bytes=") and method == "GET":
                start = int(range_header[len("bytes="):].split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
            return self._send(status, data, headers, content_type="application/octet-stream", head=method == "HEAD")
        raise _HubError(404, f"fake hub: no route for {method} /{'/'.join(parts)}")

    def _commit_files(self, repo: Repo, revision: str, query: dict[str, list[str]], body: bytes) -> None:
        state = self.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with state.lock:
            branch = revision
            if query.get("create_pr") == ["1"]:
                number = sum(1 for b in repo.branches if b.startswith("refs/pr/")) + 1
                branch = f"refs/pr/{number}"
                repo.branches[branch] = self._commit(repo, revision).sha
            if branch not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.branches[branch]
            if header.get("parentCommit") and header["parentCommit"] != head:
                raise _HubError(412, "parentCommit is not the head of the branch")
            files = dict(repo.commits[head].files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, "only base64 files are supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    raise _HubError(400, "the fake hub answered uploadMode=regular: LFS files are unexpected")
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise _HubError(400, f"unsupported commit operation {key!r}")
            commit = state._new_commit(repo, branch, files, header.get("summary", ""))
        pr_url = f"{state.endpoint}/{repo.repo_id}/discussions/{branch.rsplit('/', 1)[-1]}" \
            if branch.startswith("refs/pr/") else None
        self._json({"success": True, "commitOid": commit.sha,
                    "commitUrl": f"{state.endpoint}/{repo.repo_id}/commit/{commit.sha}", "pullRequestUrl": pr_url})


def _running(server):
    """Start `server`, yield it, stop it (the body of the fixtures below)."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_server():
    """A running `FakeHub` on 127.0.0.1 (random port), stopped after the test."""
    yield from _running(FakeHub())


# ---------------------------------------------------------------------------------------------- plain files
class FileServer:
    """A loopback HTTP server for plain files (a stand-in for download.openmmlab.com and the like).

    `files` maps URL paths ("/a/b.pth") to bytes; a path in `truncate` is answered with its full
    `Content-Length` but only the first half of the bytes, then the connection is closed (a dropped download);
    a path in `stall` gets the first half, then nothing more while the connection stays open (a mirror that
    stops sending), until the server stops. Every request path is recorded in `requests`.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.stall: set[str] = set()
        self.stopped = threading.Event()
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> FileServer:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                state.requests.append(path)
                data = state.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if path in state.truncate | state.stall else data)
                self.wfile.flush()
                if path in state.stall:
                    state.stopped.wait(60)
                self.close_connection = True

        self._server, self.base_url = _serve(Handler, "file-server")
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._server = _shutdown(self._server)


@pytest.fixture
def file_server():
    """A running `FileServer` on 127.0.0.1 (random port), stopped after the test."""
    yield from _running(FileServer())
