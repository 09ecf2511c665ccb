"""Local executor: each job in its own worker process (`python -m pipeline.worker`), at most
`workers` at once, with a per-job timeout.

Cache hits are answered here without starting a process. While a job compiles, the next job's
process is already started (`Standby`): it imports torch and transformers and then waits for
exactly one job, so a job's process does not start cold. One retry for a worker that died
(killed, crashed); none for a timeout or a deterministic failure (export error, gate failure,
out of memory, full disk). `stop(reason)` (Ctrl-C, SIGTERM, fail_fast) kills every child
process group at once: running jobs end `interrupted`, queued ones `skipped`. Any exception in
a job's thread becomes that job's row; it never loses the others.
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from pipeline.cache import Cache
from pipeline.executors.processes import Children, Standby, Worker, run_worker
from pipeline.job import Job, Row
from pipeline.obtain import find, worker_payload


def row_for(job: Job, **kw) -> Row:
    """A report row for a job (status failed until said otherwise)."""
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


class LocalExecutor:
    """Runs a plan's jobs on this machine; `stop()` may be called from a signal handler."""

    def __init__(self, cfg: dict, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.cache = Cache(cfg["cache"]["dir"])
        self.children = Children()
        self.stopped: str | None = None  # why the run was stopped (None: it was not)
        self.interrupted = False  # stopped by a signal: running jobs are interrupted, not failed
        self.lock = threading.Lock()
        self.mine = threading.local()  # each pool thread's current worker process (reused across jobs)
        self.workers: set[Worker] = set()

    def stop(self, reason: str, interrupt: bool = True) -> None:
        """No new job starts; with `interrupt`, running ones are killed (their whole groups)."""
        with self.lock:
            if self.stopped is None:
                self.stopped = reason
            self.interrupted = self.interrupted or interrupt
        if interrupt:
            self.children.kill_all()

    def execute(self, jobs: list[dict], on_start: Callable, on_done: Callable) -> list[dict]:
        cfg = self.cfg
        rows: list[dict | None] = [None] * len(jobs)
        workers = int(cfg["executor"]["workers"])
        env = self.cache.inductor_env()  # every worker's, standby ones included (they import torch._inductor early)
        size = workers if cfg["executor"].get("standby", True) else 0
        capacity = int(cfg["executor"].get("jobs_per_process") or 1)
        standby = Standby(size, self.run_dir, cfg["backend"]["name"], env, self.children, capacity)

        def one(i: int, job: dict) -> None:
            try:
                rows[i] = self._one(i, job, jobs, env, standby, on_start)
            except Exception as e:  # an internal error in one job's thread is that job's row, never the run's end
                rows[i] = row_for(
                    job, error=f"internal error: {type(e).__name__}: {e}", notes=[traceback.format_exc(limit=3)[-1500:]]
                )
            on_done(i, rows[i])

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(one, i, job) for i, job in enumerate(jobs)]
                for future in futures:
                    future.result()
        finally:
            standby.close()
            for worker in list(self.workers):
                worker.retire(self.children)
        return rows  # type: ignore[return-value]

    def _one(self, i: int, job: dict, jobs: list[dict], env: dict, standby: Standby, on_start: Callable) -> dict:
        cfg, cache = self.cfg, self.cache
        if self.stopped:
            return row_for(job, status="skipped", error=f"not run: {self.stopped}")
        found = find(job, cache)  # the local cache, re-gated against today's tolerances
        if found.folder is not None:
            if found.broken and cfg["fail_fast"]:
                self.stop("fail_fast stopped the run after a failure", interrupt=False)
            return row_for(
                job,
                status="failed" if found.broken else "cached",
                artifact=str(found.folder),
                metrics=found.metrics,
                error=found.broken,
                notes=found.notes,
            )
        failed = cache.failure(job["key"])
        if failed and not cfg["retry_failed"]:
            return row_for(job, error=f"failed before (retry_failed=false): {failed.get('error')}")
        on_start(i, job)
        payload = worker_payload(
            job, cache, cfg["publish"], cfg.get("shared_cache"), cfg["executor"].get("memory_limit_gb")
        )
        start = time.perf_counter()
        attempt, result = 0, {"status": "transient", "error": "not started"}
        for attempt in (1, 2):
            if self.stopped and self.interrupted:
                break
            more = i + 1 < len(jobs) and not self.stopped  # later jobs may need a process: start one now
            result = self._attempt(payload, job, standby, more, env)
            if result["status"] == "transient" and cache.full():  # it died of the full disk: not transient
                result = dict(
                    result,
                    status="failed",
                    error=f"no space left on device ({cache.root}); free space or move cache.dir: {result['error']}",
                )
            if result["status"] != "transient":
                break
        timings = dict(result.get("timings", {}), wall_s=round(time.perf_counter() - start, 3))
        notes = [n for n in [*found.notes, *result.get("notes", [])] if n]
        if self.stopped and self.interrupted and result["status"] in ("transient", "timeout"):
            cache.clear_stale_tmp_locked(job["key"])
            return row_for(
                job,
                status="interrupted",
                error=f"interrupted: {self.stopped}",
                timings=timings,
                attempts=attempt,
                notes=notes,
            )
        status = {"passed": "passed", "cached": "cached", "fetched": "cached"}.get(result["status"], "failed")
        row = row_for(
            job,
            status=status,
            error=result.get("error"),
            metrics=result.get("metrics", {}),
            timings=timings,
            artifact=result.get("artifact"),
            attempts=attempt,
            notes=notes,
            pid=result.get("pid"),
        )
        if result["status"] in ("transient", "timeout"):
            try:
                cache.record_failure(job["key"], {"error": row["error"], "spec": job["spec"], "transient": True})
            except OSError as e:
                row["notes"].append(f"could not record the failure: {e}")
        if status == "failed" and cfg["fail_fast"]:
            self.stop("fail_fast stopped the run after a failure", interrupt=False)
        return row

    def _attempt(self, payload: dict, job: dict, standby: Standby, more: bool, env: dict) -> dict:
        """One attempt in this thread's worker process (reused while it can take jobs), else in
        a standby one; the process is let go after a failure or past executor.max_rss_gb."""
        current = getattr(self.mine, "worker", None)
        result, kept = run_worker(
            payload,
            self.run_dir / "jobs" / job["key"][:12],
            job["timeout_s"],
            current,
            env,
            self.children,
            start=lambda: standby.take(more) or standby.start(),
        )
        max_rss = self.cfg["executor"].get("max_rss_gb")
        if kept is not None and (result["status"] == "failed" or (max_rss and kept.rss_gb() > max_rss)):
            kept.retire(self.children)
            kept = None
        with self.lock:
            if current is not None and current is not kept:
                self.workers.discard(current)
            if kept is not None:
                self.workers.add(kept)
        self.mine.worker = kept
        return result
