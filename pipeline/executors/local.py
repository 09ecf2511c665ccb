"""Local executor: each job in its own worker process (`python -m pipeline.worker`), at most
`workers` at once, with a per-job timeout.

Cache hits are answered here without starting a process. One retry for transient faults (the
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


def run_worker(job: dict, work: Path, timeout_s: float) -> dict:
    """One attempt in a fresh process; a transient fault comes back as status 'transient'."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / "job.json", work / "result.json", work / "worker.log"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
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
            result = run_worker(payload, run_dir / "jobs" / job["key"][:12], job["timeout_s"])
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

    workers = int(cfg["executor"]["workers"])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, i, job) for i, job in enumerate(jobs)]:
            future.result()
    return rows  # type: ignore[return-value]
