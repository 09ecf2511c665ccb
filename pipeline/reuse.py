"""Compatible reuse (`reuse_larger_shapes=true`): serve a request from a verified local entry
compiled for a larger shape instead of compiling the requested one.

A compiled encoder pads smaller inputs up to its batch and sequence and cuts the outputs back
(`CompiledModelFor<Task>`), so an entry whose batch and sequence are both >= the request answers
it; a decoder's sequence (prompt + generated) may be longer, its batch must be the same.
Everything else in the spec must be equal: model commit or content hash, task, cast type and
auto-cast scope, dynamic batch, backend and options, toolchain (platform included), recipe,
quantization. Only verified entries are taken (verified on this machine and within today's
gate), the smallest that covers the request; the job then names the entry it took
(`reused_for`) and points at its key, so the run loads it as a cache hit.
"""

from __future__ import annotations

from pipeline.cache import Cache
from pipeline.history import Record
from pipeline.tasks import TASKS
from pipeline.verify import gate


def _rest(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "shapes"}


def _covers(shapes: dict, wanted: dict, decoder: bool) -> bool:
    """Every axis at least as large; a decoder's batch exactly (generate() runs the compiled batch)."""
    if set(shapes) != set(wanted) or (decoder and shapes.get("batch_size") != wanted.get("batch_size")):
        return False
    return all(int(shapes[a]) >= int(wanted[a]) for a in wanted)


def _verified(cache: Cache, key: str, tolerance: dict) -> bool:
    manifest = cache.manifest(key) or {}
    verification = manifest.get("verification") or {}
    if verification.get("status", "passed") != "passed" or verification.get("local") == "skipped":
        return False
    return gate(manifest.get("metrics") or {}, tolerance) is None


def covering(job: dict, records: list[Record], cache: Cache) -> Record | None:
    """The smallest verified local entry (fewest tokens, then smallest batch) whose spec equals
    the job's but for shapes at least as large; None when there is none."""
    rest, wanted, decoder = _rest(job["spec"]), job["spec"]["shapes"], TASKS[job["task"]].decoder
    tolerance = job["verify"]["tolerance"]
    found = [r for r in records if r.source == "entry" and r.key != job["key"] and _rest(r.spec) == rest
             and _covers(r.shapes, wanted, decoder) and _verified(cache, r.key, tolerance)]  # fmt: skip
    if not found:
        return None
    return min(found, key=lambda r: (_tokens(r.shapes), int(r.shapes.get("batch_size") or 0), r.key))


def _tokens(shapes: dict) -> int:
    return int(shapes.get("batch_size") or 1) * int(shapes.get("sequence_length") or 1)


def take(job: dict, entry: Record) -> str:
    """Point the job at `entry` (key, spec, shapes), keeping what was asked in `reused_for`;
    returns the line to show."""
    asked = dict(job["spec"]["shapes"])
    job["reused_for"] = {"requested_key": job["key"], "requested_shapes": asked, "key": entry.key,
                         "shapes": dict(entry.shapes)}  # fmt: skip
    job.update(key=entry.key, spec=entry.spec, shapes=dict(entry.shapes))
    job["model"] = dict(job["model"], revision=entry.spec["model"]["revision"])
    return (
        f"reuse_larger_shapes: {job['model']['name']} {job['task']} {job['cast_type']} "
        f"b{asked.get('batch_size')} s{asked.get('sequence_length')} served by "
        f"{entry.key[:12]} (b{entry.shapes.get('batch_size')} s{entry.shapes.get('sequence_length')})"
    )
