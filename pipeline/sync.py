"""mode=sync: push the local cache's verified entries to the shared cache repo, outside a run.

What a run publishes as it goes, sync publishes afterwards (a cache filled offline, on a
machine without a token, or by `from_pretrained(export=True)`). Only entries that pass today's
gate, verified on this machine and intact on disk are pushed; failure records, entries fetched
but not re-verified here (`shared_cache.verify=false`) and entries failing their integrity check
never are. The push is the publisher's (`publish.variants` + `publish.push_cache`): whole
entries per atomic commit, the platform indexes in the same commit, nothing sent twice, so a
second sync makes no commit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import publish
from pipeline.cache import Cache
from pipeline.hub import PublishError, hub_api
from pipeline.model_entries import offline
from pipeline.shared_cache import cache_path
from pipeline.verify import gate


class SyncError(Exception):
    """mode=sync cannot start (no cache repo configured, offline): exit 2."""


@dataclass
class SyncResult:
    rows: list[dict] = field(default_factory=list)  # {key, model, status, error?, commit?}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why it is not pushed)

    @property
    def ok(self) -> bool:
        return all(r["status"] != "failed-to-publish" for r in self.rows)


def _job(key: str, manifest: dict) -> dict:
    """The publisher's view of a job, from what the entry's manifest recorded."""
    spec = manifest["spec"]
    model = dict(manifest.get("model") or {})
    model.setdefault("name", str(spec["model"]["id"]).removeprefix("local:"))
    return {"key": key, "spec": spec, "model": model, "task": spec["task"], "shapes": spec["shapes"],
            "cast_type": spec["cast_type"], "backend": spec["backend"]["name"]}  # fmt: skip


def candidates(cache: Cache, tolerances: dict) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """(rows, jobs) of the entries sync may push, and (key, why not) for the others."""
    rows, jobs, skipped = [], [], []
    for folder in sorted(cache.entries()):
        key, manifest = folder.name, cache.manifest(folder.name)
        verification = (manifest or {}).get("verification") or {}
        if not manifest or "spec" not in manifest:
            skipped.append((key, "unreadable manifest"))
        elif verification.get("status", "passed") != "passed":
            skipped.append((key, f"verification {verification.get('status')}"))
        elif verification.get("local") == "skipped":
            skipped.append((key, "fetched and not re-verified here (shared_cache.verify=false)"))
        elif why := gate(manifest.get("metrics") or {}, _tolerance(tolerances, manifest["spec"]["cast_type"])):
            skipped.append((key, f"fails the current gate: {why}"))
        else:
            rows.append({"key": key, "status": "passed", "artifact": str(folder)})
            jobs.append(_job(key, manifest))
    return rows, jobs, skipped


def _tolerance(tolerances: dict, cast_type: str) -> dict:
    return {k: v for k, v in (tolerances.get(cast_type) or {}).items() if v is not None}


def sync(cfg: dict) -> SyncResult:
    """Push every verified local entry to publish.cache_repo (publish.dry_run: list them)."""
    pc = cfg["publish"]
    if not pc.get("cache_repo"):
        raise SyncError("mode=sync needs publish.cache_repo=ORG/NAME (the shared cache repo to push to)")
    bad = [p for p in publish.check_templates(dict(pc, name="hub")) if p.startswith("publish.cache_repo")]
    if bad:
        raise SyncError(bad[0])
    if pc.get("name") != "hub":
        raise SyncError(f"mode=sync pushes to a Hub cache repo: set publish=hub (publish.name is {pc.get('name')!r})")
    rows, jobs, skipped = candidates(Cache(cfg["cache"]["dir"]), cfg["verify"]["tolerances"])
    result = SyncResult(rows, skipped)
    for r, job in zip(rows, jobs):
        r.update(model=job["model"]["name"], cache_path=cache_path(job["spec"], r["key"]))
    if not rows:
        return result
    if offline() and not pc.get("dry_run"):
        raise SyncError("HF_HUB_OFFLINE is set: mode=sync needs the Hub")
    scratch: list[Path] = []
    try:
        todo = publish.variants(rows, jobs, pc, scratch, repos=False)
        if pc.get("dry_run"):
            for v in todo:
                v.row["status"] = "would push"
            return result
        pushed = publish.push_cache(todo, hub_api(pc), pc)
        for v in todo:
            if v.job["key"] in pushed:
                res = pushed[v.job["key"]]
                v.row.update(status="pushed" if res.committed else "unchanged", commit=res.oid)
    except PublishError as e:
        for r in rows:
            if r["status"] == "passed":
                r.update(status="failed-to-publish", error=str(e))
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
    return result
