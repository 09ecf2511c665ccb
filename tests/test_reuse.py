"""reuse_larger_shapes: a miss served by a verified local entry compiled for a larger shape,
through the real CLI (plan and run) and `from_pretrained(export=True, reuse_larger_shapes=True)`.
One real compile (`one_entry`: tiny-bert b1 s16 fp32) serves every request here: b1 s8 fits in it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, cli_env, latest_report, run_cli
from hub_fixtures import one_entry  # noqa: F401

from pipeline.cache import Cache

MODEL = ["matrix.models=[tiny-bert]", "matrix.cast_types=[fp32]"]


def _shape(b: int, s: int) -> str:
    return f"matrix.shapes=[{{batch_size: {b}, sequence_length: {s}}}]"


@pytest.fixture
def cache(one_entry, tmp_path):
    dest = tmp_path / "cache"
    shutil.copytree(one_entry["cache"], dest, ignore=shutil.ignore_patterns(".locks", ".tmp"))
    return dest


def _plan(cache, runs, *extra):
    proc = run_cli("mode=plan", *MODEL, f"cache.dir={cache}", f"report.dir={runs}", *extra, env=cli_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (job,) = json.loads((runs / "latest" / "plan.json").read_text())["jobs"]
    return job, proc.stdout


def test_run_takes_a_verified_larger_entry_and_says_which(one_entry, cache, tmp_path):
    built = one_entry["jobs"][0]["key"]
    job, _ = _plan(cache, tmp_path / "p0", _shape(1, 8))  # off by default
    assert job["status"] == "miss" and "reused_for" not in job

    runs = tmp_path / "runs"
    proc = run_cli(*MODEL, _shape(1, 8), "reuse_larger_shapes=true", f"cache.dir={cache}", f"report.dir={runs}",
                   "publish=none", env=cli_env(), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"served by {built[:12]} (b1 s16)" in proc.stdout and "b1 s8" in proc.stdout, proc.stdout[-2000:]
    (row,) = latest_report(runs)["jobs"]
    assert row["status"] == "cached" and row["key"] == built, row
    assert row["reused_for"]["key"] == built and row["reused_for"]["requested_shapes"] == {"batch_size": 1,
                                                                                         "sequence_length": 8}
    (planned,) = json.loads((runs / "latest" / "plan.json").read_text())["jobs"]
    assert planned["reused_for"] == row["reused_for"] and planned["reused_for"]["requested_key"] != built
    assert len(list(Cache(cache).entries())) == 1  # nothing compiled

    job, _ = _plan(cache, tmp_path / "p1", _shape(2, 8), "reuse_larger_shapes=true")  # batch 2 > 1: not covered
    assert job["status"] == "miss" and "reused_for" not in job
    manifest = Cache(cache).entry_dir(built) / "manifest.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), verification={"status": "failed"})))
    job, _ = _plan(cache, tmp_path / "p2", _shape(1, 8), "reuse_larger_shapes=true")  # not verified: never taken
    assert job["status"] == "miss" and "reused_for" not in job


def test_reuse_larger_shapes_must_be_a_boolean(tmp_path):
    proc = run_cli("mode=validate", *MODEL, "reuse_larger_shapes=sometimes", f"cache.dir={tmp_path}", env=cli_env())
    assert proc.returncode == 2 and "reuse_larger_shapes" in proc.stderr, proc.stdout + proc.stderr


def test_from_pretrained_reuses_a_larger_entry_and_pads(one_entry, cache, tiny_models, caplog):
    import torch
    import transformers

    from pipeline.modeling import CompiledModelForFeatureExtraction

    built = one_entry["jobs"][0]["key"]
    with caplog.at_level("INFO", logger="pipeline.modeling"):
        model = CompiledModelForFeatureExtraction.from_pretrained(
            str(tiny_models / "tiny-bert"), export=True, batch_size=1, sequence_length=8, cache_dir=cache,
            reuse_larger_shapes=True)  # fmt: skip
    assert model.reused_for["key"] == built and model.shapes == {"batch_size": 1, "sequence_length": 16}
    assert any(built[:12] in r.getMessage() and "served by" in r.getMessage() for r in caplog.records)
    assert len(list(Cache(cache).entries())) == 1  # nothing compiled
    ids = torch.randint(5, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    eager = transformers.AutoModel.from_pretrained(str(REPO / "artifacts" / "models" / "tiny-bert")).eval()
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert got.shape == want.shape == (1, 8, 32)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
