"""Shared fixtures: tiny models, a test cache shared across the session, the CLI in a subprocess.

Compiles are expensive (~10-15 s each on 2 cores), so tests share one cache dir and one
Inductor cache dir per session; a test that needs a clean cache makes its own tmp one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_DIR = Path(os.environ.get("PIPELINE_TEST_DIR", REPO / "artifacts" / "test"))
INDUCTOR_CACHE = TEST_DIR / "inductor"
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))  # in-process compiles/loads share it
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(INDUCTOR_CACHE), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` from the repo root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def latest_report(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "report.json").read_text())


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """The smoke sweep's models (artifacts/models/<name>), built once, deterministic."""
    from pipeline import tiny

    out = REPO / "artifacts" / "models"
    assert tiny.main([str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def test_cache(smoke) -> Path:
    """The smoke run's cache: tests that compile more add to it, and reuse its entries."""
    return smoke["cache"]


@pytest.fixture(scope="session")
def smoke(tiny_models):
    """`make demo` (the README's demo command) with the cache and reports under the test dir."""
    cache, runs = TEST_DIR / "smoke-cache", TEST_DIR / "smoke-runs"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    env = cli_env(PIPELINE_CACHE_DIR=str(cache), PIPELINE_REPORT_DIR=str(runs))
    proc = subprocess.run(["make", "-s", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"cache": cache, "runs": runs, "env": env, "stdout": proc.stdout, "report": latest_report(runs)}


def marked(marker: str) -> list[int]:
    """pids of live processes whose environment carries the marker (tests find the processes
    a run they started left behind this way: workers, standbys, verifiers, Ray workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes() and (d / "stat").read_text().split()[2] != "Z":
                    out.append(int(d.name))
            except OSError:
                continue
    return [p for p in out if p != os.getpid()]


def artifact_config(key: str) -> dict:
    """config.json of a hand-made inductor feature-extraction artifact folder (tiny BERT, b1 s16),
    for tests of what from_pretrained does with broken or hostile folders."""
    return {
        "model_type": "bert",
        "vocab_size": 128,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "compiled": {
            "format": "aoti-pt2",
            "file": "model.pt2",
            "input_names": ["input_ids", "attention_mask"],
            "output_names": ["last_hidden_state"],
            "dtype": "float32",
            "device": "cpu",
            "dynamic_batch_size": False,
        },
        "pipeline": {
            "key": key,
            "spec": {"backend": {"name": "inductor", "options": {}}, "dynamic_batch_size": False},
            "task": "feature-extraction",
            "shapes": {"batch_size": 1, "sequence_length": 16},
            "cast_type": "fp32",
            "backend": "inductor",
            "backend_options": {"name": "inductor"},
            "model_id": "x",
            "input_names": ["input_ids", "attention_mask"],
        },
    }

