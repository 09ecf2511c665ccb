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
from pipeline.cache import MANIFEST, Cache, check_integrity
from pipeline.hub import PublishError, _call, _head, hub_api, scrub
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
    return "-".join(clean_name(p) for p in parts)


def cache_path(spec: dict, key: str) -> str:
    """Folder of an entry in the shared cache repo: ``<platform-tag>/<key[:2]>/<key>``."""
    return f"{platform_tag(spec)}/{key[:2]}/{key}"


def local_cache_root(publish_cfg: dict) -> Path:
    return Path(publish_cfg.get("dir") or "artifacts/published") / (publish_cfg.get("cache_repo") or "cache")


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and all(p and p not in (".", "..") and not p.startswith(".") for p in parts)
    )


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
        return None if offline() else _HubSource(pc)
    return None


def fetch(key: str, spec: dict, cache: Cache, publish_cfg: dict) -> tuple[Path | None, str | None]:
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
                    return (
                        None,
                        f"shared cache entry {key[:12]} in {src.name}: {MANIFEST} is unreadable "
                        f"({type(e).__name__}); not used",
                    )
                if manifest.get("key") != key or spec_key != key:
                    return (
                        None,
                        f"shared cache entry {key[:12]} in {src.name}: {MANIFEST} does not match the key; not used",
                    )
                if (manifest.get("verification") or {}).get("status", "passed") != "passed":
                    return None, f"shared cache entry {key[:12]} in {src.name} is not verified; not used"
                files = manifest.get("files") or {}
                bad = [rel for rel in files if not _safe_rel(rel)]
                if bad:
                    return (
                        None,
                        f"shared cache entry {key[:12]} in {src.name}: unsafe path {bad[0]!r} in {MANIFEST}; not used",
                    )
                for rel in files:
                    got = src.get(f"{where}/{rel}", dl)
                    if got is None:
                        return None, f"shared cache entry {key[:12]} in {src.name}: {rel}: missing; not used"
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(got, target)
                problem = check_integrity(tmp, manifest)
                if problem is not None:
                    return (
                        None,
                        f"shared cache entry {key[:12]} in {src.name} failed its integrity check ({problem}); not used",
                    )
                origin = {
                    "source": src.name,
                    "path": where,
                    "commit": src.commit,
                    "created_at": manifest.get("created_at"),
                }
                base = {k: v for k, v in manifest.items() if k not in ("key", "files", "created_at")}
                return cache.commit(key, tmp, dict(base, fetched_from=origin)), None
            finally:
                shutil.rmtree(dl, ignore_errors=True)
                shutil.rmtree(tmp, ignore_errors=True)
    except PublishError as e:
        return None, f"shared cache {src.name} not used: {e}"
    except Exception as e:  # the shared cache is an optimisation: never fail a job over it
        return None, scrub(f"shared cache {src.name} not used: {type(e).__name__}: {e}")[:500]
