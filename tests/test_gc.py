"""gc of everything on a real cache (a copy of the smoke run's): entries, references, Inductor's
cache and failure records under one cap, least recently used first, locked entries untouched,
and a later plan rebuilds exactly what gc removed."""

from __future__ import annotations

import json
import os
import shutil

from conftest import INDUCTOR_CACHE, run_cli

from pipeline.cache import Cache
from pipeline.gc import KINDS, gc, items


def _size(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_gc_caps_every_part_of_the_cache_and_a_rerun_rebuilds_only_what_it_removed(smoke, tmp_path):
    root = tmp_path / "cache"
    shutil.copytree(smoke["cache"], root, ignore=shutil.ignore_patterns("*.lock"))
    # The tests point every compile at one shared Inductor cache (conftest.INDUCTOR_CACHE), so the
    # smoke cache has none of its own: give the copy a part of the real one, as a run would have.
    small = [p for p in sorted(INDUCTOR_CACHE.iterdir()) if p.is_dir() and _size(p) < 5_000_000]
    parts = small[:3]
    assert parts, f"no Inductor cache in {INDUCTOR_CACHE}"
    for part in parts:
        shutil.copytree(part, root / ".inductor" / part.name, symlinks=True)
    cache = Cache(root)
    cache.record_failure("f" * 64, {"error": "an old failure", "spec": {}})
    before = {kind: sum(it.size for it in items(cache) if it.kind == kind) for kind in KINDS}
    assert all(before[k] > 0 for k in KINDS), before
    total = sum(before.values())
    entries = sorted(cache.entries(), key=lambda e: e.name)
    held = entries[0].name  # the least recently used one might be the first removed: hold it
    (entries[0] / ".last_used").touch()
    os.utime(entries[0] / ".last_used", (0, 0))
    cap = total // 2
    with cache.lock(held):
        result = gc(cache, cap, stale_tmp_hours=6)
    after = sum(it.size for it in items(cache))
    assert after <= cap, (after, cap, result)
    assert held in result["skipped_locked"] and (entries[0] / "manifest.json").is_file()
    removed = set(result["removed_entries"])
    assert removed and removed.isdisjoint({held})

    env = dict(smoke["env"], PIPELINE_CACHE_DIR=str(root), PIPELINE_REPORT_DIR=str(tmp_path / "runs"))
    proc = run_cli("+sweep=smoke", "mode=plan", env=env)
    assert proc.returncode == 0, proc.stderr
    planned = json.loads((tmp_path / "runs" / "latest" / "plan.json").read_text())["jobs"]
    misses = {j["key"] for j in planned if j["status"] != "hit"}
    assert misses == removed, (misses ^ removed)
