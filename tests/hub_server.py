"""A local stand-in for the Hugging Face Hub's HTTP API, for the Hub-cache tests (no network here).

It serves what ``huggingface_hub``'s ``hf_hub_download``, ``snapshot_download`` and ``list_repo_files``
ask for, with the headers and JSON they read (huggingface_hub/file_download.py, hf_api.py, utils/_http.py):

- ``HEAD|GET /{repo}/resolve/{revision}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (the git
  blob id) and ``Content-Length`` (``Range: bytes=N-`` answered with 206);
- ``GET /api/models/{repo}[/revision/{revision}]``: the repository's info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{revision}[/{path}]``: its files (``type``, ``path``, ``size``, ``oid``);
- failures as 404s with ``X-Error-Code`` RepoNotFound, RevisionNotFound or EntryNotFound.

Point ``HF_ENDPOINT`` at :attr:`HubServer.url`. Every request is recorded in :attr:`HubServer.requests`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubServer:
    """Repositories are added with :meth:`add_commit`; branches and tags point at commits."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, str]] = {}  # repo id -> revision name -> commit sha
        self.commits: dict[str, dict[str, bytes]] = {}  # commit sha -> path -> content
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_commit(
        self, repo_id: str, files: dict[str, bytes | Path], revisions: tuple[str, ...] = ("main",)
    ) -> str:
        """A commit holding ``files`` (path in repo -> content or local file); ``revisions`` point at it."""
        content = {p: (f.read_bytes() if isinstance(f, Path) else f) for p, f in files.items()}
        sha = hashlib.sha1(
            json.dumps(sorted((p, _blob_id(c)) for p, c in content.items())).encode()
        ).hexdigest()
        self.commits[sha] = content
        for rev in revisions:
            self.repos.setdefault(repo_id, {})[rev] = sha
        return sha

    def _lookup(self, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        """(commit sha, error code)."""
        if repo_id not in self.repos:
            return None, "RepoNotFound"
        if revision in self.commits and revision in self.repos[repo_id].values():
            return revision, None
        sha = self.repos[repo_id].get(revision)
        return (sha, None) if sha else (None, "RevisionNotFound")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _fail(self, code: str, commit: str | None = None) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, body: bool) -> None:
                path = urlsplit(self.path).path
                hub.requests.append((self.command, path))
                parts = [unquote(p) for p in path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    return self._api(parts[2] + "/" + parts[3], parts[4:])
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), body)
                self._fail("RepoNotFound")

            def _api(self, repo_id: str, rest: list[str]) -> None:
                revision = rest[1] if rest[:1] in (["revision"], ["tree"]) and len(rest) > 1 else "main"
                sha, error = hub._lookup(repo_id, revision)
                if error:
                    return self._fail(error)
                files = hub.commits[sha]
                if rest[:1] == ["tree"]:
                    prefix = "/".join(rest[2:])
                    entries = [
                        {"type": "file", "path": p, "size": len(c), "oid": _blob_id(c)}
                        for p, c in sorted(files.items())
                        if not prefix or p.startswith(prefix + "/")
                    ]
                    return self._json(entries)
                return self._json(
                    {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                     "siblings": [{"rfilename": p} for p in sorted(files)]}
                )  # fmt: skip

            def _resolve(self, repo_id: str, revision: str, filename: str, body: bool) -> None:
                sha, error = hub._lookup(repo_id, revision)
                if error:
                    return self._fail(error)
                content = hub.commits[sha].get(filename)
                if content is None:
                    return self._fail("EntryNotFound", sha)
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and ranged.endswith("-"):
                    start = int(ranged[len("bytes=") : -1])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{_blob_id(content)}"')
                self.send_header("Content-Length", str(len(content) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(content[start:])

        return Handler


def _blob_id(content: bytes) -> str:
    """git's blob id, which the Hub gives as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
