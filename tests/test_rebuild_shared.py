"""Rebuild reasons against the shared cache's index, through the real CLI: a miss whose nearest
known build is only in the shared cache says so (kind `shared`) and names exactly the fields
that differ; a key the shared cache holds is fetched, not rebuilt; a local build is preferred
over the same one in the shared cache. The shared cache is the `publish=local` layout a real
run wrote (platform index.json included); `read_index` reads a Hub cache the same way."""

from __future__ import annotations

import json
import shutil

from conftest import REPO, cli_env, run_cli
from hub_fixtures import ONE_JOB, one_entry  # noqa: F401


def _plan(tmp, cache, model, name: str) -> dict:
    env = cli_env(PIPELINE_REPORT_DIR=str(tmp / name))
    proc = run_cli(
        "mode=plan",
        "matrix.models=[{id: " + str(model) + ", task: feature-extraction, name: tiny-bert}]",
        *ONE_JOB[1:],
        f"cache.dir={cache}",
        "publish=local",
        f"publish.dir={tmp / 'pub'}",
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (job,) = json.loads((tmp / name / "latest" / "plan.json").read_text())["jobs"]
    return dict(job, stdout=proc.stdout)


def test_rebuild_reason_names_the_shared_cache_when_the_nearest_build_is_only_there(one_entry, tmp_path):
    local = tmp_path / "local-cache"
    shutil.copytree(one_entry["cache"], local, ignore=shutil.ignore_patterns(".locks", ".tmp"))
    env = cli_env(PIPELINE_REPORT_DIR=str(tmp_path / "runs"))
    proc = run_cli(*ONE_JOB, f"cache.dir={local}", "publish=local", f"publish.dir={tmp_path / 'pub'}", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list((tmp_path / "pub" / "cache").glob("*/index.json")), "the publish wrote no shared index"
    built_key = one_entry["jobs"][0]["key"]

    model = tmp_path / "m" / "tiny-bert"  # same folder name: same model id, same content -> same key
    shutil.copytree(REPO / "artifacts" / "models" / "tiny-bert", model)
    empty = tmp_path / "empty-cache"
    job = _plan(tmp_path, empty, model, "same")
    assert job["key"] == built_key and job["status"] == "miss"
    assert job["rebuild"]["kind"] == "shared-hit" and "fetched" in job["rebuild"]["text"], job["rebuild"]

    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(dict(config, layer_norm_eps=1e-6)))
    job = _plan(tmp_path, empty, model, "changed")
    assert job["key"] != built_key and job["status"] == "miss"
    assert job["rebuild"]["kind"] == "shared" and job["rebuild"]["against"] == built_key, job["rebuild"]
    assert [f["path"] for f in job["rebuild"]["fields"]] == ["model.revision"]
    assert job["rebuild"]["text"].startswith(f"rebuild (in the shared cache as {built_key[:12]}): model.revision ")
    assert "rebuild (shared)" in job["stdout"] and job["rebuild"]["text"] in job["stdout"]

    job = _plan(tmp_path, local, model, "local")  # the same build is also in the local cache: that one is named
    assert job["rebuild"]["kind"] == "entry" and job["rebuild"]["against"] == built_key, job["rebuild"]
    assert job["rebuild"]["text"].startswith("rebuild (built before as ")
