"""A Hugging Face Hub stand-in on 127.0.0.1 for the tests: the endpoints huggingface_hub calls, nothing more.

Point ``HF_ENDPOINT`` at :attr:`HubServer.url` and ``snapshot_download`` / ``hf_hub_download`` /
``HfApi.create_repo`` / ``create_branch`` / ``upload_folder`` talk to it as to the Hub. Repos live in
memory as commits of whole file trees; a commit id is the SHA-1 of its tree, a file's ETag its git blob id.

Download: ``GET /api/models/{repo}[/revision/{rev}]`` (model info: ``sha``, ``siblings``),
``GET /api/models/{repo}/tree/{rev}`` (the recursive listing), ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``
(``ETag``, ``X-Repo-Commit``, ``Content-Length``; 404 with ``X-Error-Code: RepoNotFound`` /
``RevisionNotFound`` / ``EntryNotFound`` as the Hub sends them).
Upload (needs an ``Authorization`` header, like the Hub): ``POST /api/repos/create``,
``POST /api/models/{repo}/branch/{branch}``, ``POST /api/validate-yaml``, ``POST /api/models/{repo}/preupload/{rev}``
(every file "regular": sent inline, base64, in the commit rather than through the LFS/Xet storage the real Hub
uses for large files) and ``POST /api/models/{repo}/commit/{rev}`` (NDJSON).

Every request's method and path is recorded in :attr:`HubServer.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def blob_id(data: bytes) -> str:
    """Git's blob id of a file's bytes (what the Hub sends as the ETag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """The stand-in Hub; :meth:`start` serves it on a free port in a thread, :meth:`stop` ends it."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo id -> {"branches": {name: sha}, "commits": {sha: {path: bytes}}}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------------------------------- repos
    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", parent: str | None = None) -> str:
        """Stores a commit of ``files`` (on top of ``parent``'s, default the branch head) and moves ``branch`` to it."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, {"branches": {}, "commits": {}})
            base = repo["commits"].get(parent or repo["branches"].get(branch, ""), {})
            tree = {**base, **files}
            sha = hashlib.sha1(json.dumps(sorted((p, blob_id(d)) for p, d in tree.items())).encode()
                               + repo_id.encode() + str(len(repo["commits"])).encode()).hexdigest()
            repo["commits"][sha] = tree
            repo["branches"][branch] = sha
            return sha

    def add_folder(self, repo_id: str, folder: str | Path, branch: str = "main") -> str:
        """Commits every file under ``folder`` (as the Hub would hold it). Returns the commit id."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit(repo_id, files, branch)

    def resolve(self, repo_id: str, revision: str) -> tuple[str | None, dict | None, str | None]:
        """(commit id, tree, error code) of ``revision`` (a branch or a commit id)."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None, "RepoNotFound"
        sha = repo["branches"].get(revision, revision if revision in repo["commits"] else None)
        if sha is None:
            return None, None, "RevisionNotFound"
        return sha, repo["commits"][sha], None

    # ---------------------------------------------------------------------------------------- serving
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---------------------------------------------------------------------------------------- handlers
    @staticmethod
    def _send(handler, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    def _json(self, handler, status: int, data, headers: dict | None = None) -> None:
        self._send(handler, status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, handler, code: str, message: str, head: bool = False, headers: dict | None = None) -> None:
        status = 409 if code == "Conflict" else 401 if code == "Unauthorized" else 400 if code == "BadRequest" else 404
        body = json.dumps({"error": message}).encode()
        extra = {"X-Error-Code": code, "X-Error-Message": message} if status == 404 else {}
        self._send(handler, status, body, {"Content-Type": "application/json", **extra, **(headers or {})}, head)

    def _handle(self, handler, method: str) -> None:
        parts = urlsplit(handler.path)
        path = parts.path
        with self.lock:
            self.requests.append((method, path))
        body = b""
        if method == "POST":
            body = handler.rfile.read(int(handler.headers.get("Content-Length", 0) or 0))
        segments = [unquote(s) for s in path.strip("/").split("/")]
        try:
            if segments[:2] == ["api", "models"] and len(segments) >= 4:
                return self._api_models(handler, method, segments[2] + "/" + segments[3], segments[4:], body)
            if segments[:2] == ["api", "repos"] and segments[2:] == ["create"] and method == "POST":
                return self._create_repo(handler, body)
            if segments == ["api", "validate-yaml"] and method == "POST":
                return self._validate_yaml(handler, body)
            if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(handler, method, segments[0] + "/" + segments[1], segments[3],
                                     "/".join(segments[4:]))
        except Exception as error:  # a bug in the stand-in must show in the test, not hang it
            return self._json(handler, 500, {"error": f"{type(error).__name__}: {error}"})
        self._error(handler, "NotFound", f"no such endpoint {method} {path}")

    def _authorised(self, handler) -> bool:
        if handler.headers.get("Authorization", "").startswith("Bearer "):
            return True
        self._error(handler, "Unauthorized", "Invalid credentials in Authorization header")
        return False

    def _api_models(self, handler, method: str, repo_id: str, rest: list[str], body: bytes) -> None:
        if method == "GET" and (not rest or rest[0] == "revision"):
            revision = rest[1] if len(rest) > 1 else "main"
            sha, tree, error = self.resolve(repo_id, revision)
            if error:
                return self._error(handler, error, f"{error} for {repo_id}@{revision}")
            return self._json(handler, 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                             "siblings": [{"rfilename": p} for p in sorted(tree)]})
        if method == "GET" and rest and rest[0] == "tree":
            sha, tree, error = self.resolve(repo_id, rest[1] if len(rest) > 1 else "main")
            if error:
                return self._error(handler, error, f"{error} for {repo_id}")
            prefix = "/".join(rest[2:])
            files = [{"type": "file", "path": p, "size": len(d), "oid": blob_id(d)} for p, d in sorted(tree.items())
                     if not prefix or p.startswith(prefix + "/")]
            return self._json(handler, 200, files)
        if method == "POST" and rest and rest[0] in ("preupload", "commit", "branch"):
            if not self._authorised(handler):
                return None
            if repo_id not in self.repos:
                return self._error(handler, "RepoNotFound", f"Repository {repo_id} not found")
            if rest[0] == "branch":
                branch = rest[1]
                repo = self.repos[repo_id]
                if branch in repo["branches"]:
                    return self._error(handler, "Conflict", f"branch {branch} already exists")
                start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
                sha, _, error = self.resolve(repo_id, start)
                with self.lock:
                    repo["branches"][branch] = sha
                return self._json(handler, 200, {})
            if rest[0] == "preupload":
                files = json.loads(body)["files"]
                return self._json(handler, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                            "shouldIgnore": False} for f in files]})
            return self._commit(handler, repo_id, rest[1] if len(rest) > 1 else "main", body)
        return self._error(handler, "NotFound", f"no such endpoint {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _commit(self, handler, repo_id: str, revision: str, body: bytes) -> None:
        files = {}
        summary = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", "")
            elif item["key"] == "file":
                value = item["value"]
                if value.get("encoding") != "base64":
                    return self._error(handler, "BadRequest", "only base64 files are supported")
                files[value["path"]] = base64.b64decode(value["content"])
            else:
                return self._error(handler, "BadRequest", f"unsupported commit operation {item['key']!r}")
        if revision not in self.repos[repo_id]["branches"] and self.repos[repo_id]["branches"]:
            return self._error(handler, "RevisionNotFound", f"no branch {revision}")
        sha = self.commit(repo_id, files, revision)
        self.repos[repo_id].setdefault("messages", {})[sha] = summary
        return self._json(handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                         "pullRequestUrl": None})

    def _create_repo(self, handler, body: bytes) -> None:
        if not self._authorised(handler):
            return None
        data = json.loads(body)
        repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
        if repo_id in self.repos:
            return self._error(handler, "Conflict", "You already created this model repo")
        with self.lock:
            self.repos[repo_id] = {"branches": {}, "commits": {}, "private": data.get("visibility") == "private"}
        self.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        return self._json(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, handler, body: bytes) -> None:
        import yaml

        content = json.loads(body)["content"]
        errors = []
        if content.startswith("---\n") and "\n---" in content[4:]:
            try:
                meta = yaml.safe_load(content[4:content.index("\n---", 4)])
                if not isinstance(meta, dict):
                    errors.append("metadata must be a mapping")
            except yaml.YAMLError as error:
                errors.append(f"invalid YAML: {error}")
        if errors:
            return self._json(handler, 400, {"errors": [{"message": e} for e in errors]})
        return self._json(handler, 200, {"errors": [], "warnings": []})

    def _resolve(self, handler, method: str, repo_id: str, revision: str, file: str) -> None:
        head = method == "HEAD"
        sha, tree, error = self.resolve(repo_id, revision)
        if error:
            return self._error(handler, error, f"{error} for {repo_id}@{revision}", head)
        if file not in tree:
            return self._error(handler, "EntryNotFound", f"{file} does not exist at {revision}", head,
                               {"X-Repo-Commit": sha})
        data = tree[file]
        self._send(handler, 200, data, {"ETag": f'"{blob_id(data)}"', "X-Repo-Commit": sha,
                                        "Content-Type": "application/octet-stream"}, head)
