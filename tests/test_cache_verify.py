"""Cache store and gate, without compiles: atomic entries, integrity, failures, gc; metrics."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from pipeline.cache import Cache, check_integrity
from pipeline.gc import gc
from pipeline.verify import gate, output_metrics

KEY = "ab" + "0" * 62


def _entry(cache: Cache, key: str, payload: bytes = b"weights") -> None:
    tmp = cache.new_tmp(key)
    (tmp / "model.pt2").write_bytes(payload)
    (tmp / "config.json").write_text("{}")
    cache.commit(key, tmp, {"spec": {"x": 1}, "metrics": {}})


def test_commit_is_atomic_and_lists_every_file(tmp_path):
    cache = Cache(tmp_path)
    assert cache.status(KEY) == "miss"
    _entry(cache, KEY)
    folder, why = cache.lookup(KEY)
    assert why is None and folder == tmp_path / "ab" / KEY
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt2", "config.json"}
    assert manifest["files"]["model.pt2"]["size"] == len(b"weights")
    assert not list((tmp_path / ".tmp").iterdir())  # the temp dir was renamed, not copied
    assert cache.status(KEY) == "hit"


def test_tampered_file_is_detected_and_entry_discarded(tmp_path):
    cache = Cache(tmp_path)
    _entry(cache, KEY)
    (tmp_path / "ab" / KEY / "model.pt2").write_bytes(b"weightz")  # same size, other bytes
    folder, why = cache.lookup(KEY)
    assert folder is None and "model.pt2: sha256 mismatch" in why
    assert (tmp_path / "ab" / KEY).exists(), "only a holder of the key's lock may remove an entry"
    with cache.lock(KEY):
        folder, why = cache.lookup(KEY, locked=True)
    assert folder is None and "model.pt2: sha256 mismatch" in why
    assert not (tmp_path / "ab" / KEY).exists()
    assert cache.status(KEY) == "miss"


def test_missing_file_is_an_integrity_failure(tmp_path):
    cache = Cache(tmp_path)
    _entry(cache, KEY)
    folder = tmp_path / "ab" / KEY
    (folder / "config.json").unlink()
    assert check_integrity(folder, json.loads((folder / "manifest.json").read_text())) == "config.json: missing"


def test_failure_record_roundtrip_and_cleared_by_success(tmp_path):
    cache = Cache(tmp_path)
    cache.record_failure(KEY, {"error": "verification failed: x"})
    assert cache.status(KEY) == "failed-before"
    assert cache.failure(KEY)["error"] == "verification failed: x"
    _entry(cache, KEY)
    assert cache.failure(KEY) is None and cache.status(KEY) == "hit"


def test_gc_prunes_least_recently_used_and_stale_tmp(tmp_path):
    cache = Cache(tmp_path)
    keys = [f"{i:02x}" + "1" * 62 for i in range(3)]
    for k in keys:
        _entry(cache, k, b"x" * 1000)
    old = time.time() - 3600
    for age, k in enumerate(keys):  # keys[0] least recently used
        marker = tmp_path / k[:2] / k / ".last_used"
        marker.touch()
        os.utime(marker, (old + age, old + age))
    cache.lookup(keys[0])  # use it now: it becomes the most recent
    dead = cache.new_tmp("dead" + "0" * 60)  # a build dir whose builder is gone (its lock is free)
    building = cache.new_tmp("b1dd" + "0" * 60)  # a build dir whose builder holds its key's lock
    leftover = Path(tmp_path / ".tmp" / "discard-x-1-2")
    leftover.mkdir()
    os.utime(leftover, (old - 7 * 3600, old - 7 * 3600))
    per_entry = sum(f.stat().st_size for f in (tmp_path / keys[0][:2] / keys[0]).rglob("*") if f.is_file())
    with cache.lock("b1dd" + "0" * 60):
        result = gc(cache, max_size_bytes=per_entry + 10, stale_tmp_hours=6)
    assert result["removed_entries"] == [keys[1], keys[2]]
    assert cache.status(keys[0]) == "hit"
    assert not dead.exists() and not leftover.exists() and building.exists()
    assert "b1dd" + "0" * 60 in result["skipped_locked"]


def test_gc_never_touches_a_locked_entry(tmp_path):
    cache = Cache(tmp_path)
    keys = [f"{i:02x}" + "2" * 62 for i in range(2)]
    for k in keys:
        _entry(cache, k, b"x" * 1000)
    with cache.lock(keys[0]):  # another process is using it
        result = gc(cache, max_size_bytes=0, stale_tmp_hours=6)
    assert result["removed_entries"] == [keys[1]] and result["skipped_locked"] == [keys[0]]
    assert cache.status(keys[0]) == "hit"


def test_lock_is_exclusive_across_holders(tmp_path):
    from filelock import Timeout

    cache = Cache(tmp_path)
    with cache.lock(KEY):
        with pytest.raises(Timeout):
            cache.lock(KEY, timeout=0.1).acquire()


def test_metrics_ignore_pad_positions_and_gate_names_the_metric():
    ref = torch.randn(2, 4, 8)
    got = ref.clone()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got[1, 3] += 100.0  # a pad position: must not count
    m = output_metrics(ref, got, mask, atol=1e-4, rtol=1e-4)
    assert m["max_abs"] == 0.0 and m["allclose_violations"] == 0
    assert gate({"last_hidden_state": m}, {"atol": 1e-4, "rtol": 1e-4}) is None
    got[0, 0] += 0.5
    m = output_metrics(ref, got, mask, atol=1e-4, rtol=1e-4)
    assert "last_hidden_state: max_abs 0.5 exceeds atol" in gate({"last_hidden_state": m}, {"atol": 1e-4, "rtol": 1e-4})
    assert gate({"last_hidden_state": m}, {"min_cosine": 1.01}).startswith("last_hidden_state: cosine")


def test_argmax_agreement_and_relative_error_gate():
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    got = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.1, 2.0]])
    m = output_metrics(ref, got, argmax=True)
    assert m["argmax_agreement"] == 0.5
    assert (
        gate({"logits": m}, {"min_argmax_agreement": 1.0}) == "logits: argmax_agreement 0.5 < min_argmax_agreement 1.0"
    )
    assert gate({"logits": m}, {"max_rel_error": 1e-3}).startswith("logits: rel_error")
    assert gate({"logits": output_metrics(ref, got[:, :2])}, {}).startswith("logits: shape")
