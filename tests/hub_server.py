"""A small Hugging Face Hub on 127.0.0.1 for the tests: the endpoints huggingface_hub's own client calls to read a
model repository (model info, refs, file resolve) and to write one (create, settings, branch, preupload, commit), over
repositories the tests write. Every request is recorded, so a test can tell that a load asked nothing.

    with HubServer() as server:
        commit = server.add("owner/name", {"config.json": b"...", "model.safetensors": b"..."}, tags=("v1",))
        os.environ["HF_ENDPOINT"] = server.url

What the client expects of each answer (huggingface_hub 1.x / 2.x, read from its source: hf_api.py and
utils/_http.py `hf_raise_for_status`, which reads X-Error-Code, X-Error-Message, the JSON body's `error` and
X-Request-Id of every error reply):
- GET /api/models/{repo}[/revision/{rev}]: JSON with `id`, `sha` (the commit), `siblings` [{rfilename}], `private`.
- GET /api/models/{repo}/refs: {branches, tags, converts: [{name, ref, targetCommit}]} (`list_repo_refs`).
- HEAD and GET /{repo}/resolve/{rev}/{path}: `X-Repo-Commit`, `ETag` (the blob's name in the client's cache) and
  `Content-Length`; the body on GET.
- Errors, as the Hub answers them: JSON {"error": MESSAGE} with `X-Error-Message: MESSAGE`, `X-Request-Id`, and for
  the ones the client tells apart `X-Error-Code`: RepoNotFound (401 without a token, as the Hub answers for private
  and missing repositories alike; 404 with one), RevisionNotFound, EntryNotFound. A write without a token is 401
  "Invalid username or password."; with a wrong token 401 "Invalid credentials in Authorization header" (the client
  then says so instead of "repository not found"); into a namespace in `forbidden` 403 "You don't have the rights
  to create a model under the namespace ...".
- Writes (`HfApi.create_repo`, `update_repo_settings`, `create_branch`, `upload_folder`): POST /api/repos/create
  ({name, organization, visibility}; 409 {"error": "You already created this model repo", "url": ...} when it exists:
  `create_repo(exist_ok=True)` reads that `url`), PUT /api/models/{repo}/settings ({visibility} or {private}),
  POST /api/models/{repo}/branch/{branch} ({startingPoint}; 409 when it exists), POST /api/validate-yaml (README.md
  metadata), POST /api/models/{repo}/preupload/{rev} (each file's upload mode: "regular" here, so contents travel
  base64-encoded in the commit), POST /api/models/{repo}/commit/{rev} (ndjson: a header, then {"key": "file",
  "value": {path, content, encoding}} lines; 404 RevisionNotFound for a branch that does not exist). Writes need the
  token.

Holding a commit, to interrupt an upload at a known point (a child process `python -m vidjax.push`):

    server.hold_commits()                  # commit requests now wait once their body has arrived
    proc = helpers.popen_interruptible([...push...], env=...)  # SIGINT as from a terminal
    assert server.commit_started.wait(120)  # the upload is in flight: everything before the commit is done
    proc.send_signal(signal.SIGINT)
    ...
    server.release_commits(commit=False)   # the held commit is dropped (True: applied, as if it had gone through)

A commit is all or nothing, on the Hub as here: a dropped one changes nothing in the repository.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import json
import sys
import threading
import urllib.parse
import uuid

TOKEN = "hf_vidjax_test_token"


@dataclasses.dataclass
class _Hold:
    """One `HubServer.hold_commits`: the commit requests that arrive under it wait for `released`, then are applied
    or dropped as `apply` says."""
    released: threading.Event = dataclasses.field(default_factory=threading.Event)
    apply: bool = True


@dataclasses.dataclass
class Repo:
    private: bool = False
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)  # commit -> {path: contents}
    tags: set[str] = dataclasses.field(default_factory=set)  # the refs that are tags (the others are branches)


def commit_id(files: dict[str, bytes], parent: str | None) -> str:
    digest = hashlib.sha1((parent or "").encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
    return digest.hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away (an interrupted upload)
            super().handle_error(request, client_address)


class HubServer:
    """A Hub with in-memory repositories, served from a thread; `requests` lists (method, path) as they came."""

    def __init__(self, token: str = TOKEN, forbidden: tuple[str, ...] = ()):
        self.token = token
        self.forbidden = set(forbidden)  # namespaces the token may not write to (403)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.commit_started = threading.Event()  # set when a commit request's body has arrived (see hold_commits)
        self._hold: _Hold | None = None  # the hold a commit request arriving now waits on (`hold_commits`)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release_commits(commit=False)
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", tags: tuple[str, ...] = (),
            private: bool = False) -> str:
        """A commit of `files` (on top of the branch's) to `repo_id`, created when new; returns the commit id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(private=private))
            parent = repo.refs.get(branch)
            contents = {**(repo.commits[parent] if parent else {}), **files}
            commit = commit_id(contents, parent)
            repo.commits[commit] = contents
            repo.refs[branch] = commit
            for tag in tags:
                repo.refs[tag] = commit
                repo.tags.add(tag)
            return commit

    def hold_commits(self) -> None:
        """From now on a commit request waits, its body read, until `release_commits`; `commit_started` is set when
        one arrives."""
        self.commit_started.clear()
        self._hold = _Hold()

    def release_commits(self, *, commit: bool = True) -> None:
        """Lets the held commit requests go on: applied (`commit`) or dropped with a 500, as a commit the Hub never
        finished; either way all of it or none of it. Later commits are not held (a request held under one
        `hold_commits` gets that hold's answer, whatever a later one says)."""
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.apply = commit
            hold.released.set()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[revision]]


def _handler(hub: HubServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the tests read `hub.requests`
            pass

        # ------------------------------------------------------------------------------------------ plumbing

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict | None = None, *, head: bool = False) -> None:
            self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})},
                       head=head)

        def _error(self, status: int, code: str | None, message: str, head: bool = False, body: dict | None = None,
                   **headers) -> None:
            # As the Hub: the message in the JSON body and in X-Error-Message, a request id, and X-Error-Code for
            # the errors the client tells apart (None: no code, as the Hub sends none for 401/403/409 on writes).
            code_header = {"X-Error-Code": code} if code else {}
            self._json(status, {"error": message, **(body or {})},
                       {**code_header, "X-Error-Message": message, "X-Request-Id": uuid.uuid4().hex, **headers},
                       head=head)

        def _may_write(self, repo_id: str) -> bool:
            """Whether the request's token may write `repo_id`; else answers 401 or 403 as the Hub does."""
            if not self.headers.get("authorization"):
                self._error(401, None, "Invalid username or password.")
                return False
            if not self._authorized():
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
            if repo_id.split("/")[0] in hub.forbidden:
                self._error(403, None, f"You don't have the rights to create a model under the namespace "
                                       f"\"{repo_id.split('/')[0]}\"")
                return False
            return True

        def _authorized(self) -> bool:
            return self.headers.get("authorization", "") == f"Bearer {hub.token}"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _segments(self) -> tuple[list[str], dict]:
            url = urllib.parse.urlsplit(self.path)
            with hub._lock:
                hub.requests.append((self.command, url.path))
            return [urllib.parse.unquote(s) for s in url.path.split("/")[1:]], urllib.parse.parse_qs(url.query)

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                # The Hub answers 401 for a private or missing repository without a token, 404 with one.
                self._error(404 if self._authorized() else 401, "RepoNotFound", "Repository not found", head)
                return None
            return repo

        def _commit(self, repo_id: str, revision: str, head: bool = False) -> tuple[Repo, str] | None:
            """(the repository, the commit `revision` names), or None after answering the error."""
            if (repo := self._repo(repo_id, head)) is None:
                return None
            commit = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                return None
            return repo, commit

        # --------------------------------------------------------------------------------------------- reads

        def do_GET(self) -> None:
            self._read(head=False)

        def do_HEAD(self) -> None:
            self._read(head=True)

        def _read(self, head: bool) -> None:
            parts, _ = self._segments()
            if parts[:2] == ["api", "models"] and len(parts) == 5 and parts[4] == "refs":
                if (repo := self._repo("/".join(parts[2:4]), head)) is None:
                    return
                branches = sorted(b for b in repo.refs if b not in repo.tags)
                self._json(200, {key: [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": repo.refs[n]}
                                       for n in names]
                                 for key, kind, names in (("branches", "heads", branches),
                                                          ("tags", "tags", sorted(repo.tags)))}
                           | {"converts": [], "pullRequests": []}, head=head)
            elif parts[:2] == ["api", "models"] and len(parts) in (4, 6):
                repo_id = "/".join(parts[2:4])
                revision = parts[5] if len(parts) == 6 and parts[4] == "revision" else "main"
                if (found := self._commit(repo_id, revision, head)) is None:
                    return
                repo, commit = found
                files = repo.commits[commit]
                self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private,
                                 "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                if (found := self._commit(repo_id, revision, head)) is None:
                    return
                repo, commit = found
                data = repo.commits[commit].get(path)
                if data is None:
                    self._error(404, "EntryNotFound", f"{path} does not exist", head, **{"X-Repo-Commit": commit})
                    return
                self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                       "Content-Type": "application/octet-stream"}, head=head)
            else:
                self._error(404, "NotFound", f"the test hub does not serve {self.command} {self.path}", head)

        # -------------------------------------------------------------------------------------------- writes

        def do_POST(self) -> None:
            parts, query = self._segments()
            body = self._body()
            if parts == ["api", "validate-yaml"]:
                self._json(200, {"errors": [], "warnings": []})
            elif parts == ["api", "repos", "create"]:
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                if not self._may_write(repo_id):
                    return
                if repo_id in hub.repos:  # the Hub's 409 names the repository's url (create_repo(exist_ok) reads it)
                    self._error(409, None, "You already created this model repo", body={"url": f"{hub.url}/{repo_id}"})
                    return
                hub.add(repo_id, {".gitattributes": b"*.bin filter=lfs\n"},
                        private=payload.get("visibility") == "private" or bool(payload.get("private")))
                self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "branch":
                repo_id, branch = "/".join(parts[2:4]), parts[5]
                if not self._may_write(repo_id) or (repo := self._repo(repo_id)) is None:
                    return
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                commit = repo.refs.get(start) or (start if start in repo.commits else None)
                if branch in repo.refs:
                    self._error(409, None, f"Reference already exists: refs/heads/{branch}")
                elif commit is None:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {start}")
                else:
                    with hub._lock:
                        repo.refs[branch] = commit
                    self._json(200, {})
            elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("preupload", "commit"):
                repo_id, revision = "/".join(parts[2:4]), parts[5]
                if not self._may_write(repo_id) or (repo := self._repo(repo_id)) is None:
                    return
                if parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                "oid": None} for f in files]})
                    return
                added = {}
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] != "header":
                        self._error(400, None, f"the test hub takes regular files only, not {item['key']}")
                        return
                if revision not in repo.refs or revision in repo.tags:
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                    return
                hold = hub._hold
                hub.commit_started.set()
                if hold is not None:
                    hold.released.wait(120)
                if hold is not None and not hold.apply:
                    self._error(500, None, "the commit was not made (dropped by the test)")
                    return
                commit = hub.add(repo_id, added, branch=revision)
                self._json(200, {"success": True, "commitOid": commit, "commitUrl": f"{hub.url}/{repo_id}/commit/"
                                 f"{commit}", "pullRequestUrl": None if "create_pr" not in query else ""})
            else:
                self._error(404, None, f"the test hub does not serve POST {self.path}")

        def do_PUT(self) -> None:
            parts, _ = self._segments()
            body = self._body()
            if parts[:2] == ["api", "models"] and len(parts) == 5 and parts[4] == "settings":
                repo_id = "/".join(parts[2:4])
                if not self._may_write(repo_id) or (repo := self._repo(repo_id)) is None:
                    return
                payload = json.loads(body)
                if "visibility" in payload or "private" in payload:
                    repo.private = payload.get("visibility", "") == "private" or payload.get("private") is True
                self._json(200, {})
            else:
                self._error(404, None, f"the test hub does not serve PUT {self.path}")

    return Handler
