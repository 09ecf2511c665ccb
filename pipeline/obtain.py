"""Get the artifact for a job: the local cache, then the shared cache, then a compile.

The one path both the executors and `CompiledModelFor<Task>.from_pretrained(export=True)` take,
so a run and a library call can never disagree about what is good enough to use:

* a stored entry is re-gated: tolerances are not part of the key, so the metrics recorded
  when it was verified are checked against today's gate before it is used;
* on a miss, a fresh worker process takes the entry from the shared cache and verifies it
  against the CPU fp32 reference before committing it (`shared_cache.verify`), or compiles
  and verifies the job itself.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import shared_cache
from pipeline.cache import Cache
from pipeline.executors.processes import run_worker
from pipeline.verify import gate


class ObtainError(RuntimeError):
    """No usable artifact: a stored one fails today's gate, or the compile failed."""


@dataclass
class Found:
    """What the caches hold for a job. `folder` is None on a miss; `broken` is today's gate's
    verdict on a stored entry (None when it passes); `notes` say what was tried and skipped."""

    folder: Path | None
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    broken: str | None = None


def find(job: dict, cache: Cache) -> Found:
    """Look in the local cache; a broken entry is discarded (under its key's lock) and noted."""
    folder, why = cache.lookup(job["key"])
    notes = [why] if why else []
    if folder is None:
        return Found(None, notes=notes)
    metrics = (cache.manifest(job["key"]) or {}).get("metrics", {})
    broken = gate(metrics, job["verify"]["tolerance"])
    return Found(folder, metrics, notes, f"cached entry fails the current gate: {broken}" if broken else None)


def worker_payload(
    job: dict,
    cache: Cache,
    publish_cfg: dict | None = None,
    shared_cfg: dict | None = None,
    memory_limit_gb: float | None = None,
) -> dict:
    """What a worker process needs besides the job: where the caches are and how far to trust
    the shared one (`shared_cfg`: the run's shared_cache section; default: verify everything)."""
    shared = dict(shared_cfg or {"verify": True, "trusted_repos": []})
    shared["source"] = shared_cache.source_config(publish_cfg) or None
    return dict(job, cache_dir=str(cache.root.resolve()), shared_cache=shared, memory_limit_gb=memory_limit_gb)


def compile_in_worker(job: dict, cache: Cache) -> dict:
    """Fetch-and-verify or compile-and-verify one job in a fresh worker process; its result."""
    with tempfile.TemporaryDirectory(prefix="pipeline-export-") as work:
        result, _ = run_worker(worker_payload(job, cache), Path(work), job["timeout_s"], env=cache.inductor_env())
        return result


def obtain(
    job: dict, cache: Cache, compile: Callable[[dict, Cache], dict] = compile_in_worker
) -> tuple[Path, list[str]]:
    """(artifact folder, notes) for a job, fetching or compiling it when the local cache has
    none. Raises ObtainError when a stored entry fails today's gate or the compile fails."""
    found = find(job, cache)
    if found.broken:
        raise ObtainError(found.broken)
    if found.folder is not None:
        return found.folder, found.notes
    result = compile(job, cache)
    if result["status"] not in ("passed", "cached", "fetched"):
        raise ObtainError(result.get("error") or f"worker status {result['status']}")
    return Path(result["artifact"]), found.notes + list(result.get("notes") or [])
