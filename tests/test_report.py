"""pipeline.report: junit.xml stays well-formed whatever the errors contain; files are written atomically."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from pipeline import report

CFG = {"backend": {"name": "inductor"}}


def row(n: int, status: str = "passed", error: str | None = None, **extra) -> dict:
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
        "timings": {"wall_s": 0.5},
        **extra,
    }


def test_junit_with_control_and_ansi_characters_parses_and_keeps_the_text(tmp_path):
    nasty = "\x1b[31mboom\x1b[0m\x00 at step \x07\x0b3 \x1b]0;title\x07<&>\"' \ud800 tail\nsecond line"
    rows = [row(1, "failed", nasty), row(2, "skipped", "\x1b[1mskipped\x1b[0m\x1f because"), row(3)]
    report.write_reports(tmp_path, "run-1", CFG, rows)

    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase/failure")
    for text in (failure.get("message"), failure.text):
        assert "\x1b" not in text and "[31m" not in text and "title" not in text
        assert text.startswith("boom\\x00 at step \\x07\\x0b3 <&>\"' \\ud800 tail")
        assert "second line" in text
    skipped = suite.find("testcase/skipped")
    assert skipped.get("message") == "skipped\\x1f because"

    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "\x1b" not in md and "\x00" not in md and "boom\\x00 at step" in md
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["jobs"][0]["error"] == nasty


def test_xml_safe_keeps_allowed_characters():
    text = "tab\tnl\ncr\r é ✓ 😀 \ue000"
    assert report.xml_safe(text) == text
    assert report.xml_safe("\x1b[1;32mgreen\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "green link"
    assert report.xml_safe("a\ufffeb\uffffc") == "a\\ufffeb\\uffffc"


def test_interrupted_counts_as_failure_and_not_ok(tmp_path):
    rows = [row(1), row(2, "interrupted"), row(3, "cached"), row(4, "skipped")]
    out = report.write_reports(tmp_path, "run-2", CFG, rows)
    assert out["summary"] == {"jobs": 4, "passed": 1, "interrupted": 1, "cached": 1, "skipped": 1, "ok": False}
    assert "4 jobs: 1 passed, 1 cached, 1 interrupted, 1 skipped" in (tmp_path / "report.md").read_text()
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "1"
    assert suite.find("testcase/failure").get("message") == "the run was stopped while this job ran"


def test_write_reports_returns_the_report_it_wrote(tmp_path):
    rows = [row(1), row(2, "failed", "oops")]
    out = report.write_reports(tmp_path, "run-3", CFG, rows)
    assert set(out) == {"run_id", "config", "environment", "jobs", "summary"}
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(out, default=str))
    assert out["summary"] == {"jobs": 2, "passed": 1, "failed": 1, "ok": False}
    assert sorted(os.listdir(tmp_path)) == ["junit.xml", "report.json", "report.md"]


def test_report_files_are_replaced_atomically_without_leftovers(tmp_path):
    first = {"run_id": "r", "config": {}, "environment": None, "jobs": [row(1)], "summary": report.summary([row(1)])}
    report.write_report_files(tmp_path, first)
    inode = (tmp_path / "report.json").stat().st_ino
    second = dict(first, run_id="r2")
    report.write_report_files(tmp_path, second)
    assert json.loads((tmp_path / "report.json").read_text())["run_id"] == "r2"
    assert (tmp_path / "report.json").stat().st_ino != inode  # a new file renamed over, not rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["junit.xml", "report.json", "report.md"]


def test_failed_write_keeps_the_old_report_and_leaves_no_temp_file(tmp_path, monkeypatch):
    good = {"run_id": "good", "config": {}, "environment": None, "jobs": [], "summary": report.summary([])}
    report.write_report_files(tmp_path, good)
    before = (tmp_path / "report.json").read_text()

    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "fdopen", lambda *a, **k: DiskFull(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        report.write_report_files(tmp_path, dict(good, run_id="bad", jobs=[row(1)]))
    assert (tmp_path / "report.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["junit.xml", "report.json", "report.md"]
