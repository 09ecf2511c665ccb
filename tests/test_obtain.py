"""One way to get an artifact for a job (pipeline.obtain) for the CLI's executor and the runtime
classes: a cached entry whose stored metrics fail today's gate is refused by both."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, latest_report, run_cli

from pipeline.cache import MANIFEST
from pipeline.modeling import CompiledModelForFeatureExtraction


def test_an_entry_failing_todays_gate_is_refused_by_the_run_and_by_from_pretrained(smoke, tmp_path):
    row = next(r for r in smoke["report"]["jobs"] if r["model"] == "tiny-bert" and r["cast_type"] == "fp32"
               and r["shapes"] == {"batch_size": 1, "sequence_length": 16})  # fmt: skip
    cache = tmp_path / "cache"
    entry = cache / row["key"][:2] / row["key"]
    shutil.copytree(smoke["cache"] / row["key"][:2] / row["key"], entry)
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["metrics"]["last_hidden_state"]["allclose_violations"] = 7  # what a looser old gate let pass
    (entry / MANIFEST).write_text(json.dumps(manifest))

    env = dict(smoke["env"], PIPELINE_CACHE_DIR=str(cache), PIPELINE_REPORT_DIR=str(tmp_path / "runs"))
    proc = run_cli("+model=tiny-bert", "matrix.shapes=[{batch_size: 1, sequence_length: 16}]", env=env)
    assert proc.returncode == 1, proc.stdout[-2000:]
    (got,) = latest_report(tmp_path / "runs")["jobs"]
    assert got["key"] == row["key"] and got["status"] == "failed"
    assert got["error"].startswith("cached entry fails the current gate"), got["error"]

    with pytest.raises(RuntimeError, match="cached entry fails the current gate"):
        CompiledModelForFeatureExtraction.from_pretrained(
            str(REPO / "artifacts" / "models" / "tiny-bert"), export=True, batch_size=1, sequence_length=16,
            cache_dir=cache)  # fmt: skip
