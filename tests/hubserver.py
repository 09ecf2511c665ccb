"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

Why: the pipeline talks to the Hub through the real ``huggingface_hub`` client. Mocking
that client would test our assumptions about it instead of the client itself, so the tests
point the real client (``HF_ENDPOINT`` / ``HfApi(endpoint=...)``) at this server on
127.0.0.1. The client is the spec: every response shape here mirrors what
``huggingface_hub`` (hf_api.py, file_download.py, _commit_api.py, utils/_http.py) parses.

Storage layout under ``root``::

    blobs/<sha256[:2]>/<sha256>            content-addressed file contents
    repos/<type>s/<namespace>/<name>.json  one state file per repo (refs + commits)
    .lock                                  flock for writers (several processes may share root)

A repo state file holds ``branches`` / ``tags`` / ``pulls`` (name -> commit id) and
``commits`` (id -> parent, message, date, full tree ``path -> {sha256, oid, size}``).
A commit writes its blobs first, then replaces the state file atomically (temp file +
fsync + ``os.replace``) under the lock, so a server killed at any point exposes either the
previous state or the whole new commit, never a half commit (orphan blobs are harmless).

Every file is served as a "regular" (non-LFS, non-Xet) file: preupload answers
``uploadMode: regular`` so the client sends contents inline as base64, and the resolve
endpoint answers 200 directly (no CDN redirect) with ``ETag`` = git blob oid.

Test-only endpoints (no auth):

* ``POST /_test/faults`` json ``{"commit_status": [500, 429], "commit_delay_s": 2.0}``
  replaces the fault config. Per route (a name in ROUTES, e.g. ``commit``, ``preupload``,
  ``resolve``, ``info``, ``tree``), each a list applied to the next requests of that route,
  one item per request:

  - ``<route>_status``: answer with that HTTP status (429/503 carry ``Retry-After``: the
    ``retry_after`` value, default "0"; 412 carries the stale-parent message);
  - ``<route>_slow_s``: sleep that many seconds before handling the request (a client with
    a shorter timeout gives up; the request is then handled as usual, answer unread);
  - ``<route>_reset``: ``"mid-body"`` reads half the request body, then resets the
    connection (TCP RST, no answer); ``"after"`` handles the request (a commit is applied),
    then resets instead of answering.

  ``commit_race``: N: the next N commits meet a concurrent writer: just before their parent
  is checked, another commit (same tree, summary "concurrent writer") lands on the branch, so
  a commit naming the old head as parent gets the real 412. ``commit_delay_s`` sleeps in
  every commit after the blobs are stored and before the state is replaced (so a test can
  kill the server mid-commit). ``GET`` returns the current config, ``DELETE`` (or POST
  ``{}``) clears it.
* ``PUT /api/models/<ns>/<name>/settings`` (the Hub's, as ``HfApi.update_repo_settings``
  sends it): ``gated`` ("auto" / "manual" / false) and ``visibility`` / ``private``; repo info
  reports ``gated`` and ``private``.
* ``GET /_test/stats`` -> ``{"commits": {repo: n}, "commit_requests": {repo: n},
  "commit_request_times": {repo: [unix time, ...]}, "faults_injected": n, "requests": {route: n}}``
  (since server start; repo keys are ``ns/name`` for models and ``datasets/ns/name`` etc.).

Run: ``python tests/hubserver.py --port 0 --root DIR [--token TOKEN]``; the first stdout
line is the base URL. SIGTERM/SIGINT shut it down cleanly (exit code 0). In-process:
``url, stop = start_server(root, token=..., port=0)``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

USER = "tester"
DEFAULT_BRANCH = "main"
STALE_PARENT_MESSAGE = "A commit has happened since. Please refresh and try again."
# Route names usable as "<route>_status" fault keys.
ROUTES = (
    "whoami",
    "create_repo",
    "delete_repo",
    "info",
    "preupload",
    "commit",
    "tree",
    "paths_info",
    "refs",
    "commits",
    "branch",
    "tag",
    "resolve",
)
# repo type -> URL prefix of its web/resolve URLs (mirrors constants.REPO_TYPES_URL_PREFIXES)
REPO_TYPES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
WRITE_METHODS = ("POST", "PUT", "DELETE", "PATCH")
FAULT_LISTS = ("_status", "_slow_s", "_reset")  # per-route fault queues
RESET_MODES = ("mid-body", "after")


class _Reset(Exception):
    """The handler reset the connection on purpose: nothing more is sent."""


class HubError(Exception):
    """An HTTP error answered the way the Hub does: JSON ``{"error": msg}`` plus
    ``X-Error-Code`` / ``X-Error-Message`` headers, which ``hf_raise_for_status`` maps to
    RepositoryNotFoundError / RevisionNotFoundError / RemoteEntryNotFoundError."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


def _now_iso() -> str:
    """Date in the one format ``huggingface_hub.utils.parse_datetime`` accepts."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1: what the Hub uses as ``oid``/``ETag`` of regular files, and what the
    client computes locally (``sha.git_hash``) to skip re-uploading unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _atomic_write_json(path: str, obj) -> None:
    """Write then ``os.replace``: readers (and a restarted server) see old or new, never half."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Store:
    """Blob store + per-repo state files. Writers hold ``lock()`` (thread lock + flock);
    readers just read the state file, which is only ever replaced atomically."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "repos"), exist_ok=True)
        self._tlock = threading.Lock()

    @contextlib.contextmanager
    def lock(self):
        with self._tlock, open(os.path.join(self.root, ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- blobs --
    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def put_blob(self, data: bytes) -> dict:
        """Store ``data`` (idempotent) and return its tree entry."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return {"sha256": sha256, "oid": git_blob_oid(data), "size": len(data)}

    # -- repo state --
    def state_path(self, repo_type: str, repo_id: str) -> str:
        ns, name = repo_id.split("/")
        return os.path.join(self.root, "repos", repo_type + "s", ns, name + ".json")

    def load(self, repo_type: str, repo_id: str) -> dict | None:
        try:
            with open(self.state_path(repo_type, repo_id)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save(self, repo_type: str, repo_id: str, state: dict) -> None:
        _atomic_write_json(self.state_path(repo_type, repo_id), state)

    def delete(self, repo_type: str, repo_id: str) -> None:
        os.unlink(self.state_path(repo_type, repo_id))


# ---------------------------------------------------------------- repo state helpers


def _make_commit_id(parent: str | None, tree: dict, summary: str, description: str, date: str) -> str:
    """40-hex id (the client's REGEX_COMMIT_HASH) that is unique per commit."""
    payload = json.dumps([parent, tree, summary, description, date, uuid.uuid4().hex], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def _new_commit(state: dict, parent: str | None, tree: dict, summary: str, description: str) -> str:
    date = _now_iso()
    cid = _make_commit_id(parent, tree, summary, description, date)
    state["commits"][cid] = {
        "parent": parent,
        "summary": summary,
        "description": description,
        "date": date,
        "author": USER,
        "tree": tree,
    }
    return cid


def resolve_revision(state: dict, rev: str) -> str:
    """Branch, tag, ``refs/heads|tags/..``, ``refs/pr/N`` or full commit sha -> commit id."""
    if rev.startswith("refs/heads/"):
        rev = rev[len("refs/heads/") :]
    elif rev.startswith("refs/tags/"):
        rev = rev[len("refs/tags/") :]
    if rev in state["branches"]:
        return state["branches"][rev]
    if rev in state["tags"]:
        return state["tags"][rev]
    m = re.fullmatch(r"refs/pr/(\d+)", rev)
    if m and m.group(1) in state["pulls"]:
        return state["pulls"][m.group(1)]
    if _SHA1_RE.fullmatch(rev) and rev in state["commits"]:
        return rev
    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _dirs_of(tree: dict) -> set[str]:
    dirs = set()
    for path in tree:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


def _subtree(tree: dict, directory: str) -> dict:
    prefix = directory + "/" if directory else ""
    return {p: e for p, e in tree.items() if p.startswith(prefix)}


def _dir_oid(tree: dict, directory: str) -> str:
    """Stand-in for a git tree oid: changes iff something below ``directory`` changes."""
    n = len(directory) + 1 if directory else 0
    items = sorted((p[n:], e["oid"]) for p, e in _subtree(tree, directory).items())
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()


def _signature(tree: dict, path: str):
    if path in tree:
        return tree[path]["oid"]
    return _dir_oid(tree, path)


def _last_commit(state: dict, head: str, path: str) -> dict:
    """Oldest commit on the first-parent chain from ``head`` since which ``path`` is unchanged."""
    commits = state["commits"]
    sig = _signature(commits[head]["tree"], path)
    cid = head
    while commits[cid]["parent"] is not None and _signature(commits[commits[cid]["parent"]]["tree"], path) == sig:
        cid = commits[cid]["parent"]
    c = commits[cid]
    return {"id": cid, "title": c["summary"], "date": c["date"]}


def _entry(state: dict, head: str, tree: dict, path: str, expand: bool) -> dict:
    if path in tree:
        e = tree[path]
        out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    else:
        out = {"type": "directory", "oid": _dir_oid(tree, path), "size": 0, "path": path}
    if expand:
        out["lastCommit"] = _last_commit(state, head, path)
    return out


def _check_path(path: str) -> str:
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


# ---------------------------------------------------------------- HTTP layer


class HubServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the shared store, auth token, faults and counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, root: str, token: str | None = None, verbose: bool = False):
        super().__init__(addr, HubHandler)
        self.store = Store(root)
        self.token = token
        self.verbose = verbose
        self.faults_lock = threading.Lock()
        self.faults: dict = {}
        self.stats = {"commits": {}, "commit_requests": {}, "commit_request_times": {}, "faults_injected": 0,
                      "requests": {}}  # fmt: skip

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def bump(self, group: str, key: str) -> None:
        with self.faults_lock:
            self.stats[group][key] = self.stats[group].get(key, 0) + 1

    def take_fault(self, route: str, kind: str = "_status"):
        """Pop the next injected ``<route><kind>`` fault (None when none is pending)."""
        with self.faults_lock:
            queue = self.faults.get(route + kind)
            if queue:
                self.stats["faults_injected"] += 1
                return queue.pop(0)
        return None

    def take_race(self) -> bool:
        with self.faults_lock:
            if int(self.faults.get("commit_race") or 0) > 0:
                self.faults["commit_race"] = int(self.faults["commit_race"]) - 1
                self.stats["faults_injected"] += 1
                return True
        return False


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server: HubServer

    # ---- plumbing
    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.server.verbose:
            sys.stderr.write("hubserver: " + (fmt % args) + "\n")

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    @property
    def body(self) -> bytes:
        """The request body, read on first use (a reset fault may read only part of it)."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    def _reset(self, partial: bool) -> None:
        """Drop the connection with a TCP RST, after reading half the body when `partial`."""
        if partial and self._body is None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()
        raise _Reset()

    def _read_body(self) -> bytes:
        """Always consume the body, even for requests we reject, so keep-alive stays in sync."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _base_url(self) -> str:
        return "http://" + (self.headers.get("Host") or "%s:%s" % self.server.server_address[:2])

    def _send(
        self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None
    ) -> None:
        _ = self.body  # consume the request body first: keep-alive stays in sync
        if self._reset_after:
            self._reset(partial=False)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: HubError) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        # Header values must be one latin-1 line: never let a client-supplied path inject headers.
        headers["X-Error-Message"] = " ".join(err.message.split()).encode("ascii", "replace").decode()
        self._json(err.body or {"error": err.message}, err.status, headers)

    def _handle(self, method: str) -> None:
        self._body, self._reset_after = None, False
        try:
            raw_path, _, query = self.path.partition("?")
            self.query = parse_qs(query, keep_blank_values=True)
            segs = [unquote(s) for s in raw_path.split("/")[1:]]
            if segs and segs[-1] == "" and len(segs) > 1:
                segs = segs[:-1]
            self._route(method, segs)
        except _Reset:
            return
        except HubError as e:
            self._error(e)
        except (json.JSONDecodeError, binascii.Error) as e:  # malformed request body
            self._error(HubError(400, f"Malformed request body: {e}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug here should surface as a 500 the client can report
            self._error(HubError(500, f"Internal server error: {type(e).__name__}: {e}"))

    # ---- auth
    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_auth(self, write: bool) -> bool:
        """Returns whether the caller is authenticated. A wrong token always fails; a missing
        token fails for writes. The 401 carries the message the client treats as a plain
        auth error (HfHubHTTPError), not as RepositoryNotFoundError."""
        expected = self.server.token
        given = self._bearer()
        if expected is None:
            return True
        if given is not None and given != expected:
            raise HubError(401, "Invalid credentials in Authorization header")
        if given is None and write:
            # Same message on purpose: any other 401 text on /api/<type>s/... URLs is
            # mapped by the client to RepositoryNotFoundError, hiding the real cause.
            raise HubError(401, "Invalid credentials in Authorization header")
        return given is not None

    def _fault(self, route: str) -> None:
        srv = self.server
        srv.bump("requests", route)
        slow = srv.take_fault(route, "_slow_s")
        if slow:
            time.sleep(float(slow))
        reset = srv.take_fault(route, "_reset")
        if reset == "mid-body":
            self._reset(partial=True)
        self._reset_after = reset == "after"
        status = srv.take_fault(route)
        if status is not None:
            status = int(status)
            msg = STALE_PARENT_MESSAGE if status == 412 else f"Injected fault ({status}) on {route}"
            retry_after = {"Retry-After": str(srv.faults.get("retry_after", "0"))}
            raise HubError(status, msg, headers=retry_after if status in (429, 503) else None)

    # ---- routing
    def _route(self, method: str, s: list[str]) -> None:
        if s[:1] == ["_test"]:
            return self._test_endpoint(method, s[1:])
        if s[:1] == ["api"]:
            if s[1:] == ["whoami-v2"]:
                self._fault("whoami")
                return self._whoami()
            if s[1:] == ["validate-yaml"] and method == "POST":
                # create_commit calls this before committing a README.md; we accept any metadata.
                return self._json({"errors": [], "warnings": []})
            if s[1:] == ["repos", "create"] and method == "POST":
                self._check_auth(write=True)
                self._fault("create_repo")
                return self._create_repo()
            if s[1:] == ["repos", "delete"] and method == "DELETE":
                self._check_auth(write=True)
                self._fault("delete_repo")
                return self._delete_repo()
            if len(s) >= 4 and s[1].endswith("s") and s[1][:-1] in REPO_TYPES:
                return self._repo_api(method, s[1][:-1], f"{s[2]}/{s[3]}", s[4:])
        # /{ns}/{name}/resolve/{rev}/{path} ; /datasets/{ns}/{name}/resolve/...
        repo_type = "model"
        if s and s[0] in ("datasets", "spaces", "kernels") and len(s) >= 5 and s[3] == "resolve":
            repo_type, s = s[0][:-1], s[1:]
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise HubError(404, f"Not found: {method} {self.path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        # paths-info is a POST but only reads
        write = method in WRITE_METHODS and rest[:1] != ["paths-info"]
        authed = self._check_auth(write=write)
        state = self._load_repo(repo_type, repo_id, authed)
        head = rest[0] if rest else None
        if method == "GET" and (not rest or (head == "revision" and len(rest) == 2)):
            self._fault("info")
            return self._info(repo_type, repo_id, state, rest[1] if rest else DEFAULT_BRANCH)
        if method == "POST" and head == "preupload" and len(rest) == 2:
            self._fault("preupload")
            return self._preupload(state, rest[1])
        if method == "POST" and head == "commit" and len(rest) == 2:
            key = REPO_TYPES[repo_type] + repo_id
            self.server.bump("commit_requests", key)
            with self.server.faults_lock:
                self.server.stats["commit_request_times"].setdefault(key, []).append(time.time())
            self._fault("commit")
            return self._commit(repo_type, repo_id, rest[1], key)
        if method == "GET" and head == "tree" and len(rest) >= 2:
            self._fault("tree")
            return self._tree(state, rest[1], "/".join(rest[2:]))
        if method == "POST" and head == "paths-info" and len(rest) == 2:
            self._fault("paths_info")
            return self._paths_info(state, rest[1])
        if method == "GET" and rest == ["refs"]:
            self._fault("refs")
            return self._refs(state)
        if method == "GET" and head == "commits" and len(rest) == 2:
            self._fault("commits")
            return self._commits(state, rest[1])
        if head == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            self._fault("branch")
            return self._branch(method, repo_type, repo_id, rest[1])
        if rest == ["settings"] and method == "PUT":
            return self._settings(repo_type, repo_id)
        if head == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            self._fault("tag")
            return self._tag(method, repo_type, repo_id, rest[1])
        raise HubError(404, f"Not found: {method} {self.path}")

    def _load_repo(self, repo_type: str, repo_id: str, authed: bool) -> dict:
        state = self.server.store.load(repo_type, repo_id)
        if state is None or (state.get("private") and self.server.token is not None and not authed):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return state

    # ---- endpoints
    def _whoami(self) -> None:
        given = self._bearer()
        if given is None or (self.server.token is not None and given != self.server.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Test User",
                "email": "tester@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self._base_url()}/{REPO_TYPES[repo_type]}{repo_id}"

    def _create_repo(self) -> None:
        req = json.loads(self.body or b"{}")
        repo_type = req.get("type") or "model"
        name, org = req.get("name") or "", req.get("organization") or USER
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        if not (_NAME_RE.match(name) and _NAME_RE.match(org)):
            raise HubError(400, f"Invalid repo name: {org}/{name}")
        repo_id = f"{org}/{name}"
        url = self._repo_url(repo_type, repo_id)
        store = self.server.store
        with store.lock():
            if store.load(repo_type, repo_id) is not None:
                raise HubError(
                    409,
                    f"You already created this {repo_type} repo",
                    body={"error": f"You already created this {repo_type} repo", "url": url},
                )
            private = bool(req.get("private")) or req.get("visibility") == "private"
            state = {
                "type": repo_type,
                "id": repo_id,
                "private": private,
                "createdAt": _now_iso(),
                "branches": {},
                "tags": {},
                "pulls": {},
                "commits": {},
            }
            # Like the Hub, a new repo has one initial commit on main (here with an empty tree).
            state["branches"][DEFAULT_BRANCH] = _new_commit(state, None, {}, "initial commit", "")
            store.save(repo_type, repo_id, state)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        req = json.loads(self.body or b"{}")
        store = self.server.store
        with store.lock():
            state = self._load_repo(repo_type, repo_id, authed=True)
            if "gated" in req:
                if req["gated"] not in ("auto", "manual", False):
                    raise HubError(400, f"Invalid gated value: {req['gated']!r}")
                state["gated"] = req["gated"]
            if "private" in req or "visibility" in req:
                state["private"] = bool(req.get("private")) or req.get("visibility") == "private"
            store.save(repo_type, repo_id, state)
        self._json({})

    def _delete_repo(self) -> None:
        req = json.loads(self.body or b"{}")
        repo_type = req.get("type") or "model"
        repo_id = f"{req.get('organization') or USER}/{req.get('name')}"
        store = self.server.store
        with store.lock():
            if repo_type not in REPO_TYPES or store.load(repo_type, repo_id) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            store.delete(repo_type, repo_id)
        self._json({})

    def _info(self, repo_type: str, repo_id: str, state: dict, rev: str) -> None:
        cid = resolve_revision(state, rev)
        commit = state["commits"][cid]
        blobs = self.query.get("blobs", [""])[0].lower() in ("1", "true")
        siblings = []
        for path, e in sorted(commit["tree"].items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=e["size"], blobId=e["oid"])
            siblings.append(sib)
        self._json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": cid,
                "lastModified": commit["date"],
                "createdAt": state["createdAt"],
                "private": state["private"],
                "gated": state.get("gated", False),
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(e["size"] for e in commit["tree"].values()),
                **({"cardData": {}} if repo_type != "model" else {}),
            }
        )

    def _preupload(self, state: dict, rev: str) -> None:
        req = json.loads(self.body or b"{}")
        try:
            tree = state["commits"][resolve_revision(state, rev)]["tree"]
        except HubError:
            tree = {}  # the commit itself reports a missing revision
        files = []
        for f in req.get("files", []):
            remote = tree.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": remote["oid"] if remote else None,
                }
            )
        self._json({"files": files, "commitOid": None})

    def _parse_commit_body(self) -> tuple[dict, list[tuple[str, dict]]]:
        header, ops = None, []
        for line in self.body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, "Malformed NDJSON commit payload") from None
            if key == "header":
                header = value
            elif key in ("file", "deletedFile", "deletedFolder", "lfsFile"):
                ops.append((key, value))
            else:
                raise HubError(400, f"Unsupported commit operation: {key}")
        if header is None or not header.get("summary"):
            raise HubError(400, "Commit header with a summary is required")
        return header, ops

    def _commit(self, repo_type: str, repo_id: str, rev: str, key: str) -> None:
        header, ops = self._parse_commit_body()
        create_pr = self.query.get("create_pr", [""])[0] in ("1", "true", "True")
        store = self.server.store
        # 1) Store new blobs before touching refs: safe to do outside the lock and harmless
        #    if we die right after (unreferenced blobs).
        staged: list[tuple[str, str, dict | None]] = []
        for kind, v in ops:
            path = v.get("path", "")
            if kind == "file":
                if v.get("encoding", "base64") == "base64":
                    data = base64.b64decode(v.get("content", ""), validate=True)
                else:
                    data = str(v.get("content", "")).encode()
                staged.append(("add", _check_path(path), store.put_blob(data)))
            elif kind == "lfsFile":
                sha = str(v.get("oid", ""))
                if not re.fullmatch(r"[0-9a-f]{64}", sha) or not os.path.exists(store.blob_path(sha)):
                    raise HubError(422, f"LFS file {path} was not uploaded (this server never asks for LFS)")
                with open(store.blob_path(sha), "rb") as f:
                    staged.append(("add", _check_path(path), store.put_blob(f.read())))
            elif kind == "deletedFile":
                staged.append(("del", _check_path(path), None))
            else:
                staged.append(("delfolder", _check_path(path.rstrip("/")), None))
        # 2) Test hook: a window in which the server can be killed mid-commit.
        delay = float(self.server.faults.get("commit_delay_s") or 0)
        if delay > 0:
            time.sleep(delay)
        # 3) Apply atomically: re-read the state under the lock, check the parent, replace the file.
        with store.lock():
            state = self._load_repo(repo_type, repo_id, authed=True)
            if rev.startswith("refs/heads/"):
                rev = rev[len("refs/heads/") :]
            pr_num = None
            if create_pr:
                base = resolve_revision(state, rev)
                pr_num = str(max((int(n) for n in state["pulls"]), default=0) + 1)
                head = base
            else:
                m = re.fullmatch(r"refs/pr/(\d+)", rev)
                if m and m.group(1) in state["pulls"]:
                    pr_num = m.group(1)
                    head = state["pulls"][pr_num]
                elif rev in state["branches"]:
                    head = state["branches"][rev]
                else:
                    raise HubError(404, f"Invalid rev id: {rev} (commits must target a branch)", "RevisionNotFound")
            if self.server.take_race() and pr_num is None:  # another writer lands first (same tree)
                head = state["branches"][rev] = _new_commit(
                    state, head, state["commits"][head]["tree"], "concurrent writer", ""
                )
                store.save(repo_type, repo_id, state)
            parent_commit = header.get("parentCommit")
            if parent_commit and not create_pr and not head.startswith(parent_commit.lower()):
                raise HubError(412, STALE_PARENT_MESSAGE)
            tree = copy.deepcopy(state["commits"][head]["tree"])
            for op, path, entry in staged:
                if op == "add":
                    if any(d == path for d in _dirs_of(tree)):
                        raise HubError(400, f"Cannot add file {path}: a folder with this name exists")
                    tree[path] = entry
                elif op == "del":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                else:
                    doomed = [p for p in tree if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
            cid = _new_commit(state, head, tree, header["summary"], header.get("description") or "")
            if pr_num is not None:
                state["pulls"][pr_num] = cid
            else:
                state["branches"][rev] = cid
            store.save(repo_type, repo_id, state)
        self.server.bump("commits", key)
        repo_url = self._repo_url(repo_type, repo_id)
        self._json(
            {
                "success": True,
                "commitOid": cid,
                "commitUrl": f"{repo_url}/commit/{cid}",
                "pullRequestUrl": f"{repo_url}/discussions/{pr_num}" if create_pr else None,
            }
        )

    def _tree(self, state: dict, rev: str, path: str) -> None:
        cid = resolve_revision(state, rev)
        tree = state["commits"][cid]["tree"]
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        dirs = _dirs_of(tree)
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": cid})
        prefix = path + "/" if path else ""
        names = [p for p in sorted(set(tree) | dirs) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix) :]]
        # Hub order: folders first, then files.
        names.sort(key=lambda p: (p in tree, p))
        self._json([_entry(state, cid, tree, p, expand) for p in names], headers={"X-Repo-Commit": cid})

    def _paths_info(self, state: dict, rev: str) -> None:
        ctype = (self.headers.get("Content-Type") or "").lower()
        if "json" in ctype:
            req = json.loads(self.body or b"{}")
            paths, expand = req.get("paths", []), req.get("expand", False)
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0]
        if isinstance(paths, str):
            paths = [paths]
        expand = str(expand).lower() in ("1", "true")
        cid = resolve_revision(state, rev)
        tree = state["commits"][cid]["tree"]
        dirs = _dirs_of(tree)
        out = [
            _entry(state, cid, tree, p.strip("/"), expand)
            for p in paths
            if p.strip("/") in tree or p.strip("/") in dirs
        ]
        self._json(out, headers={"X-Repo-Commit": cid})

    def _refs(self, state: dict) -> None:
        def refs(d, prefix):
            return [{"name": n, "ref": f"{prefix}{n}", "targetCommit": c} for n, c in sorted(d.items())]

        out = {
            "branches": refs(state["branches"], "refs/heads/"),
            "converts": [],
            "tags": refs(state["tags"], "refs/tags/"),
        }
        if self.query.get("include_prs", ["0"])[0] in ("1", "true"):
            out["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                for n, c in sorted(state["pulls"].items(), key=lambda kv: int(kv[0]))
            ]
        self._json(out)

    def _commits(self, state: dict, rev: str) -> None:
        cid = resolve_revision(state, rev)
        formatted = "formatted" in self.query.get("expand[]", []) + self.query.get("expand", [])
        out = []
        while cid is not None:
            c = state["commits"][cid]
            message = c["summary"] + ("\n\n" + c["description"] if c["description"] else "")
            item = {
                "id": cid,
                "authors": [{"user": c["author"]}],
                "date": c["date"],
                "title": c["summary"],
                "message": message,
            }
            if formatted:
                item["formatted"] = {"title": c["summary"], "message": message}
            out.append(item)
            cid = c["parent"]
        self._json(out)

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        req = json.loads(self.body or b"{}") if method == "POST" else {}
        store = self.server.store
        with store.lock():
            state = self._load_repo(repo_type, repo_id, authed=True)
            if method == "POST":
                if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith("refs/"):
                    raise HubError(400, f"Invalid branch name: {branch}")
                if branch in state["branches"]:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = req.get("startingPoint") or DEFAULT_BRANCH
                state["branches"][branch] = resolve_revision(state, start)
            else:
                if branch == DEFAULT_BRANCH:
                    raise HubError(403, "Cannot delete the default branch")
                if branch not in state["branches"]:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                del state["branches"][branch]
            store.save(repo_type, repo_id, state)
        self._json({})

    def _tag(self, method: str, repo_type: str, repo_id: str, rev_or_tag: str) -> None:
        req = json.loads(self.body or b"{}") if method == "POST" else {}
        store = self.server.store
        with store.lock():
            state = self._load_repo(repo_type, repo_id, authed=True)
            if method == "POST":
                tag = str(req.get("tag") or "")
                if not re.fullmatch(r"[A-Za-z0-9._/-]+", tag):
                    raise HubError(400, f"Invalid tag name: {tag!r}")
                if tag in state["tags"]:
                    raise HubError(409, f"Tag {tag} already exists")
                state["tags"][tag] = resolve_revision(state, rev_or_tag)
            else:
                if rev_or_tag not in state["tags"]:
                    raise HubError(404, f"Invalid rev id: {rev_or_tag}", "RevisionNotFound")
                del state["tags"][rev_or_tag]
            store.save(repo_type, repo_id, state)
        self._json({})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        authed = self._check_auth(write=False)
        state = self._load_repo(repo_type, repo_id, authed)
        self._fault("resolve")
        cid = resolve_revision(state, rev)
        entry = state["commits"][cid]["tree"].get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": cid})
        size = entry["size"]
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: last N bytes
                start = max(size - int(m.group(2)), 0)
            if start > end or start >= size:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{entry["oid"]}"')
        self.send_header("X-Repo-Commit", cid)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        with open(self.server.store.blob_path(entry["sha256"]), "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _test_endpoint(self, method: str, rest: list[str]) -> None:
        srv = self.server
        if rest == ["faults"]:
            with srv.faults_lock:
                if method == "POST":
                    cfg = json.loads(self.body or b"{}")
                    def is_list(k: str) -> bool:
                        return any(k.endswith(x) and k[: -len(x)] in ROUTES for x in FAULT_LISTS)

                    scalars = ("commit_delay_s", "commit_race", "retry_after")
                    unknown = [k for k in cfg if k not in scalars and not is_list(k)]
                    if unknown:
                        raise HubError(400, f"Unknown fault keys: {unknown}; routes: {list(ROUTES)}")
                    faults = {k: (list(v) if isinstance(v, list) else [v]) if is_list(k) else v for k, v in cfg.items()}
                    bad = [m for k, v in faults.items() if k.endswith("_reset") for m in v if m not in RESET_MODES]
                    if bad:
                        raise HubError(400, f"Unknown reset modes: {bad}; use {list(RESET_MODES)}")
                    srv.faults = faults
                elif method == "DELETE":
                    srv.faults = {}
                return self._json(srv.faults)
        if rest == ["stats"] and method == "GET":
            with srv.faults_lock:
                return self._json(srv.stats)
        raise HubError(404, f"Not found: {method} {self.path}")


# ---------------------------------------------------------------- entry points


def start_server(root: str, token: str | None = None, port: int = 0, host: str = "127.0.0.1", verbose: bool = False):
    """Run the server in a daemon thread. Returns ``(url, stop)``; ``stop()`` shuts it down."""
    server = HubServer((host, port), root, token=token, verbose=verbose)
    thread = threading.Thread(target=server.serve_forever, name="hubserver", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return server.url, stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="storage directory (created if missing)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--token", default=None, help="if set, writes need 'Authorization: Bearer TOKEN'")
    p.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = p.parse_args(argv)
    server = HubServer((args.host, args.port), args.root, token=args.token, verbose=args.verbose)

    def _stop(signum, frame):
        # shutdown() blocks until serve_forever returns, so it cannot run in this (main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(server.url, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
