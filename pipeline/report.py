"""Run folders and reports: console table, report.json, report.md, junit.xml."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def new_run_dir(root: str) -> Path:
    """<root>/<run-id>/ and <root>/latest pointing at it."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = Path(root) / run_id
    d.mkdir(parents=True, exist_ok=True)
    latest = Path(root) / "latest"
    tmp = Path(root) / f".latest-{run_id}"
    tmp.symlink_to(run_id)
    os.replace(tmp, latest)
    return d
