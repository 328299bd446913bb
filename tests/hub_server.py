"""A local HTTP server that answers like the Hugging Face Hub for what huggingface_hub's
download and upload clients call, so Hub tests run the real client with no internet.

Download: ``HEAD/GET /{repo}/resolve/{revision}/{filename}`` with ``ETag``,
``X-Repo-Commit`` and ``Content-Length``; gated repos answer 401 (no token) or 403 (a token
without access) with ``X-Error-Code: GatedRepo``; unknown repos 404 ``RepoNotFound``;
unknown files 404 ``EntryNotFound``.
Upload: ``POST /api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}``
(every file "regular", so contents travel inline) and ``/api/models/{repo}/commit/{rev}``
(the ndjson commit), after which the files download like any other.
Every request is logged as ``(method, path)``, every answer as ``(method, path, status)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APPROVED_TOKEN = "hf_approved_for_gated"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    gated: bool = False
    commit: str = "0" * 40

    def new_commit(self) -> None:
        digest = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in self.files.items())).encode())
        self.commit = digest.hexdigest()


class LocalHub:
    """``with LocalHub() as hub: hub.add_file("org/name", "file", b"...")``; ``hub.endpoint`` is HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []
        self.responses: list[tuple[str, str, int]] = []  # (method, path, status)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_file(self, repo_id: str, filename: str, content: bytes, gated: bool = False) -> None:
        repo = self.repos.setdefault(repo_id, Repo(gated=gated))
        repo.files[filename] = content
        repo.new_commit()

    def requests(self, method: str, path_contains: str = "") -> list[str]:
        return [p for m, p in self.log if m == method and path_contains in p]

    def __enter__(self) -> "LocalHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/]+)$")


def _handler_for(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def send_response(self, code: int, message: str | None = None) -> None:
            with hub._lock:
                hub.responses.append((self.command, self.path.split("?")[0], code))
            super().send_response(code, message)

        def do_HEAD(self) -> None:
            self._resolve(send_body=False)

        def do_GET(self) -> None:
            self._resolve(send_body=True)

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            with hub._lock:
                hub.log.append(("POST", path))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
                if repo_id in hub.repos:
                    return self._error(409, "RepoExists", "You already created this model repo")
                hub.repos[repo_id] = Repo()
                return self._json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json({"errors": [], "warnings": []})
            match = _API_REPO.match(path)
            if not match:
                return self._error(404, "", "Not Found")
            repo = hub.repos.get(match["repo"])
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if match["op"] == "preupload":
                files = json.loads(body)["files"]
                return self._json({"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                ]})
            for line in body.splitlines():  # the commit: ndjson header + one line per file
                item = json.loads(line)
                if item["key"] == "file":
                    repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo.new_commit()
            return self._json({"commitUrl": f"{hub.endpoint}/{match['repo']}/commit/{repo.commit}",
                               "commitOid": repo.commit})

        def _resolve(self, send_body: bool) -> None:
            path = self.path.split("?")[0]
            with hub._lock:
                hub.log.append((self.command, path))
            match = _RESOLVE.match(path)
            repo = hub.repos.get(match["repo"]) if match else None
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found", send_body)
            if repo.gated and self.headers.get("Authorization") != f"Bearer {APPROVED_TOKEN}":
                status = 403 if self.headers.get("Authorization") else 401
                return self._error(status, "GatedRepo", "Access to model is restricted", send_body)
            content = repo.files.get(match["file"])
            if content is None:
                return self._error(404, "EntryNotFound", "Entry not found", send_body)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(content)))
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.end_headers()
            if send_body:
                self.wfile.write(content)

        def _json(self, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, send_body: bool = True) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if send_body:
                self.wfile.write(data)

    return Handler
