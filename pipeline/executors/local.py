"""Local executor: each job in its own worker process (`python -m pipeline.worker`), at most
`workers` at once, with a per-job timeout.

Cache hits are answered here without starting a process. While a job compiles, the next job's
process is already started (`Standby`): it imports torch and transformers and then waits for
exactly one job, so a job's process does not start cold. One retry for transient faults (the
worker was killed or timed out); none for deterministic ones (export error, gate failure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from pipeline.cache import Cache
from pipeline.obtain import find
from pipeline.worker import run_worker


def _row(job: dict, **kw) -> dict:
    base = {
        "key": job["key"],
        "model": job["model"]["name"],
        "task": job["task"],
        "shapes": job["shapes"],
        "cast_type": job["cast_type"],
        "backend": job["backend"],
        "status": "failed",
        "error": None,
        "metrics": {},
        "timings": {},
        "artifact": None,
        "attempts": 0,
        "notes": [],
    }
    base.update(kw)
    return base


class Standby:
    """Worker processes started ahead of need (`python -m pipeline.worker --standby`), each for
    one job. `take()` hands out a ready one (or None) and starts its replacement while jobs are
    still to come; `close()` ends the unused ones (EOF on stdin, then kill)."""

    def __init__(self, size: int, run_dir: Path, backend: str, env: dict):
        self.size, self.run_dir, self.backend, self.env = size, run_dir, backend, env
        self.ready: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        logs = self.run_dir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"standby-{len(os.listdir(logs))}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pipeline.worker", "--standby", self.backend],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def take(self, more_to_come: bool) -> subprocess.Popen | None:
        with self.lock:
            live = [p for p in self.ready if p.poll() is None]
            proc = live.pop(0) if live else None
            self.ready = live
            while more_to_come and len(self.ready) < self.size:
                self.ready.append(self._start())
            return proc

    def close(self) -> None:
        with self.lock:
            for proc in self.ready:
                try:
                    proc.stdin.close()
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.ready = []


def execute(jobs: list[dict], cfg: dict, run_dir: Path, on_start: Callable, on_done: Callable) -> list[dict]:
    cache = Cache(cfg["cache"]["dir"])
    stop = threading.Event()
    rows: list[dict | None] = [None] * len(jobs)
    workers = int(cfg["executor"]["workers"])
    env = cache.inductor_env()  # every worker's, standby ones included (they import torch._inductor early)
    standby = Standby(workers if cfg["executor"].get("standby", True) else 0, run_dir, cfg["backend"]["name"], env)

    def one(i: int, job: dict) -> None:
        if stop.is_set():
            rows[i] = _row(job, status="skipped", error="not run: fail_fast stopped the run after a failure")
            on_done(i, rows[i])
            return
        found = find(job, cache, cfg["publish"])  # local cache, then the shared cache; re-gated
        if found.folder is not None:
            broken = found.broken
            rows[i] = _row(
                job,
                status="failed" if broken else "cached",
                artifact=str(found.folder),
                metrics=found.metrics,
                error=broken,
                notes=found.notes,
            )
            if broken and cfg["fail_fast"]:
                stop.set()
            on_done(i, rows[i])
            return
        failed = cache.failure(job["key"])
        if failed and not cfg["retry_failed"]:
            rows[i] = _row(job, status="failed", error=f"failed before (retry_failed=false): {failed.get('error')}")
            on_done(i, rows[i])
            return
        on_start(i, job)
        payload = dict(job, cache_dir=str(cache.root.resolve()))
        start = time.perf_counter()
        for attempt in (1, 2):
            more = i + 1 < len(jobs) and not stop.is_set()  # later jobs may need a process: start one now
            result = run_worker(payload, run_dir / "jobs" / job["key"][:12], job["timeout_s"], standby.take(more), env)
            if result["status"] != "transient":
                break
        status = "failed" if result["status"] == "transient" else result["status"]
        rows[i] = _row(
            job,
            status=status,
            error=result.get("error"),
            metrics=result.get("metrics", {}),
            timings=dict(result.get("timings", {}), wall_s=round(time.perf_counter() - start, 3)),
            artifact=result.get("artifact"),
            attempts=attempt,
            notes=[n for n in [*found.notes, *result.get("notes", [])] if n],
        )
        if status == "failed" and result["status"] == "transient":
            cache.record_failure(job["key"], {"error": rows[i]["error"], "spec": job["spec"], "transient": True})
        if status == "failed" and cfg["fail_fast"]:
            stop.set()
        on_done(i, rows[i])

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, i, job) for i, job in enumerate(jobs)]:
                future.result()
    finally:
        standby.close()
    return rows  # type: ignore[return-value]
