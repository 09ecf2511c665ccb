"""What the cache remembers about past builds: each entry's and each failure's spec and timings.

Read by the planner to estimate what a plan will cost (`pipeline.estimate`) and to say why a
miss is rebuilt (`pipeline.rebuild`). Fetched entries are left out of timings: a download is
not what a compile costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import MANIFEST, Cache
from pipeline.shared_cache import read_index, untrusted

TIMING_PARTS = ("load_s", "reference_s", "compile_s", "verify_s")


@dataclass
class Record:
    key: str
    model: str
    backend: str
    task: str
    cast_type: str
    shapes: dict
    params: int | None
    seconds: float | None  # compile + verify, None when not recorded (or fetched)
    spec: dict
    when: str  # created_at / failed_at, ISO
    source: str  # "entry" | "failure" | "shared" (a row of the shared cache's index)


def seconds_of(timings: dict) -> float | None:
    if timings.get("total_s"):
        return float(timings["total_s"])
    parts = [timings[k] for k in TIMING_PARTS if isinstance(timings.get(k), (int, float))]
    return float(sum(parts)) if parts else None


def tokens_of(shapes: dict) -> int:
    return max(1, int(shapes.get("batch_size") or 1) * int(shapes.get("sequence_length") or 1))


def _record(path: Path, source: str) -> Record | None:
    """One manifest or failure record as history; None when it is unreadable (no history)."""
    try:
        data = json.loads(Path(path).read_text())
        spec = data["spec"]
        model = data.get("model") or {}
        return Record(
            key=data.get("key") or (Path(path).parent.name if source == "entry" else Path(path).stem),
            model=model.get("name") or spec["model"]["id"],
            backend=spec["backend"]["name"],
            task=spec["task"],
            cast_type=spec["cast_type"],
            shapes=spec["shapes"],
            params=model.get("params"),
            seconds=None if data.get("fetched_from") else seconds_of(data.get("timings") or {}),
            spec=spec,
            when=str(data.get("created_at") or data.get("failed_at") or ""),
            source=source,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def entry_record(cache: Cache, key: str) -> Record | None:
    """One entry's record, without reading the others (a hit needs only its own)."""
    return _record(cache.entry_dir(key) / MANIFEST, "entry")


def history(cache: Cache) -> list[Record]:
    """Every entry and failure record of the cache, oldest first."""
    sources = [(p, "entry") for p in cache.root.glob(f"??/*/{MANIFEST}")]
    sources += [(p, "failure") for p in (cache.root / ".failures").glob("*.json")]
    records = [r for path, source in sources if (r := _record(path, source)) is not None]
    return sorted(records, key=lambda r: r.when)


def shared_history(publish_cfg: dict | None, trusted_repos: list[str] | None = None) -> list[Record]:
    """The shared cache's entries, from its platform indexes (one small download per platform,
    `shared_cache.read_index`), as records without timings: what a plan's rebuild reasons look at
    beside the local cache. Empty when no shared cache is configured, reachable or trusted."""
    if untrusted(publish_cfg, trusted_repos or []):
        return []
    out = []
    for row in read_index(publish_cfg):
        try:
            spec = row["spec"]
            out.append(Record(key=row["key"], model=row.get("model") or spec["model"]["id"],
                              backend=spec["backend"]["name"], task=spec["task"], cast_type=spec["cast_type"],
                              shapes=spec["shapes"], params=None, seconds=None, spec=spec,
                              when=str(row.get("created_at") or ""), source="shared"))  # fmt: skip
        except (KeyError, TypeError, AttributeError):
            continue  # a malformed row names nothing usable
    return sorted(out, key=lambda r: r.when)
