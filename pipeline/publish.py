"""Publisher: verified cache entries -> Hub model repos + the shared compiled-model cache.

Two destinations per variant (a job that passed verification, status passed or cached):

* its **variant repo** (``publish.repo_template``; or one repo per model and one branch per
  variant with ``publish.revision_template``): the loadable folder (config.json, model.pt2,
  tokenizer files, manifest.json; never logs/) plus a generated model card README.md;
* the **shared cache repo** (``publish.cache_repo``), content-addressed:
  ``<platform-tag>/<key[:2]>/<key>/...``. There is no index file that two publishers could
  fight over: a lookup is "does ``<platform-tag>/<key[:2]>/<key>/manifest.json`` exist".

Why each variant is ONE ``create_commit`` with explicit operations: a commit is atomic on the
Hub, so a reader (or a publisher killed half-way) sees a variant fully or not at all. Every
commit names its ``parent_commit``; a concurrent writer makes it fail with 412/409 and we
re-read the head, re-diff and retry. Files whose content is already there (git blob oid or
LFS sha256 equal) are not re-sent, and a variant with nothing new makes no commit at all, so
re-publishing is idempotent. ``publish=local`` writes the same layout into ``publish.dir``
(temp dir + rename) for offline demos; ``fetch_from_shared_cache`` reads either.

Tokens come from HF_TOKEN / the huggingface_hub login (HfApi's own resolution); any error
text we surface goes through ``scrub`` first, so a token never reaches logs, reports or cards.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pipeline import keys
from pipeline.cache import MANIFEST, Cache, check_integrity, sha256_file

README = "README.md"
DEFAULT_REPO_TEMPLATE = "{namespace}/{model_name}-{backend}-{cast_type}-b{batch_size}-s{sequence_length}"
PER_MODEL_REPO_TEMPLATE = "{namespace}/{model_name}"
MAX_FILES_PER_COMMIT = 100  # the Hub is happiest with commits well under a few hundred files
MAX_ATTEMPTS = 5  # per commit (or read) on 5xx / 429 / connection errors / stale parent
# Seconds of the first retry's backoff (doubles each time, with jitter). The env override
# exists for tests that kill the server and must not wait minutes for the retries to give up.
BACKOFF_BASE_S = float(os.environ.get("PIPELINE_PUBLISH_BACKOFF_S", "0.5"))
BACKOFF_CAP_S = 30.0
KEEP_REMOTE = {".gitattributes"}  # never pruned from a variant repo
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


class PublishError(Exception):
    """A publish that failed for good (auth, retries exhausted, bad repo name); message scrubbed."""


# --------------------------------------------------------------------------- secrets


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


# --------------------------------------------------------------------------- naming


def _clean(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(part)).strip("-.") or "unknown"


def platform_tag(spec: dict) -> str:
    """The shared cache's top-level folder: which machines can load an artifact, e.g.
    ``inductor-cpu-x86_64-AVX512-torch2.13.0`` or ``neuron-trn1-neuronx-cc2.21.0``.
    The key alone decides reuse; the tag groups entries so a user can browse what exists for
    their platform (and so the one-line lookup needs no index file)."""
    backend = spec["backend"]["name"]
    options = spec["backend"].get("options") or {}
    tc = spec.get("toolchain") or {}
    if backend == "neuron":
        parts = [backend, tc.get("target") or options.get("target") or "unknown", f"neuronx-cc{tc.get('neuronx-cc', 'absent')}"]
    else:
        plat = tc.get("platform") or {}
        device = options.get("device", "cpu")
        hw = plat.get("gpu_arch") if device == "cuda" and plat.get("gpu_arch") else plat.get("cpu_capability")
        hw = str(hw).split()[0] if hw else "unknown"  # "sm_90 NVIDIA H100" -> "sm_90"
        torch_version = str(tc.get("torch", "unknown")).split("+")[0]
        parts = [backend, device, plat.get("arch") or "unknown", hw, f"torch{torch_version}"]
    return "-".join(_clean(p) for p in parts)


def cache_path(spec: dict, key: str) -> str:
    """Folder of an entry in the shared cache repo: ``<platform-tag>/<key[:2]>/<key>``."""
    return f"{platform_tag(spec)}/{key[:2]}/{key}"


def _fields(job: dict, publish_cfg: dict) -> dict:
    shapes = job.get("shapes") or job["spec"]["shapes"]
    return {"namespace": publish_cfg.get("namespace") or "compiled", "model_name": _clean(job["model"]["name"]),
            "backend": job["backend"], "cast_type": job["cast_type"], "task": job["task"],
            "batch_size": shapes.get("batch_size"), "sequence_length": shapes.get("sequence_length"), "key": job["key"][:12]}


def variant_target(job: dict, publish_cfg: dict) -> tuple[str, str | None]:
    """(repo_id, revision or None for main) of a job's variant."""
    from pipeline.config import HUB_ID, check_revision

    fields = _fields(job, publish_cfg)
    template = publish_cfg.get("repo_template") or DEFAULT_REPO_TEMPLATE
    revision = None
    if publish_cfg.get("revision_template"):
        if template == DEFAULT_REPO_TEMPLATE:
            template = PER_MODEL_REPO_TEMPLATE  # one repo per model, one branch per variant
        revision = publish_cfg["revision_template"].format(**fields)
        problem = check_revision(revision)
        if problem:
            raise PublishError(f"publish.revision_template gives {problem}")
    repo_id = template.format(**fields)
    if not HUB_ID.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise PublishError(f"publish.repo_template gives {repo_id!r}, which is not a valid Hub repo id")
    return repo_id, revision


# --------------------------------------------------------------------------- what is published


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


def _published_files(manifest: dict) -> list[str]:
    return [rel for rel in manifest.get("files", {}) if not rel.startswith("logs/")]


def published_manifest(manifest: dict) -> dict:
    """The manifest as published: only the files that are published (no logs/), no local
    paths, and the original created_at (an entry fetched from the shared cache keeps it), so
    re-publishing a fetched entry gives the same bytes and makes no commit."""
    m = {k: v for k, v in manifest.items() if k != "fetched_from"}
    origin = manifest.get("fetched_from") or {}
    if origin.get("created_at"):
        m["created_at"] = origin["created_at"]
    m["files"] = {rel: manifest["files"][rel] for rel in _published_files(manifest)}
    if isinstance(m.get("model"), dict):
        m["model"] = {k: v for k, v in m["model"].items() if k != "path"}
    return m


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def entry_files(entry: Path, manifest: dict) -> list[FileSpec]:
    """The loadable folder of an entry (no logs/) with its published manifest.json."""
    files = [FileSpec(rel, meta["sha256"], meta["size"], local=entry / rel) for rel, meta in
             sorted(manifest["files"].items()) if not rel.startswith("logs/")]
    files.append(FileSpec.of_bytes(MANIFEST, _manifest_bytes(published_manifest(manifest))))
    return files


def model_class(task: str) -> str:
    from pipeline.tasks import TASKS

    auto = TASKS[task].auto_class if task in TASKS else "AutoModel"
    return "CompiledModelFor" + (auto[len("AutoModelFor"):] if auto.startswith("AutoModelFor") else "FeatureExtraction")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v).replace("|", "\\|")


def model_card(job: dict, manifest: dict, repo_id: str, revision: str | None, cache_repo: str | None) -> str:
    """README.md of a variant repo: YAML metadata + how to load, spec, toolchain, metrics, key.
    Deterministic (no timestamps of its own), so an unchanged variant gives the same card."""
    import yaml

    spec = manifest.get("spec") or job["spec"]
    model = manifest.get("model") or job["model"]
    task = spec["task"]
    meta: dict[str, Any] = {}
    if not model.get("local") and not str(spec["model"]["id"]).startswith("local:"):
        meta["base_model"] = spec["model"]["id"]
    meta["library_name"] = "pipeline"
    meta["pipeline_tag"] = task
    meta["tags"] = ["pipeline", "compiled", spec["backend"]["name"], spec["cast_type"], task]
    cls = model_class(task)
    rev_arg = f', revision="{revision}"' if revision else ""
    shapes = spec["shapes"]
    title = f"{model.get('name') or spec['model']['id']}: {spec['backend']['name']} {spec['cast_type']} b{shapes.get('batch_size')} s{shapes.get('sequence_length')}"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", "",
             f"A compiled `{task}` variant of `{spec['model']['id']}`, built and verified against the CPU fp32 "
             "reference by `pipeline`. It loads with no compile step and no model code.", "",
             "## How to load", "", "```python", f"from pipeline.modeling import {cls}", "",
             f'model = {cls}.from_pretrained("{repo_id}"{rev_arg})', "```", "",
             "## Spec", "", "| field | value |", "|---|---|"]
    rows = [("model", spec["model"]["id"]), ("model revision", spec["model"].get("revision")), ("task", task),
            *[(k, v) for k, v in sorted(shapes.items())], ("cast_type", spec["cast_type"]), ("auto_cast", spec.get("auto_cast")),
            ("dynamic_batch_size", spec.get("dynamic_batch_size")), ("backend", spec["backend"]["name"]),
            ("backend options", spec["backend"].get("options")), ("recipe", spec.get("recipe"))]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "## Toolchain", "", "| component | version |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in keys.flatten(spec.get("toolchain") or {}).items()]
    verification = manifest.get("verification") or {}
    lines += ["", "## Verification", "", f"Status: **{verification.get('status', 'passed')}** against the CPU fp32 eager reference"
              + (f", tolerance {_fmt(verification.get('tolerance'))}." if verification.get("tolerance") else "."), "",
              "| output | metric | value |", "|---|---|---|"]
    for out, metrics in sorted((manifest.get("metrics") or {}).items()):
        for name, value in sorted(metrics.items()) if isinstance(metrics, dict) else [("value", metrics)]:
            lines.append(f"| {out} | {name} | {_fmt(value)} |")
    lines += ["", "## Key", "", f"`{job['key']}` (sha256 of the canonical JSON of the spec; `python -m pipeline mode=explain key={job['key'][:12]}`)."]
    if cache_repo:
        lines += ["", f"Also in the shared cache `{cache_repo}` at `{cache_path(spec, job['key'])}/`."]
    return "\n".join(lines) + "\n"


@dataclass
class Variant:
    row: dict
    job: dict
    entry: Path
    manifest: dict
    repo_id: str
    revision: str | None
    files: list[FileSpec]  # entry files + manifest (no README)
    cache_dir: str  # <platform-tag>/<kk>/<key>
    card: str = ""

    def repo_files(self) -> list[FileSpec]:
        return self.files + [FileSpec.of_bytes(README, self.card.encode())]

    def cache_files(self) -> list[FileSpec]:
        return [f.with_path(f"{self.cache_dir}/{f.path}") for f in self.files]


# --------------------------------------------------------------------------- Hub access


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
    return any(c.__name__ in ("TransportError", "TimeoutException") and c.__module__.split(".")[0].startswith("httpx")
               for c in type(e).__mro__)


def _sleep_backoff(attempt: int, e: BaseException | None = None) -> None:
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** (attempt - 1)))
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
            items += api.get_paths_info(repo_id, paths[i:i + 100], revision=head)
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
                 commit_description: str | None = None, prune: bool = False, create: bool = True) -> PushResult:
    """Make the repo (at `revision`) hold `files` in ONE atomic commit, sending only what
    differs; no commit when nothing differs. `prune` also deletes files not in `files` (but
    .gitattributes). Stale parent (412/409) -> re-read head and retry; 5xx/429/connection
    errors -> backoff and retry; 401/403 -> PublishError at once. Messages are scrubbed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    endpoint = api.endpoint
    if create:
        _call(lambda: api.create_repo(repo_id, exist_ok=True), "creating", repo_id, endpoint)
        if revision and revision != "main":
            _call(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), "creating branch "
                  f"{revision} of", repo_id, endpoint)
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
            info = api.create_commit(repo_id, ops, commit_message=commit_message, commit_description=commit_description,
                                     revision=revision, parent_commit=head)
            return PushResult(repo_id, revision, info.oid, True, [f.path for f in adds], dels, getattr(info, "commit_url", None))
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


def push_folder(folder: str | Path, repo_id: str, revision: str | None = None, api=None,
                commit_message: str = "Upload compiled model with pipeline", prune: bool = False,
                token: str | None = None) -> PushResult:
    """Push a loadable folder (every file but dot files and logs/) as ONE idempotent commit:
    what runtime classes' `push_to_hub` uses. Returns a PushResult (`oid` = the commit, or the
    unchanged head when nothing differed). Raises PublishError (scrubbed) when it fails."""
    folder = Path(folder)
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith("logs/") and not any(part.startswith(".") for part in rel.split("/")):
            files.append(FileSpec(rel, sha256_file(p), p.stat().st_size, local=p))
    api = api or hub_api(token=token)
    try:
        return commit_files(api, repo_id, files, revision=revision, commit_message=commit_message, prune=prune)
    except PublishError as e:
        raise PublishError(scrub(e, token)) from None


def _batches(variants: list[Variant], limit: int = MAX_FILES_PER_COMMIT) -> Iterable[list[Variant]]:
    """Whole variants per batch (a variant is never split across commits), <= limit files."""
    batch: list[Variant] = []
    n = 0
    for v in variants:
        k = len(v.files)
        if batch and n + k > limit:
            yield batch
            batch, n = [], 0
        batch.append(v)
        n += k
    if batch:
        yield batch


# --------------------------------------------------------------------------- local layout


def _local_tree(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_size) for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).as_posix().startswith(".")}


def write_local(dest: Path, files: list[FileSpec], root: Path) -> bool:
    """Make `dest` hold exactly `files` (staged in <root>/.tmp, then renamed into place).
    False when it already did (nothing written)."""
    if dest.is_dir() and _local_tree(dest) == {f.path: (f.sha256, f.size) for f in files}:
        return False
    (root / ".tmp").mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="stage-", dir=root / ".tmp"))
    try:
        for f in files:
            target = stage / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.data is not None:
                target.write_bytes(f.data)
            else:
                shutil.copyfile(f.local, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if dest.exists():
            old = root / ".tmp" / f"old-{dest.name}-{os.getpid()}-{time.time_ns()}"
            os.rename(dest, old)
        os.rename(stage, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return True
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def local_repo_dir(root: Path, repo_id: str, revision: str | None) -> Path:
    return root / (f"{repo_id}@{revision}" if revision else repo_id)


def local_cache_root(publish_cfg: dict) -> Path:
    return Path(publish_cfg.get("dir") or "artifacts/published") / (publish_cfg.get("cache_repo") or "cache")


# --------------------------------------------------------------------------- publish_rows


def _console():
    from pipeline.commands import console

    return console


def _variants(rows: list[dict], jobs: list[dict], publish_cfg: dict) -> list[Variant]:
    by_key = {j["key"]: j for j in jobs}
    out = []
    for row in rows:
        if row.get("status") not in ("passed", "cached"):
            continue  # failed / unverified / skipped: never published
        job = by_key.get(row["key"])
        try:
            if job is None:
                raise PublishError(f"no job for key {row['key'][:12]}")
            entry = Path(row.get("artifact") or "")
            cache = Cache(entry.parent.parent) if row.get("artifact") else None
            manifest = cache.manifest(row["key"]) if cache else None
            if manifest is None or (manifest.get("verification") or {}).get("status", "passed") != "passed":
                raise PublishError(f"no verified cache entry for {row['key'][:12]} at {entry}")
            problem = check_integrity(entry, {"files": {r: manifest["files"][r] for r in _published_files(manifest)}})
            if problem:
                raise PublishError(f"cache entry {row['key'][:12]} failed its integrity check ({problem}); not published")
            repo_id, revision = variant_target(job, publish_cfg)
            v = Variant(row, job, entry, manifest, repo_id, revision, entry_files(entry, manifest), cache_path(job["spec"], job["key"]))
            v.card = model_card(job, manifest, repo_id, revision, publish_cfg.get("cache_repo") if publish_cfg.get("name") == "hub" else None)
            out.append(v)
        except PublishError as e:
            row.update(status="failed-to-publish", error=str(e))
    return out


def _fail_row(row: dict, message: str) -> None:
    row["status"] = "failed-to-publish"
    row["error"] = scrub(message)
    row.setdefault("published", None)


def publish_rows(rows: list[dict], jobs: list[dict], cfg: dict) -> None:
    """Publish every row that passed verification; mutates rows: `published` = {repo,
    revision, commit, ...}, or status `failed-to-publish` with the error (the local cache
    entry stays valid, the exit code becomes non-zero)."""
    pc = cfg["publish"]
    mode = pc.get("name", "none")
    if mode == "none":
        return
    variants = _variants(rows, jobs, pc)
    if not variants:
        return
    if pc.get("dry_run"):
        _dry_run(variants, pc)
    elif mode == "local":
        _publish_local(variants, pc)
    elif mode == "hub":
        _publish_hub(variants, pc)
    else:
        for v in variants:
            _fail_row(v.row, f"publish.name {mode!r} is not one of none, local, hub")


def _dry_run(variants: list[Variant], pc: dict) -> None:
    console = _console()
    where = "hub " + (pc.get("endpoint") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co") if pc["name"] == "hub" else f"folder {pc.get('dir')}"
    cache_repo = pc.get("cache_repo") if pc["name"] == "hub" else str(local_cache_root(pc))
    console.print(f"dry run: would publish {len(variants)} variant(s) to {where} (nothing is pushed)", markup=False)
    for v in variants:
        files = v.repo_files()
        size = sum(f.size for f in files)
        target = f"{v.repo_id}@{v.revision}" if v.revision else v.repo_id
        console.print(f"  would publish {v.job['key'][:12]} -> {target}: {len(files)} files, {size} bytes "
                      f"({', '.join(f.path for f in files)})", markup=False)
        if cache_repo:
            console.print(f"  would publish {v.job['key'][:12]} -> {cache_repo}:{v.cache_dir}/ ({len(v.files)} files)", markup=False)
        v.row["published"] = {"status": "would publish", "repo": v.repo_id, "revision": v.revision, "commit": None,
                              "files": [f.path for f in files], "bytes": size,
                              "cache_repo": cache_repo, "cache_path": v.cache_dir if cache_repo else None}


def _publish_local(variants: list[Variant], pc: dict) -> None:
    root = Path(pc.get("dir") or "artifacts/published")
    cache_root = local_cache_root(pc)
    for v in variants:
        try:
            cache_changed = write_local(cache_root / v.cache_dir, v.files, root)
            dest = local_repo_dir(root, v.repo_id, v.revision)
            changed = write_local(dest, v.repo_files(), root)
            v.row["published"] = {"status": "published" if changed or cache_changed else "unchanged", "repo": v.repo_id,
                                  "revision": v.revision, "commit": None, "path": str(dest),
                                  "cache_repo": str(cache_root), "cache_path": v.cache_dir}
        except OSError as e:
            _fail_row(v.row, f"writing {v.repo_id} under {root} failed: {e}")


def _publish_hub(variants: list[Variant], pc: dict) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        for v in variants:
            _fail_row(v.row, "HF_HUB_OFFLINE is set: publish=hub needs the Hub; unset it, or use publish=local")
        return
    api = hub_api(pc)
    console = _console()
    cache_repo = pc.get("cache_repo")
    cache_commit: dict[str, str | None] = {}
    if cache_repo:
        for batch in _batches(variants):
            files = [f for v in batch for f in v.cache_files()]
            names = ", ".join(f"{v.job['key'][:12]} ({v.repo_id})" for v in batch)
            try:
                res = commit_files(api, cache_repo, files, commit_message=f"Add {len(batch)} compiled entr{'y' if len(batch) == 1 else 'ies'}",
                                   commit_description=f"pipeline: {names}\n\n" + "\n".join(f"- {platform_tag(v.job['spec'])}/{v.job['key']}" for v in batch))
                for v in batch:
                    cache_commit[v.job["key"]] = res.oid
            except PublishError as e:
                for v in batch:
                    _fail_row(v.row, f"shared cache: {e}")
    for v in variants:
        if v.row["status"] == "failed-to-publish":
            continue
        try:
            res = commit_files(api, v.repo_id, v.repo_files(), revision=v.revision, prune=True,
                               commit_message=f"Compiled {v.job['model']['name']} {v.job['backend']} {v.job['cast_type']} "
                                              f"b{v.job['shapes'].get('batch_size')} s{v.job['shapes'].get('sequence_length')} ({v.job['key'][:12]})",
                               commit_description=f"pipeline key {v.job['key']}")
        except PublishError as e:
            _fail_row(v.row, str(e))
            continue
        v.row["published"] = {"status": "published" if res.committed else "unchanged", "repo": v.repo_id, "revision": v.revision,
                              "commit": res.oid, "cache_repo": cache_repo, "cache_path": v.cache_dir if cache_repo else None,
                              "cache_commit": cache_commit.get(v.job["key"]), "endpoint": api.endpoint}
        target = f"{v.repo_id}@{v.revision}" if v.revision else v.repo_id
        console.print(f"published {v.job['key'][:12]} -> {target} (commit {res.oid[:10]})" if res.committed
                      else f"unchanged {v.job['key'][:12]} -> {target} (already at {str(res.oid)[:10]}; no commit)", markup=False)


# --------------------------------------------------------------------------- shared cache reads


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(p and p not in (".", "..") and not p.startswith(".") for p in parts)


class _HubSource:
    def __init__(self, publish_cfg: dict):
        self.api = hub_api(publish_cfg)
        self.repo = publish_cfg["cache_repo"]
        self.name = f"{self.repo} on {self.api.endpoint}"
        self.commit: str | None = None

    def open(self) -> bool:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        missing = (RepositoryNotFoundError, RevisionNotFoundError)
        try:
            self.commit = _call(lambda: _head(self.api, self.repo, None), "reading", self.repo, self.api.endpoint, missing)
        except missing:
            return False
        return True

    def get(self, path: str, dest: Path) -> Path | None:
        """Download `path` (at the pinned commit) under dest; None when it does not exist."""
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

        def dl():
            return self.api.hf_hub_download(self.repo, path, revision=self.commit, local_dir=dest)

        missing = (RemoteEntryNotFoundError, RepositoryNotFoundError)
        try:
            return Path(_call(dl, "downloading from", self.repo, self.api.endpoint, missing))
        except missing:
            return None


class _LocalSource:
    def __init__(self, publish_cfg: dict):
        self.root = local_cache_root(publish_cfg)
        self.name = str(self.root)
        self.commit = None

    def open(self) -> bool:
        return self.root.is_dir()

    def get(self, path: str, dest: Path) -> Path | None:
        src = self.root / path
        if not src.is_file():
            return None
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        return target


def _source(publish_cfg: dict | None):
    pc = publish_cfg or {}
    name = pc.get("name") or ("hub" if pc.get("cache_repo") else "none")  # {"cache_repo": ...} alone means the Hub
    if name == "local":
        return _LocalSource(pc)
    if name == "hub" and pc.get("cache_repo"):
        from huggingface_hub import constants

        return None if constants.HF_HUB_OFFLINE else _HubSource(pc)
    return None


def fetch_from_shared_cache(key: str, spec: dict, cache: Cache, publish_cfg: dict) -> tuple[Path | None, str | None]:
    """After a local miss: take the entry from the shared cache into the local one.

    Returns (entry folder, None) on success; (None, None) when the shared cache has no entry
    for the key (or none is configured); (None, reason) when one was found but not used: a
    file whose sha256 or size differs from its manifest (tampered or truncated: the reason
    names the file), a manifest that does not match the key, or an unreachable Hub."""
    src = _source(publish_cfg)
    if src is None:
        return None, None
    where = cache_path(spec, key)
    try:
        if not src.open():
            return None, None
        with cache.lock(key):
            folder, _ = cache.lookup(key)
            if folder is not None:  # another process fetched or compiled it meanwhile
                return folder, None
            dl = cache.new_tmp(key)
            tmp = cache.new_tmp(key)
            try:
                mpath = src.get(f"{where}/{MANIFEST}", dl)
                if mpath is None:
                    return None, None
                try:
                    manifest = json.loads(mpath.read_text())
                    spec_key = keys.key_of(manifest["spec"])
                except (ValueError, KeyError, TypeError) as e:
                    return None, f"shared cache entry {key[:12]} in {src.name}: {MANIFEST} is unreadable ({type(e).__name__}); not used"
                if manifest.get("key") != key or spec_key != key:
                    return None, f"shared cache entry {key[:12]} in {src.name}: {MANIFEST} does not match the key; not used"
                if (manifest.get("verification") or {}).get("status", "passed") != "passed":
                    return None, f"shared cache entry {key[:12]} in {src.name} is not verified; not used"
                files = manifest.get("files") or {}
                bad = [rel for rel in files if not _safe_rel(rel)]
                if bad:
                    return None, f"shared cache entry {key[:12]} in {src.name}: unsafe path {bad[0]!r} in {MANIFEST}; not used"
                for rel in files:
                    got = src.get(f"{where}/{rel}", dl)
                    if got is None:
                        return None, f"shared cache entry {key[:12]} in {src.name}: {rel}: missing; not used"
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(got, target)
                problem = check_integrity(tmp, manifest)
                if problem is not None:
                    return None, f"shared cache entry {key[:12]} in {src.name} failed its integrity check ({problem}); not used"
                origin = {"source": src.name, "path": where, "commit": src.commit, "created_at": manifest.get("created_at")}
                base = {k: v for k, v in manifest.items() if k not in ("key", "files", "created_at")}
                return cache.commit(key, tmp, dict(base, fetched_from=origin)), None
            finally:
                shutil.rmtree(dl, ignore_errors=True)
                shutil.rmtree(tmp, ignore_errors=True)
    except PublishError as e:
        return None, f"shared cache {src.name} not used: {e}"
    except Exception as e:  # the shared cache is an optimisation: never fail a job over it
        return None, scrub(f"shared cache {src.name} not used: {type(e).__name__}: {e}")[:500]
