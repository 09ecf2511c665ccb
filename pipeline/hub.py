"""Hub access: one atomic, idempotent commit per call, retries with backoff, token scrubbing.

Why each push is ONE ``create_commit`` with explicit operations: a commit is atomic on the
Hub, so a reader (or a publisher killed half-way) sees a variant fully or not at all. Every
commit names its ``parent_commit``; a concurrent writer makes it fail with 412/409 and we
re-read the head, re-diff and retry. Files whose content is already there (git blob oid or
LFS sha256 equal) are not re-sent, and a push with nothing new makes no commit at all.

Tokens come from HF_TOKEN / the huggingface_hub login (HfApi's own resolution); any error
text we surface goes through ``scrub`` first, so a token never reaches logs, reports or cards.
What is published carries no path of this machine (``scrub_paths_*``); ``source_facts`` reads
the source model's license and gating. Every request made here has a timeout (``_bounded``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable

from pipeline.cache import artifact_files, sha256_file

MAX_ATTEMPTS = 5  # per commit (or read) on 5xx / 429 / connection errors / stale parent
BACKOFF_CAP_S = 30.0
KEEP_REMOTE = {".gitattributes"}  # never pruned from a repo
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


def backoff_base_s() -> float:
    """Seconds of the first retry's backoff (doubles each time, with jitter). The environment
    override, read at call time, lets tests that kill the server not wait minutes."""
    return float(os.environ.get("PIPELINE_PUBLISH_BACKOFF_S", "0.5"))


def request_timeout_s() -> float:
    """Seconds one Hub request may wait for the server (read at call time; tests shorten it)."""
    return float(os.environ.get("PIPELINE_HUB_TIMEOUT_S", "300"))


class PublishError(Exception):
    """A Hub operation (a publish, a shared-cache read) that failed for good (auth, retries
    exhausted, bad repo name); the message is scrubbed."""


def _token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def scrub(text: Any, token: str | None = None) -> str:
    """`text` with the Hub token (HF_TOKEN or the stored login) replaced by ***."""
    text = str(text)
    for secret in {token, _token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"(?i)(authorization:\s*bearer\s+)\S+", r"\1***", text)


@dataclass
class FileSpec:
    """One file to publish: bytes in memory or a local path, with its sha256 and size."""

    path: str  # path in repo
    sha256: str
    size: int
    local: Path | None = None
    data: bytes | None = None

    @classmethod
    def of_bytes(cls, path: str, data: bytes) -> "FileSpec":
        return cls(path, hashlib.sha256(data).hexdigest(), len(data), data=data)

    def content(self) -> bytes | str:
        return self.data if self.data is not None else str(self.local)

    def git_oid(self) -> str:
        """Git blob sha1: what the Hub reports as a regular (non-LFS) file's oid."""
        h = hashlib.sha1(b"blob %d\0" % self.size)
        if self.data is not None:
            h.update(self.data)
        else:
            with open(self.local, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def matches(self, remote) -> bool:
        """Whether a huggingface_hub RepoFile already holds these bytes."""
        if remote is None or getattr(remote, "size", None) != self.size:
            return False
        lfs = getattr(remote, "lfs", None)
        if lfs is not None:
            return lfs.sha256 == self.sha256
        return remote.blob_id == self.git_oid()

    def with_path(self, path: str) -> "FileSpec":
        return FileSpec(path, self.sha256, self.size, self.local, self.data)


def hub_api(publish_cfg: dict | None = None, token: str | None = None):
    """HfApi on publish.endpoint (else HF_ENDPOINT / huggingface.co); the token, unless given,
    is resolved by huggingface_hub itself (HF_TOKEN, then the `hf auth login` token)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=(publish_cfg or {}).get("endpoint") or None, token=token, library_name="pipeline")


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _transient(e: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(e, LocalEntryNotFoundError):  # hf_hub_download's answer to a connection error
        return True
    status = _status(e)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    # The client's HTTP library (httpx or httpx2, by huggingface_hub version): connection
    # refused/reset, server gone mid-response, timeouts are all TransportError subclasses.
    return any(
        c.__name__ in ("TransportError", "TimeoutException") and c.__module__.split(".")[0].startswith("httpx")
        for c in type(e).__mro__
    )


_BOUNDED = threading.local()
_HOOK_LOCK = threading.Lock()
_HOOKED: list[bool] = []


def _timeout_hook(request) -> None:
    """httpx request hook: give a request made inside `_bounded()` that has no timeout one."""
    timeout = request.extensions.get("timeout") or {}
    if getattr(_BOUNDED, "depth", 0) and all(v is None for v in timeout.values()):
        t = request_timeout_s()
        request.extensions = dict(request.extensions, timeout=dict(connect=min(t, 30.0), read=t, write=t, pool=t))


@contextlib.contextmanager
def _bounded():
    """Requests made in this block (this thread) time out after request_timeout_s()."""
    with _HOOK_LOCK:
        if not _HOOKED:
            from huggingface_hub import set_client_factory
            from huggingface_hub.utils import _http

            previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

            def factory():
                client = previous()
                client.event_hooks["request"].append(_timeout_hook)
                return client

            set_client_factory(factory)
            _HOOKED.append(True)
    _BOUNDED.depth = getattr(_BOUNDED, "depth", 0) + 1
    try:
        yield
    finally:
        _BOUNDED.depth -= 1


def _retry_after_s(e: BaseException | None) -> float | None:
    """The server's Retry-After (seconds or an HTTP date), or None."""
    value = (getattr(getattr(e, "response", None), "headers", None) or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    return None


def _sleep_backoff(attempt: int, e: BaseException | None = None) -> None:
    """Exponential backoff with jitter (two publishers do not retry in lockstep); a Retry-After
    is a floor, never jittered below (capped at BACKOFF_CAP_S: `_retry` fails beyond it)."""
    delay = min(BACKOFF_CAP_S, backoff_base_s() * (2 ** (attempt - 1))) * (0.5 + random.random())
    wait = _retry_after_s(e)
    time.sleep(min(BACKOFF_CAP_S, max(delay, wait if wait is not None else 0.0)))


def _retry(e: BaseException, attempt: int, what: str, repo_id: str, endpoint: str, stale_ok: bool = False) -> None:
    """Sleep before the next attempt, or raise PublishError: auth errors and non-transient
    errors at once, transient ones after MAX_ATTEMPTS, a Retry-After beyond BACKOFF_CAP_S at once."""
    status = _status(e)
    if status in (401, 403) or not (_transient(e) or (stale_ok and status in (409, 412))):
        raise _fail(e, what, repo_id, endpoint) from None
    if attempt >= MAX_ATTEMPTS:
        raise _fail(e, what, repo_id, endpoint, attempt) from None
    wait = _retry_after_s(e)
    if wait is not None and wait > BACKOFF_CAP_S:
        raise PublishError(
            f"{what} {repo_id} on {endpoint}: rate limited (HTTP {status}); the Hub asks to retry in "
            f"{wait:.0f} s, longer than this publisher waits ({BACKOFF_CAP_S:.0f} s): try again later"
        ) from None
    _sleep_backoff(attempt, e)


def _fail(e: BaseException, what: str, repo_id: str, endpoint: str, attempts: int | None = None) -> PublishError:
    status = _status(e)
    if status in (401, 403):
        return PublishError(f"{what} {repo_id} on {endpoint}: not authorized (HTTP {status}); {LOGIN_HINT}")
    detail = scrub(f"{type(e).__name__}: {e}").strip().splitlines()
    tail = f" after {attempts} attempts" if attempts else ""
    return PublishError(f"{what} {repo_id} on {endpoint} failed{tail}: {detail[0][:300] if detail else ''}")


def _call(fn: Callable, what: str, repo_id: str, endpoint: str, passthrough: tuple = ()):
    """Run a Hub read/setup call with retries on 5xx/429/connection errors/timeouts; auth fails
    at once; `passthrough` exceptions (e.g. EntryNotFoundError) are re-raised as they are."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with _bounded():
                return fn()
        except passthrough:
            raise
        except Exception as e:
            _retry(e, attempt, what, repo_id, endpoint)


def _head(api, repo_id: str, revision: str | None) -> str:
    return api.repo_info(repo_id, revision=revision or "main").sha


def _remote_files(api, repo_id: str, head: str, paths: list[str] | None) -> dict:
    """path -> RepoFile at commit `head`: the given paths only (paths-info), or the whole tree."""
    from huggingface_hub.hf_api import RepoFile

    if paths is None:
        items = api.list_repo_tree(repo_id, revision=head, recursive=True)
    else:
        items = []
        for i in range(0, len(paths), 100):
            items += api.get_paths_info(repo_id, paths[i : i + 100], revision=head)
    return {f.path: f for f in items if isinstance(f, RepoFile)}


@dataclass
class PushResult:
    """What a push did: `oid` is the new commit, or the unchanged head when nothing changed."""

    repo_id: str
    revision: str | None
    oid: str | None
    committed: bool
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    commit_url: str | None = None


def commit_files(api, repo_id: str, files: list[FileSpec], *, revision: str | None = None, commit_message: str,
                 commit_description: str | None = None, prune: bool = False, create: bool = True,
                 private: bool = True,
                 derived: Callable[[str], list[FileSpec]] | None = None) -> PushResult:  # fmt: skip
    """Make the repo (at `revision`) hold `files` in ONE atomic commit, sending only what
    differs; no commit when nothing differs. `prune` also deletes files not in `files` (but
    .gitattributes). A repo it creates is private unless `private=False`. Stale parent (412/409)
    -> re-read head and retry; 5xx/429/connection errors/timeouts -> backoff and retry (at most
    MAX_ATTEMPTS); 401/403 -> PublishError at once. Messages are scrubbed. `derived(head)` adds
    files computed from the commit they will follow (an index that merges what is there), so a
    retry after a concurrent writer merges that writer's rows too."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    endpoint = api.endpoint
    if create:
        _call(lambda: api.create_repo(repo_id, exist_ok=True, private=private), "creating", repo_id, endpoint)
        if revision and revision != "main":
            create_branch = lambda: api.create_branch(repo_id, branch=revision, exist_ok=True)  # noqa: E731
            _call(create_branch, f"creating branch {revision} of", repo_id, endpoint)
    wanted, landed = {f.path: f for f in files}, False  # landed: a commit sent whose answer was lost
    for attempt in range(1, MAX_ATTEMPTS + 1):
        sending = False
        try:
            with _bounded():
                head = _head(api, repo_id, revision)
                if derived is not None:
                    wanted.update({f.path: f for f in derived(head)})
                remote = _remote_files(api, repo_id, head, None if prune else sorted(wanted))
                adds = [f for p, f in sorted(wanted.items()) if not f.matches(remote.get(p))]
                dels = sorted(p for p in remote if prune and p not in wanted and p not in KEEP_REMOTE)
                if not adds and not dels:
                    return PushResult(repo_id, revision, head, landed)
                ops = [CommitOperationAdd(f.path, f.content()) for f in adds] + [CommitOperationDelete(p) for p in dels]
                sending = True
                info = api.create_commit(repo_id, ops, commit_message=commit_message, revision=revision,
                                         commit_description=commit_description, parent_commit=head)  # fmt: skip
            return PushResult(
                repo_id, revision, info.oid, True, [f.path for f in adds], dels, getattr(info, "commit_url", None)
            )
        except PublishError:
            raise
        except Exception as e:
            landed = landed or (sending and _status(e) is None)
            _retry(e, attempt, "pushing to", repo_id, endpoint, stale_ok=True)
    raise AssertionError("unreachable: _retry raises on the last attempt")


def read_file(api, repo_id: str, path: str, revision: str) -> bytes | None:
    """A file of a repo at a commit, or None when it is not there."""
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    missing = (EntryNotFoundError, RemoteEntryNotFoundError)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = _call(lambda: api.hf_hub_download(repo_id, path, revision=revision, local_dir=tmp), "reading",
                        repo_id, api.endpoint, missing)  # fmt: skip
        except missing:
            return None
        return Path(got).read_bytes()


def push_folder(folder: str | Path, repo_id: str, revision: str | None = None, api=None,
                commit_message: str = "Upload compiled model with pipeline", prune: bool = False,
                token: str | None = None, private: bool = True) -> PushResult:  # fmt: skip
    """Push a loadable folder (every file but dot files and logs/) as ONE idempotent commit:
    what runtime classes' `push_to_hub` uses; a repo it creates is private unless `private=False`.
    Returns a PushResult (`oid` = the commit, or the unchanged head when nothing differed).
    Raises PublishError (scrubbed) when it fails."""
    files = [
        FileSpec(rel, sha256_file(p), p.stat().st_size, local=p)
        for rel, p in artifact_files(Path(folder), logs=False, manifest=True).items()
    ]
    api = api or hub_api(token=token)
    try:
        return commit_files(api, repo_id, files, revision=revision, commit_message=commit_message, prune=prune,
                            private=private)  # fmt: skip
    except PublishError as e:
        raise PublishError(scrub(e, token)) from None
