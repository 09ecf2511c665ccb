"""Get the artifact for a job: the local cache, then the shared cache, then a compile.

The one path both the executors and `CompiledModelFor<Task>.from_pretrained(export=True)` take,
so a run and a library call can never disagree about what is good enough to use:

* a stored entry is re-gated: tolerances are not part of the key, so the metrics recorded
  when it was verified are checked against today's gate before it is used;
* a miss in the local cache is looked up in the shared cache (verified on fetch);
* only then is the job compiled and verified, in a fresh worker process.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import shared_cache
from pipeline.cache import Cache
from pipeline.verify import gate
from pipeline.worker import run_worker


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


def find(job: dict, cache: Cache, publish_cfg: dict | None = None) -> Found:
    """Look in the local cache, then in the shared cache (`shared_cache.source_config`)."""
    folder, why = cache.lookup(job["key"])
    notes = [why] if why else []
    if folder is None:
        folder, shared_why = shared_cache.fetch(job["key"], job["spec"], cache, shared_cache.source_config(publish_cfg))
        notes += [shared_why] if shared_why else []
    if folder is None:
        return Found(None, notes=notes)
    metrics = (cache.manifest(job["key"]) or {}).get("metrics", {})
    broken = gate(metrics, job["verify"]["tolerance"])
    return Found(folder, metrics, notes, f"cached entry fails the current gate: {broken}" if broken else None)


def compile_in_worker(job: dict, cache: Cache) -> dict:
    """Compile + verify one job in a fresh worker process; the worker's result dict."""
    with tempfile.TemporaryDirectory(prefix="pipeline-export-") as work:
        return run_worker(
            dict(job, cache_dir=str(cache.root.resolve())), Path(work), job["timeout_s"], env=cache.inductor_env()
        )


def obtain(
    job: dict, cache: Cache, publish_cfg: dict | None = None, compile: Callable[[dict, Cache], dict] = compile_in_worker
) -> tuple[Path, list[str]]:
    """(artifact folder, notes) for a job, compiling it when no cache has it. Raises
    ObtainError when a stored entry fails today's gate or the compile fails."""
    found = find(job, cache, publish_cfg)
    if found.broken:
        raise ObtainError(found.broken)
    if found.folder is not None:
        return found.folder, found.notes
    result = compile(job, cache)
    if result["status"] not in ("passed", "cached"):
        raise ObtainError(result.get("error") or f"worker status {result['status']}")
    return Path(result["artifact"]), found.notes + list(result.get("notes") or [])
