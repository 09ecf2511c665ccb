"""Hub access: one atomic, idempotent commit per call, retries with backoff, token scrubbing.

Why each push is ONE ``create_commit`` with explicit operations: a commit is atomic on the
Hub, so a reader (or a publisher killed half-way) sees a variant fully or not at all. Every
commit names its ``parent_commit``; a concurrent writer makes it fail with 412/409 and we
re-read the head, re-diff and retry. Files whose content is already there (git blob oid or
LFS sha256 equal) are not re-sent, and a push with nothing new makes no commit at all.

Tokens come from HF_TOKEN / the huggingface_hub login (HfApi's own resolution); any error
text we surface goes through ``scrub`` first, so a token never reaches logs, reports or cards.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from dataclasses import dataclass, field
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


def _sleep_backoff(attempt: int, e: BaseException | None = None) -> None:
    delay = min(BACKOFF_CAP_S, backoff_base_s() * (2 ** (attempt - 1)))
    retry_after = getattr(getattr(e, "response", None), "headers", {}).get("Retry-After") if e is not None else None
    try:
        delay = max(delay, min(BACKOFF_CAP_S, float(retry_after))) if retry_after else delay
    except ValueError:
        pass
    time.sleep(delay * (0.5 + random.random()))  # jitter: two publishers do not retry in lockstep


def _fail(e: BaseException, what: str, repo_id: str, endpoint: str, attempts: int | None = None) -> PublishError:
    status = _status(e)
    if status in (401, 403):
        return PublishError(f"{what} {repo_id} on {endpoint}: not authorized (HTTP {status}); {LOGIN_HINT}")
    detail = scrub(f"{type(e).__name__}: {e}").strip().splitlines()
    tail = f" after {attempts} attempts" if attempts else ""
    return PublishError(f"{what} {repo_id} on {endpoint} failed{tail}: {detail[0][:300] if detail else ''}")


def _call(fn: Callable, what: str, repo_id: str, endpoint: str, passthrough: tuple = ()):
    """Run a Hub read/setup call with retries on 5xx/429/connection errors; auth fails at once;
    `passthrough` exceptions (e.g. EntryNotFoundError) are re-raised as they are."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return fn()
        except passthrough:
            raise
        except Exception as e:
            if _status(e) in (401, 403) or not _transient(e) or attempt == MAX_ATTEMPTS:
                raise _fail(e, what, repo_id, endpoint, attempt if attempt > 1 else None) from None
            _sleep_backoff(attempt, e)


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


def commit_files(
    api,
    repo_id: str,
    files: list[FileSpec],
    *,
    revision: str | None = None,
    commit_message: str,
    commit_description: str | None = None,
    prune: bool = False,
    create: bool = True,
) -> PushResult:
    """Make the repo (at `revision`) hold `files` in ONE atomic commit, sending only what
    differs; no commit when nothing differs. `prune` also deletes files not in `files` (but
    .gitattributes). Stale parent (412/409) -> re-read head and retry; 5xx/429/connection
    errors -> backoff and retry; 401/403 -> PublishError at once. Messages are scrubbed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    endpoint = api.endpoint
    if create:
        _call(lambda: api.create_repo(repo_id, exist_ok=True), "creating", repo_id, endpoint)
        if revision and revision != "main":
            _call(
                lambda: api.create_branch(repo_id, branch=revision, exist_ok=True),
                f"creating branch {revision} of",
                repo_id,
                endpoint,
            )
    wanted = {f.path: f for f in files}
    last: Exception | None = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            head = _head(api, repo_id, revision)
            remote = _remote_files(api, repo_id, head, None if prune else sorted(wanted))
            adds = [f for p, f in sorted(wanted.items()) if not f.matches(remote.get(p))]
            dels = sorted(p for p in remote if prune and p not in wanted and p not in KEEP_REMOTE)
            if not adds and not dels:
                return PushResult(repo_id, revision, head, False)
            ops = [CommitOperationAdd(f.path, f.content()) for f in adds] + [CommitOperationDelete(p) for p in dels]
            info = api.create_commit(
                repo_id,
                ops,
                commit_message=commit_message,
                commit_description=commit_description,
                revision=revision,
                parent_commit=head,
            )
            return PushResult(
                repo_id, revision, info.oid, True, [f.path for f in adds], dels, getattr(info, "commit_url", None)
            )
        except PublishError:
            raise
        except Exception as e:
            last = e
            status = _status(e)
            if status in (401, 403):
                raise _fail(e, "pushing to", repo_id, endpoint) from None
            if status not in (409, 412) and not _transient(e):
                raise _fail(e, "pushing to", repo_id, endpoint) from None
            if attempt < MAX_ATTEMPTS:
                _sleep_backoff(attempt, e)
    raise _fail(last, "pushing to", repo_id, endpoint, MAX_ATTEMPTS) from None


def push_folder(
    folder: str | Path,
    repo_id: str,
    revision: str | None = None,
    api=None,
    commit_message: str = "Upload compiled model with pipeline",
    prune: bool = False,
    token: str | None = None,
) -> PushResult:
    """Push a loadable folder (every file but dot files and logs/) as ONE idempotent commit:
    what runtime classes' `push_to_hub` uses. Returns a PushResult (`oid` = the commit, or the
    unchanged head when nothing differed). Raises PublishError (scrubbed) when it fails."""
    files = [
        FileSpec(rel, sha256_file(p), p.stat().st_size, local=p)
        for rel, p in artifact_files(Path(folder), logs=False, manifest=True).items()
    ]
    api = api or hub_api(token=token)
    try:
        return commit_files(api, repo_id, files, revision=revision, commit_message=commit_message, prune=prune)
    except PublishError as e:
        raise PublishError(scrub(e, token)) from None
