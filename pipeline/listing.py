"""What is cached: the variants of the local cache (and of the shared cache, through its index),
for `mode=ls [+model=NAME]`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.cache import Cache
from pipeline.history import history
from pipeline.shared_cache import describe, platform_tag, read_index


@dataclass
class Variant:
    where: str  # "local" or the shared cache's name
    key: str
    model: str
    task: str
    shapes: dict
    cast_type: str
    backend: str
    platform: str
    toolchain: str
    metrics: str
    size_bytes: int | None
    created_at: str


def _brief(metrics: dict) -> str:
    parts = []
    for name, m in (metrics or {}).items():
        if not isinstance(m, dict):
            continue
        if "cosine" in m:
            parts.append(f"{name} cos {m['cosine']:.6f}")
        elif "token_agreement" in m:
            parts.append(f"{name} tokens {m['token_agreement']:.2f}")
    return "; ".join(parts)


def _toolchain(spec: dict) -> str:
    tc = spec.get("toolchain") or {}
    return ", ".join(f"{k} {tc[k]}" for k in ("torch", "transformers", "neuronx-cc") if k in tc)


def local_variants(cache: Cache, model: str | None = None) -> list[Variant]:
    out = []
    for r in history(cache):
        if r.source != "entry" or (model and model not in (r.model, r.spec["model"]["id"])):
            continue
        folder = cache.entry_dir(r.key)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else None
        manifest = cache.manifest(r.key) or {}
        out.append(
            Variant(
                "local",
                r.key,
                r.model,
                r.task,
                r.shapes,
                r.cast_type,
                r.backend,
                platform_tag(r.spec),
                _toolchain(r.spec),
                _brief(manifest.get("metrics") or {}),
                size,
                r.when,
            )
        )
    return out


def age(created_at: str) -> str:
    try:
        then = time.mktime(time.strptime(created_at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    except (ValueError, OverflowError):
        return "?"
    s = max(0.0, time.time() - then)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit}"
    return f"{s:.0f} s"


def shared_variants(publish_cfg: dict, model: str | None = None) -> list[Variant]:
    """The shared cache's variants from its index files (`shared_cache.read_index`); none when
    no shared cache is configured or it has no index."""
    out = []
    for row in read_index(publish_cfg):
        if model and model not in (row.get("model"), row.get("model_id")):
            continue
        out.append(
            Variant(
                describe(publish_cfg) or "shared",
                row["key"],
                row.get("model", "?"),
                row.get("task", "?"),
                row.get("shapes") or {},
                row.get("cast_type", "?"),
                row.get("backend", "?"),
                row.get("platform", "?"),
                row.get("toolchain", ""),
                row.get("metrics", ""),
                row.get("size_bytes"),
                row.get("created_at", ""),
            )
        )
    return out
