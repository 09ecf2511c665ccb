"""Why a miss is rebuilt: the fields that differ from the nearest known build of the same variant.

A variant is what a user means by "this model at this shape and cast on this backend"; its key
changes whenever anything in its spec does (a new model commit, a toolchain upgrade, another
compiler option). For each miss the nearest recorded build (local entry, failure record, or an
entry of the shared cache's index) of the same variant is diffed against the new spec, so a plan can say
`rebuild: model.revision a1b2c3 -> d4e5f6; toolchain.torch 2.12.0 -> 2.13.0`, or `new variant`.
"""

from __future__ import annotations

from pipeline import keys
from pipeline.history import Record

SHOWN = 4  # fields named in one line; the rest are counted


def _variant(model: str, task: str, shapes: dict, cast_type: str, backend: str) -> tuple:
    return model, task, tuple(sorted(shapes.items())), cast_type, backend


def nearest(job: dict, records: list[Record]) -> Record | None:
    want = _variant(job["model"]["name"], job["task"], job["shapes"], job["cast_type"], job["backend"])
    same = [r for r in records
            if r.key != job["key"] and _variant(r.model, r.task, r.shapes, r.cast_type, r.backend) == want]
    if not same:
        return None
    return min(reversed(same), key=lambda r: len(keys.diff(r.spec, job["spec"])))  # fewest changes, newest on ties


def _short(value) -> str:
    """Hashes and commit shas by their first 12 hex digits; other values whole (capped)."""
    text = str(value).removeprefix("sha256:")
    if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text if len(text) <= 40 else text[:37] + "..."


KIND_TEXT = {"entry": "built before", "failure": "failed before", "shared": "in the shared cache"}


def reason(job: dict, records: list[Record], shared: list[Record] | None = None) -> dict:
    """{"text": one line, "kind", "fields": [{path, before, after}], "against": key} for a miss.
    `kind`: "new" (no build of this variant is known), "entry" / "failure" (the nearest is a local
    entry / failure record), "shared" (the nearest is only in the shared cache: `shared`, its
    index's records), or "shared-hit" (the shared cache has this very key: fetched, not built)."""
    shared = shared or []
    if any(r.key == job["key"] for r in shared):
        return {"text": f"in the shared cache as {job['key'][:12]}: fetched and re-verified, not compiled",
                "kind": "shared-hit", "fields": [], "against": job["key"]}  # fmt: skip
    local = {r.key for r in records}
    near = nearest(job, records + [r for r in shared if r.key not in local])
    if near is None:
        return {"text": "new variant", "kind": "new", "fields": [], "against": None}
    rows = keys.diff(near.spec, job["spec"])
    parts = [f"{path} {_short(a)} -> {_short(b)}" for path, a, b in rows[:SHOWN]]
    more = f"; and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return {
        "text": f"rebuild ({KIND_TEXT[near.source]} as {near.key[:12]}): " + "; ".join(parts) + more,
        "kind": near.source,
        "fields": [{"path": p, "before": a, "after": b} for p, a, b in rows],
        "against": near.key,
    }
