"""gc of everything a cache holds: entries, stored references, Inductor's own cache and failure
records, least recently used first, never anything another process holds locked.

`mode=gc` runs it; every run that wrote to the cache ends with it when the cache is over
`cache.max_size_gb`. Temp dirs of builds are removed only under their key's lock (a long build
is never removed under itself); Inductor's cache is pruned only while no key is locked (no
compile is running).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

from pipeline.cache import LAST_USED, MANIFEST, Cache

KINDS = ("entries", "references", "inductor", "failures")


@dataclass
class Item:
    kind: str
    path: Path
    size: int
    last_used: float
    key: str | None  # the key whose lock guards it


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _newest(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    return max([f.stat().st_mtime for f in path.rglob("*") if f.is_file()] + [path.stat().st_mtime])


def items(cache: Cache) -> list[Item]:
    root = cache.root
    out = []
    for entry in cache.entries():
        marker = entry / LAST_USED
        used = marker.stat().st_mtime if marker.exists() else (entry / MANIFEST).stat().st_mtime
        out.append(Item("entries", entry, _size(entry), used, entry.name))
    for ref in (root / ".refs").glob("*.safetensors"):
        out.append(Item("references", ref, ref.stat().st_size, ref.stat().st_mtime, None))
    for record in (root / ".failures").glob("*.json"):
        out.append(Item("failures", record, record.stat().st_size, record.stat().st_mtime, record.stem))
    inductor = root / ".inductor"
    for top in sorted(inductor.iterdir()) if inductor.is_dir() else []:
        parts = sorted(top.iterdir()) if top.is_dir() else [top]
        out += [Item("inductor", p, _size(p), _newest(p), None) for p in parts]
    return out


def _any_key_locked(cache: Cache) -> bool:
    for lock in (cache.root / ".locks").glob("*.lock"):
        try:
            with cache.lock(lock.stem, timeout=0):
                pass
        except Timeout:
            return True
    return False


def _clear_tmp(cache: Cache, stale_tmp_hours: float, skipped: list[str]) -> int:
    removed = 0
    cutoff = time.time() - stale_tmp_hours * 3600
    for p in sorted((cache.root / ".tmp").glob("*")) if (cache.root / ".tmp").is_dir() else []:
        key = p.name.split("-", 1)[0]
        if len(key) == 64:  # a build dir <key>-<rand>: stale only if nobody holds the key's lock
            if not cache.clear_stale_tmp_locked(key, timeout=0):
                skipped.append(key)
                continue
            removed += 1
        elif p.exists() and p.stat().st_mtime < cutoff:  # discard-* left by a crash
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


def _remove(cache: Cache, item: Item) -> bool:
    """Remove one item under its key's lock (taken without waiting); False when it is held."""
    if item.kind == "entries":
        try:
            with cache.lock(item.key, timeout=0):
                cache.discard(item.path)
            return True
        except Timeout:
            return False
    if item.kind == "failures":
        try:
            with cache.lock(item.key, timeout=0):
                item.path.unlink(missing_ok=True)
            return True
        except Timeout:
            return False
    if item.path.is_dir():
        shutil.rmtree(item.path, ignore_errors=True)
    else:
        item.path.unlink(missing_ok=True)
    return True


def gc(cache: Cache, max_size_bytes: int, stale_tmp_hours: float) -> dict:
    """Remove stale temp dirs, then least-recently-used items of every kind until the cache is
    under the cap. Returns what was removed and kept, per kind."""
    skipped: list[str] = []
    removed_tmp = _clear_tmp(cache, stale_tmp_hours, skipped)
    found = sorted(items(cache), key=lambda it: it.last_used)
    total = sum(it.size for it in found)
    compiling = _any_key_locked(cache)
    removed = {kind: [] for kind in KINDS}
    for item in found:
        if total <= max_size_bytes:
            break
        if item.kind == "inductor" and compiling:
            continue  # a running compile may be reading it
        if not _remove(cache, item):
            skipped.append(item.key)
            continue
        total -= item.size
        removed[item.kind].append(item.key or item.path.name)
    kept = {kind: sum(1 for it in found if it.kind == kind) - len(removed[kind]) for kind in KINDS}
    return {
        "removed": removed,
        "removed_entries": removed["entries"],
        "removed_tmp": removed_tmp,
        "skipped_locked": sorted({k for k in skipped if k}),
        "size_bytes": total,
        "kept": kept,
        "inductor_skipped": compiling,
    }


def describe(result: dict) -> str:
    removed = ", ".join(f"{len(v)} {k}" for k, v in result["removed"].items() if v) or "nothing"
    kept = ", ".join(f"{v} {k}" for k, v in result["kept"].items())
    extra = f"; {len(result['skipped_locked'])} locked keys left alone" if result["skipped_locked"] else ""
    return (f"gc: removed {removed} and {result['removed_tmp']} temp dirs; kept {kept}; "
            f"{result['size_bytes'] / 1e6:.1f} MB{extra}")
