"""Why a miss is rebuilt: the fields that differ from the nearest known build of the same variant.

A variant is what a user means by "this model at this shape and cast on this backend"; its key
changes whenever anything in its spec does (a new model commit, a toolchain upgrade, another
compiler option). For each miss the newest recorded build (entry or failure) of the same
variant is diffed against the new spec, so a plan can say
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


def reason(job: dict, records: list[Record]) -> dict:
    """{"text": one line, "fields": [{path, before, after}], "against": key} for a miss."""
    near = nearest(job, records)
    if near is None:
        return {"text": "new variant", "fields": [], "against": None}
    rows = keys.diff(near.spec, job["spec"])
    parts = [f"{path} {_short(a)} -> {_short(b)}" for path, a, b in rows[:SHOWN]]
    more = f"; and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    what = "failed before" if near.source == "failure" else "built before"
    return {
        "text": f"rebuild ({what} as {near.key[:12]}): " + "; ".join(parts) + more,
        "fields": [{"path": p, "before": a, "after": b} for p, a, b in rows],
        "against": near.key,
    }
