"""The shared compiled-model cache: its layout, and the verified fetch of an entry into the
local cache.

Layout, in a Hub repo (``publish.cache_repo``) or under ``publish.dir`` for ``publish=local``:
``<platform-tag>/<key[:2]>/<key>/...`` with the entry's ``manifest.json``. A lookup is "does
``<platform-tag>/<key[:2]>/<key>/manifest.json`` exist": no index file two publishers could
fight over. A fetched entry is checked file by file against its manifest before it is
committed to the local cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from pipeline import keys
from pipeline.cache import MANIFEST, check_integrity, safe_rel
from pipeline.hub import FileSpec, PublishError, _call, _head, hub_api, read_file, scrub
from pipeline.model_entries import offline


def source_config(publish_cfg: dict | None = None) -> dict:
    """Where the shared cache is: the run's publish config, or for the runtime classes the
    environment (PIPELINE_CACHE_REPO, HF_ENDPOINT). Empty when none is configured."""
    if publish_cfg is not None:
        return publish_cfg
    repo = os.environ.get("PIPELINE_CACHE_REPO")
    return {"name": "hub", "cache_repo": repo, "endpoint": os.environ.get("HF_ENDPOINT")} if repo else {}


def clean_name(part: str) -> str:
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
        parts = [
            backend,
            tc.get("target") or options.get("target") or "unknown",
            f"neuronx-cc{tc.get('neuronx-cc', 'absent')}",
        ]
    else:
        plat = tc.get("platform") or {}
        device = options.get("device", "cpu")
        hw = plat.get("gpu_arch") if device == "cuda" and plat.get("gpu_arch") else plat.get("cpu_capability")
        hw = str(hw).split()[0] if hw else "unknown"  # "sm_90 NVIDIA H100" -> "sm_90"
        torch_version = str(tc.get("torch", "unknown")).split("+")[0]
        parts = [backend, device, plat.get("arch") or "unknown", hw, f"torch{torch_version}"]
        if plat.get("isa_flags"):  # built with ISA-specific kernels: only machines with these flags
            parts.append("isa_" + ".".join(plat["isa_flags"]))
    return "-".join(clean_name(p) for p in parts)


def cache_path(spec: dict, key: str) -> str:
    """Folder of an entry in the shared cache repo: ``<platform-tag>/<key[:2]>/<key>``."""
    return f"{platform_tag(spec)}/{key[:2]}/{key}"


def local_cache_root(publish_cfg: dict) -> Path:
    return Path(publish_cfg.get("dir") or "artifacts/published") / (publish_cfg.get("cache_repo") or "cache")


def _safe_rel(rel: str) -> bool:
    """A shared entry's file name: inside the entry and no dot file (those are never published)."""
    return safe_rel(rel) and not any(part.startswith(".") for part in rel.split("/"))


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
            self.commit = _call(
                lambda: _head(self.api, self.repo, None), "reading", self.repo, self.api.endpoint, missing
            )
        except missing:
            return False
        return True

    def platforms(self) -> list[str]:
        """The top-level folders (platform tags), one listing call."""
        from huggingface_hub.hf_api import RepoFolder

        tree = _call(
            lambda: list(self.api.list_repo_tree(self.repo, revision=self.commit)),
            "listing",
            self.repo,
            self.api.endpoint,
        )
        return sorted(f.path for f in tree if isinstance(f, RepoFolder))

    def read(self, path: str) -> bytes | None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            got = self.get(path, Path(tmp))
            return got.read_bytes() if got is not None else None

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

    def platforms(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, path: str) -> bytes | None:
        src = self.root / path
        return src.read_bytes() if src.is_file() else None

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
        return None if offline() else _HubSource(pc)
    return None


INDEX = "index.json"  # <platform-tag>/index.json: every entry under that tag, one small file


def index_row(manifest: dict, size_bytes: int | None = None) -> dict:
    """An entry's line in its platform's index: what `mode=ls` and planners need, no files."""
    spec = manifest["spec"]
    tc = spec.get("toolchain") or {}
    metrics = {}
    for name, m in (manifest.get("metrics") or {}).items():
        if isinstance(m, dict):
            metrics[name] = {k: m[k] for k in ("cosine", "max_abs", "token_agreement") if k in m}
    return {
        "key": manifest["key"],
        "model": (manifest.get("model") or {}).get("name") or spec["model"]["id"],
        "model_id": spec["model"]["id"],
        "revision": spec["model"].get("revision"),
        "task": spec["task"],
        "shapes": spec["shapes"],
        "cast_type": spec["cast_type"],
        "backend": spec["backend"]["name"],
        "platform": platform_tag(spec),
        "toolchain": ", ".join(f"{k} {tc[k]}" for k in ("torch", "transformers", "neuronx-cc") if k in tc),
        "metrics": "; ".join(f"{n} " + " ".join(f"{k} {v:.6g}" for k, v in m.items()) for n, m in metrics.items()),
        "size_bytes": size_bytes
        if size_bytes is not None
        else sum(f["size"] for f in (manifest.get("files") or {}).values()),
        "created_at": manifest.get("created_at"),
        "spec": spec,
    }


def merged_index(old: bytes | None, rows: list[dict]) -> bytes:
    """The index file with `rows` added (a row for a key replaces the old one); deterministic
    bytes, so re-publishing the same entries leaves the file as it was (no commit)."""
    entries = {}
    if old:
        try:
            entries = json.loads(old).get("entries") or {}
        except (ValueError, AttributeError):
            entries = {}  # a broken index is rebuilt from what is published now
    for row in rows:
        entries[row["key"]] = row
    return (json.dumps({"version": 1, "entries": entries}, indent=1, sort_keys=True) + "\n").encode()


def index_update(api, repo: str, rows_by_tag: dict[str, list[dict]]):
    """For hub.commit_files(derived=...): each platform's index at the commit being extended,
    with these rows merged in, committed together with the entries it names."""

    def derive(head: str) -> list[FileSpec]:
        return [FileSpec.of_bytes(f"{tag}/{INDEX}", merged_index(read_file(api, repo, f"{tag}/{INDEX}", head), rows))
                for tag, rows in rows_by_tag.items()]  # fmt: skip

    return derive


def read_index(publish_cfg: dict | None) -> list[dict]:
    """Every row of every platform index of the configured shared cache: one small download per
    platform tag, never a walk over the entries. Empty when none is configured or reachable."""
    src = _source(publish_cfg)
    if src is None:
        return []
    rows = []
    try:
        if not src.open():
            return []
        for tag in src.platforms():
            data = src.read(f"{tag}/{INDEX}")
            if data:
                try:
                    rows += list((json.loads(data).get("entries") or {}).values())
                except (ValueError, AttributeError):
                    continue
    except (PublishError, OSError):
        return rows
    return rows


def describe(publish_cfg: dict | None) -> str | None:
    """Which shared cache a config names (repo or folder), or None."""
    src = _source(publish_cfg)
    return None if src is None else src.name


def untrusted(publish_cfg: dict | None, trusted_repos: list[str]) -> str | None:
    """Why the configured cache repo may not be read (not in shared_cache.trusted_repos), or None."""
    pc = publish_cfg or {}
    repo = pc.get("cache_repo")
    if trusted_repos and pc.get("name", "hub") == "hub" and repo and repo not in trusted_repos:
        return f"shared cache {repo} is not in shared_cache.trusted_repos ({', '.join(trusted_repos)}); not read"
    return None


def download(key: str, spec: dict, dest: Path, publish_cfg: dict | None) -> tuple[dict | None, str | None]:
    """After a local miss: download the key's entry from the shared cache into `dest` (an empty
    temp folder of the local cache) and check every file against the entry's manifest.

    Returns (manifest with `fetched_from`, None) when the files are intact; (None, None) when
    the shared cache has no entry for the key (or none is configured); (None, reason) when one
    was found but is not usable: a file whose sha256 or size differs from its manifest
    (tampered or truncated: the reason names the file), a manifest that does not match the key,
    an unsafe path, or an unreachable Hub. Intact is not trusted: the files prove they are
    what the manifest lists, not who built them, so the caller verifies the artifact before
    committing it (shared_cache.verify)."""
    src = _source(publish_cfg)
    if src is None:
        return None, None
    where = cache_path(spec, key)
    what = f"shared cache entry {key[:12]} in {src.name}"
    dl = dest.parent / f"{dest.name}.download"
    try:
        if not src.open():
            return None, None
        dl.mkdir(parents=True, exist_ok=True)
        mpath = src.get(f"{where}/{MANIFEST}", dl)
        if mpath is None:
            return None, None
        try:
            manifest = json.loads(mpath.read_text())
            spec_key = keys.key_of(manifest["spec"])
        except (ValueError, KeyError, TypeError) as e:
            return None, f"{what}: {MANIFEST} is unreadable ({type(e).__name__}); not used"
        if not isinstance(manifest, dict) or manifest.get("key") != key or spec_key != key:
            return None, f"{what}: {MANIFEST} does not match the key; not used"
        if (manifest.get("verification") or {}).get("status", "passed") != "passed":
            return None, f"{what} is not verified; not used"
        files = manifest.get("files") or {}
        bad = [rel for rel in files if not _safe_rel(rel)]
        if bad:
            return None, f"{what}: unsafe path {bad[0]!r} in {MANIFEST}; not used"
        for rel in files:
            got = src.get(f"{where}/{rel}", dl)
            if got is None:
                return None, f"{what}: {rel}: missing; not used"
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
        problem = check_integrity(dest, manifest)
        if problem is not None:
            return None, f"{what} failed its integrity check ({problem}); not used"
        origin = {"source": src.name, "path": where, "commit": src.commit, "created_at": manifest.get("created_at")}
        base = {k: v for k, v in manifest.items() if k not in ("key", "files", "created_at")}
        return dict(base, fetched_from=origin), None
    except PublishError as e:
        return None, f"shared cache {src.name} not used: {e}"
    except OSError:
        raise  # a full disk or an unwritable cache is this machine's problem, not the shared cache's
    except Exception as e:  # the shared cache is an optimisation: never fail a job over it
        return None, scrub(f"shared cache {src.name} not used: {type(e).__name__}: {e}")[:500]
    finally:
        shutil.rmtree(dl, ignore_errors=True)
