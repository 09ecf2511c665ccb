"""pipeline.merge: CI shards' run folders merged into one report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline import report
from pipeline.merge import MergeError, merge_reports, parse_runs


def row(n: int, status: str = "passed", error: str | None = None) -> dict:
    return {
        "key": f"{n:064x}",
        "model": f"model-{n}",
        "task": "text-classification",
        "shapes": {"batch_size": 1, "sequence_length": 8},
        "cast_type": "fp32",
        "backend": "inductor",
        "status": status,
        "error": error,
        "metrics": {},
        "timings": {"wall_s": 1.0},
    }


def shard_dir(root: Path, name: str, shard: str | None, rows: list[dict]) -> Path:
    """A shard's run folder written by the real report writer."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {"backend": {"name": "inductor"}, "shard": shard, "report": {"dir": str(root)}}
    report.write_reports(d, f"run-{name}", cfg, rows)
    return d


@pytest.fixture
def three_shards(tmp_path) -> list[Path]:
    return [
        shard_dir(tmp_path, "s1", "1/3", [row(1), row(2, "cached")]),
        shard_dir(tmp_path, "s2", "2/3", [row(3), row(4, "failed", "\x1b[31mboom\x1b[0m\x00")]),
        shard_dir(tmp_path, "s3", "3/3", [row(5, "skipped", "n/a")]),
    ]


def test_merge_three_shards_gives_the_union(tmp_path, three_shards):
    out = tmp_path / "merged"
    merged = merge_reports(list(reversed(three_shards)), out)  # given out of order: merged in shard order
    assert [r["key"] for r in merged["jobs"]] == [f"{n:064x}" for n in range(1, 6)]
    assert merged["summary"] == {"jobs": 5, "passed": 2, "cached": 1, "failed": 1, "skipped": 1, "ok": False}
    assert merged["run_id"] == "merged-run-s1+run-s2+run-s3"
    assert [m["run_id"] for m in merged["merged_from"]] == ["run-s1", "run-s2", "run-s3"]
    assert [m["dir"] for m in merged["merged_from"]] == [str(d) for d in three_shards]
    assert [m["shard"] for m in merged["merged_from"]] == ["1/3", "2/3", "3/3"]
    assert merged["config"]["shard"] is None and merged["config"]["backend"] == {"name": "inductor"}

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["summary"] == merged["summary"] and len(on_disk["jobs"]) == 5
    assert sorted(os.listdir(out)) == ["junit.xml", "report.json", "report.md"]
    suite = ET.parse(out / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    assert suite.find("testcase/failure").get("message") == "boom\\x00"
    md = (out / "report.md").read_text()
    assert "merged-run-s1" in md and "5 jobs: 2 passed, 1 cached, 1 failed, 1 skipped" in md and "(shard 2/3)" in md


def test_merge_all_ok_is_ok(tmp_path):
    dirs = [shard_dir(tmp_path, "a", "1/2", [row(1)]), shard_dir(tmp_path, "b", "2/2", [row(2, "cached")])]
    assert merge_reports(dirs, tmp_path / "out")["summary"]["ok"] is True


def test_duplicate_key_names_both_folders(tmp_path):
    a = shard_dir(tmp_path, "a", "1/2", [row(1), row(7)])
    b = shard_dir(tmp_path, "b", "2/2", [row(7)])
    with pytest.raises(MergeError) as e:
        merge_reports([a, b], tmp_path / "out")
    assert str(a) in str(e.value) and str(b) in str(e.value) and f"{7:064x}"[:12] in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_shard_is_named(tmp_path, three_shards):
    with pytest.raises(MergeError, match=r"shard 2/3 missing"):
        merge_reports([three_shards[0], three_shards[2]], tmp_path / "out")


def test_shard_given_twice(tmp_path):
    a = shard_dir(tmp_path, "a", "1/2", [row(1)])
    b = shard_dir(tmp_path, "b", "1/2", [row(2)])
    with pytest.raises(MergeError, match=r"shard 1/2 appears twice") as e:
        merge_reports([a, b], tmp_path / "out")
    assert str(a) in str(e.value) and str(b) in str(e.value)


def test_shards_disagree_about_n(tmp_path):
    a = shard_dir(tmp_path, "a", "1/2", [row(1)])
    b = shard_dir(tmp_path, "b", "2/3", [row(2)])
    with pytest.raises(MergeError, match=r"shard count") as e:
        merge_reports([a, b], tmp_path / "out")
    assert str(a) in str(e.value) and str(b) in str(e.value)


def test_missing_report_json_names_the_folder(tmp_path, three_shards):
    (three_shards[1] / "report.json").unlink()
    with pytest.raises(MergeError, match="no report.json") as e:
        merge_reports(three_shards, tmp_path / "out")
    assert str(three_shards[1]) in str(e.value)


def test_missing_folder_and_unreadable_report_name_the_folder(tmp_path, three_shards):
    gone = tmp_path / "never-downloaded"
    with pytest.raises(MergeError, match="does not exist") as e:
        merge_reports([three_shards[0], gone], tmp_path / "out")
    assert str(gone) in str(e.value)
    (three_shards[2] / "report.json").write_text('{"run_id": "x", "jobs": [')  # truncated
    with pytest.raises(MergeError, match="not valid JSON") as e:
        merge_reports(three_shards, tmp_path / "out")
    assert str(three_shards[2]) in str(e.value)
    (three_shards[2] / "report.json").write_text("[]")
    with pytest.raises(MergeError, match="not a pipeline report") as e:
        merge_reports(three_shards, tmp_path / "out")
    assert str(three_shards[2]) in str(e.value)


def test_unsharded_reports_merge_in_the_given_order(tmp_path):
    a = shard_dir(tmp_path, "a", None, [row(2)])
    b = shard_dir(tmp_path, "b", None, [row(1)])
    merged = merge_reports([a, b], tmp_path / "out")
    assert [r["key"][-1] for r in merged["jobs"]] == ["2", "1"]


def test_bad_inputs(tmp_path, three_shards):
    with pytest.raises(MergeError, match="no run folders"):
        merge_reports([], tmp_path / "out")
    with pytest.raises(MergeError, match="given twice"):
        merge_reports([three_shards[0], three_shards[0]], tmp_path / "out")
    with pytest.raises(MergeError, match="output folder"):
        merge_reports(three_shards, three_shards[0])


def test_parse_runs():
    assert parse_runs("a/b, c ,") == [Path("a/b"), Path("c")]
    assert parse_runs(["a", "b"]) == [Path("a"), Path("b")]
    assert parse_runs(None) == []


def test_merge_does_not_import_torch(tmp_path, three_shards):
    code = (
        "import sys; from pathlib import Path; from pipeline.merge import merge_reports; "
        f"merge_reports([Path(p) for p in {[str(d) for d in three_shards]!r}], Path({str(tmp_path / 'o')!r})); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
