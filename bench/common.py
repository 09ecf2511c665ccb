"""What the bench scripts share: the CPU they ran on, and one pipeline run timed end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lscpu() -> tuple[str, str]:
    """(CPU model and count, its flags) as lscpu prints them; every figure is printed with them."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU", ""
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{info.get('Model name', '?').strip()}, {os.cpu_count()} CPUs", info.get("Flags", "").strip()


def run_pipeline(args: list[str], work: Path, env: dict) -> tuple[float, list[dict], str]:
    """`python -m pipeline ARGS` with its cache and reports under `work`: (wall seconds, report
    rows, stdout). Fails unless every job passed (a bench of failures measures nothing)."""
    args = [*args, f"cache.dir={work / 'cache'}", f"report.dir={work / 'runs'}"]
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((work / "runs" / "latest" / "report.json").read_text())["jobs"]
    assert all(r["status"] == "passed" for r in rows), [(r["model"], r["status"], r["error"]) for r in rows]
    return wall, rows, proc.stdout
