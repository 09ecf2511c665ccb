"""Local executor: each job in its own worker process (`python -m pipeline.worker`), at most
`workers` at once, with a per-job timeout.

Cache hits are answered here without starting a process. While a job compiles, the next job's
process is already started (`Standby`): it imports torch and transformers and then waits for
exactly one job, so a job's process does not start cold. One retry for transient faults (the
worker was killed or timed out); none for deterministic ones (export error, gate failure).
"""
from __future__ import annotations

import json
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
from pipeline.verify import gate


def _row(job: dict, **kw) -> dict:
    base = {"key": job["key"], "model": job["model"]["name"], "task": job["task"], "shapes": job["shapes"],
            "cast_type": job["cast_type"], "backend": job["backend"], "status": "failed", "error": None,
            "metrics": {}, "timings": {}, "artifact": None, "attempts": 0, "notes": []}
    base.update(kw)
    return base


class Standby:
    """Worker processes started ahead of need (`python -m pipeline.worker --standby`), each for
    one job. `take()` hands out a ready one (or None) and starts its replacement while jobs are
    still to come; `close()` ends the unused ones (EOF on stdin, then kill)."""

    def __init__(self, size: int, run_dir: Path):
        self.size, self.run_dir = size, run_dir
        self.ready: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        logs = self.run_dir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"standby-{len(os.listdir(logs))}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "pipeline.worker", "--standby", str(self.run_dir)], stdin=subprocess.PIPE,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

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


def run_worker(job: dict, work: Path, timeout_s: float, standby: subprocess.Popen | None = None) -> dict:
    """One attempt in a fresh process (a standby one when given); a transient fault comes back
    as status 'transient'."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / "job.json", work / "result.json", work / "worker.log"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        proc = standby
        if proc is not None:
            try:
                proc.stdin.write(json.dumps([str(job_file), str(result_file)]).encode() + b"\n")
                proc.stdin.close()
            except OSError:  # it died while waiting: start this job cold
                proc = None
        if proc is None:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.worker", str(job_file), str(result_file)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "transient", "error": f"timed out after {timeout_s:.0f} s (timeout_s)"}
    if result_file.is_file():
        return json.loads(result_file.read_text())
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode} without a result"
    tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file.is_file() else []
    return {"status": "transient", "error": f"worker {how}" + (f": {tail[0][:300]}" if tail else "")}


def execute(jobs: list[dict], cfg: dict, run_dir: Path, on_start: Callable, on_done: Callable) -> list[dict]:
    cache = Cache(cfg["cache"]["dir"])
    stop = threading.Event()
    rows: list[dict | None] = [None] * len(jobs)
    workers = int(cfg["executor"]["workers"])
    cache.use_for_inductor()  # inherited by every worker, standby ones included (they import torch._inductor early)
    standby = Standby(workers if cfg["executor"].get("standby", True) else 0, run_dir)

    def one(i: int, job: dict) -> None:
        if stop.is_set():
            rows[i] = _row(job, status="skipped", error="not run: fail_fast stopped the run after a failure")
            on_done(i, rows[i])
            return
        folder, why = cache.lookup(job["key"])
        if folder is None:  # a local miss: try the shared cache (publish.cache_repo) before compiling
            from pipeline.publish import fetch_from_shared_cache

            folder, shared_why = fetch_from_shared_cache(job["key"], job["spec"], cache, cfg["publish"])
            why = "; ".join(n for n in (why, shared_why) if n) or None
        if folder is not None:
            metrics = (cache.manifest(job["key"]) or {}).get("metrics", {})
            # Tolerances are not part of the key: re-apply today's gate to the stored metrics.
            broken = gate(metrics, job["verify"]["tolerance"])
            rows[i] = _row(job, status="failed" if broken else "cached", artifact=str(folder), metrics=metrics,
                           error=f"cached entry fails the current gate: {broken}" if broken else None)
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
            result = run_worker(payload, run_dir / "jobs" / job["key"][:12], job["timeout_s"], standby.take(more))
            if result["status"] != "transient":
                break
        status = "failed" if result["status"] == "transient" else result["status"]
        rows[i] = _row(job, status=status, error=result.get("error"), metrics=result.get("metrics", {}),
                       timings=dict(result.get("timings", {}), wall_s=round(time.perf_counter() - start, 3)),
                       artifact=result.get("artifact"), attempts=attempt,
                       notes=[n for n in [why, *result.get("notes", [])] if n])
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
