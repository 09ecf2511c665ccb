"""Ray executor (`executor=ray`): each job a Ray task, with the local executor's face and rows
(`local.row_for`: same statuses, attempts, timings, notes, pid), so reports are identical in shape.

* `executor.address`: null starts a local cluster for the run (no dashboard, `workers x num_cpus`
  CPUs, listening on 127.0.0.1 only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from rewriting
  127.0.0.1 to the outbound IP) and shuts it down after; `auto` / `host:port` join a `ray start`
  cluster, `ray://host:port` goes through Ray Client.
* One task per job (`num_cpus`, `num_gpus`, `memory_gb`, `resources`; `max_calls` jobs per Ray
  worker process, imports paid once) runs `pipeline.worker.run_job`; the verifier still runs in a
  fresh process. The runtime_env carries TORCHINDUCTOR_CACHE_DIR (`Cache.inductor_env()`),
  HF_HUB_OFFLINE, HF_ENDPOINT, never a token. memory_limit_gb is not applied.
* A failed job (export error, gate, out of memory) is a result, never retried; Ray retries system
  failures (worker or node died) `max_retries` times. A tracker actor hears each attempt start:
  rows carry `attempts`, `timeout_s` counts from the attempt's start (then a forced cancel: failed,
  not retried). `stop()` only sets flags (signal handler); within a poll every task is
  force-cancelled: running jobs `interrupted`, the rest `skipped` (fail_fast: only those not started).
* Cache hits are answered here (without Ray when all are hits). Tasks get `cache.dir` as an absolute
  path (one machine or a shared filesystem); a task that does not see the driver's cache (a probe
  file) needs `publish=hub publish.cache_repo=...` as the exchange: it pushes its entry there and the
  driver fetches it, never reading a node's disk; without one the job fails saying so.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline import hub, shared_cache
from pipeline.cache import Cache
from pipeline.executors.local import row_for
from pipeline.local_paths import local_roots
from pipeline.obtain import find, worker_payload
from pipeline.publish import publish_files
from pipeline.worker import run_job

POLL_S = 0.5
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_ENDPOINT")  # never tokens: runtime_env is visible cluster-wide
OK = {"passed": "passed", "cached": "cached", "fetched": "cached"}


class _Tracker:
    """A Ray actor (num_cpus=0) that hears each attempt of each job start: key -> [[pid, node]]."""

    def __init__(self) -> None:
        self.starts: dict[str, list] = {}

    def started(self, key: str, pid: int, node: str) -> None:
        self.starts.setdefault(key, []).append([pid, node])

    def snapshot(self) -> dict[str, list]:
        return self.starts


def push_entry(payload: dict, artifact: str, src: dict) -> None:
    """Push a cache entry this node built to the shared cache repo (laid out as publish=hub does)."""
    entry, key, model, scratch = Path(artifact), payload["key"], payload["model"], []
    if not (manifest := Cache(entry.parent.parent).manifest(key)):
        raise hub.PublishError(f"no cache entry for {key[:12]} at {entry}")
    roots = local_roots(entry.parent.parent, model.get("path") if model.get("local") else None)
    try:
        files = publish_files(entry, manifest, payload, roots, scratch)[0]
        where = shared_cache.cache_path(payload["spec"], key)
        hub.commit_files(hub.hub_api(src), src["cache_repo"], [f.with_path(f"{where}/{f.path}") for f in files],
                         commit_message=f"Add compiled entry {key[:12]} (executor=ray)",
                         private=bool(src.get("private", True)))  # fmt: skip
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)


def _run_job(payload: dict, tracker, probe: tuple[str, str] | None) -> dict:
    """The body of a job's Ray task, in a Ray worker process: say it started, then run the job."""
    import ray

    node, exchange, shared = ray.util.get_node_ip_address(), None, probe is None
    with suppress(Exception):  # tracking is best effort (no tracker, or it died): never a reason to fail a job
        tracker.started.remote(payload["key"], os.getpid(), node)
    with suppress(OSError):
        shared = shared or Path(probe[0]).read_text() == probe[1]
    if not shared:  # this node has its own disk: the shared Hub cache is the exchange, or nothing is
        src = (payload.get("shared_cache") or {}).get("source") or {}
        if src.get("name") != "hub" or not src.get("cache_repo") or src.get("dry_run"):
            error = (f"Ray node {node} does not see the driver's cache dir {payload['cache_dir']}: use a shared "
                     "filesystem for cache.dir, or set publish=hub publish.cache_repo=<repo> as the exchange")
            return {"key": payload["key"], "status": "failed", "error": error, "pid": os.getpid(), "node": node}
        exchange = src
    result = dict(run_job(payload), node=node)
    if exchange is not None and result["status"] in OK:
        try:
            push_entry(payload, result["artifact"], exchange)
            result["exchange"] = exchange["cache_repo"]
        except Exception as e:  # the entry is good, but the driver cannot get it
            result.update(status="failed", error=hub.scrub(f"pushing the entry to {exchange['cache_repo']}: {e}"))
    return result


@dataclass
class _Task:
    i: int
    job: dict
    notes: list
    submitted: float
    started: float | None = None  # when the driver saw the current attempt start
    attempts: int = 0


class RayTasks:
    """The run's in-flight task refs (touched by the main thread only, as is the signal handler
    that calls `kill_all()` on a second Ctrl-C): force-cancel them and, when this run started the
    cluster, SIGKILL every process under this one (Ray's agents outlive a driver's os._exit)."""

    def __init__(self) -> None:
        self.refs: set = set()
        self.own_cluster = False

    def kill_all(self) -> int:
        refs = list(self.refs)
        thread = threading.Thread(target=_cancel_quietly, args=(refs, True), daemon=True)
        thread.start()
        thread.join(3)  # a signal handler must not hang on a busy Ray client
        if self.own_cluster:
            _kill_descendants()
        return len(refs)


def _kill_descendants() -> None:
    parents: dict[int, int] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    mine = {os.getpid()}
    while new := {p for p, pp in parents.items() if pp in mine} - mine:
        mine |= new
    for pid in mine - {os.getpid()}:
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _cancel_quietly(refs: list, force: bool) -> None:
    import ray

    for ref in refs:
        with suppress(Exception):  # already done, or the cluster is gone
            ray.cancel(ref, force=force)


class RayExecutor:
    """Runs a plan's jobs as Ray tasks; `stop()` may be called from a signal handler."""

    def __init__(self, cfg: dict, run_dir: Path):
        self.cfg, self.run_dir, self.ex = cfg, run_dir, cfg["executor"]
        self.cache = Cache(cfg["cache"]["dir"])
        self.children = RayTasks()
        self.stopped: str | None = None  # why the run was stopped (None: it was not)
        self.interrupted = False  # stopped by a signal: running jobs are interrupted, not failed
        self.lock = threading.RLock()  # stop() from a signal handler may interrupt stop() (fail_fast)
        self.tracker, self.snapshot, self.probe = None, None, None
        self.runtime_env, self.opts = {}, {}

    def stop(self, reason: str, interrupt: bool = True) -> None:
        """No new task starts; with `interrupt`, the loop force-cancels running ones (within a poll)."""
        with self.lock:
            if self.stopped is None:
                self.stopped = reason
            self.interrupted = self.interrupted or interrupt

    def execute(self, jobs: list[dict], on_start: Callable, on_done: Callable) -> list[dict]:
        rows: list[dict | None] = [None] * len(jobs)

        def done(i: int, row: dict) -> None:
            rows[i] = row
            if row["status"] == "failed" and self.cfg["fail_fast"]:
                self.stop("fail_fast stopped the run after a failure", interrupt=False)
            on_done(i, row)

        misses: list[tuple[int, list]] = []
        for i, job in enumerate(jobs):
            try:
                row, notes = self._answer(job)
            except Exception as e:  # an internal error in one job is that job's row
                row, notes = _internal(job, e), []
            if row is not None:
                done(i, row)
            else:
                misses.append((i, notes))
        if misses and not self.stopped:
            self._run(jobs, misses, on_start, done)
        for i, _ in misses:
            if rows[i] is None:
                done(i, row_for(jobs[i], status="skipped", error=f"not run: {self.stopped}"))
        return rows  # type: ignore[return-value]

    def _answer(self, job: dict) -> tuple[dict | None, list]:
        """A row without Ray (stopped, a cache hit, failed before) or (None, notes): a task to run."""
        if self.stopped:
            return row_for(job, status="skipped", error=f"not run: {self.stopped}"), []
        found = find(job, self.cache)
        if found.folder is not None:
            status = "failed" if found.broken else "cached"
            return row_for(job, status=status, artifact=str(found.folder), metrics=found.metrics,
                           error=found.broken, notes=found.notes), []  # fmt: skip
        failed = self.cache.failure(job["key"])
        if failed and not self.cfg["retry_failed"]:
            return row_for(job, error=f"failed before (retry_failed=false): {failed.get('error')}"), []
        return None, found.notes

    def _run(self, jobs: list[dict], misses: list[tuple[int, list]], on_start: Callable, done: Callable) -> None:
        try:
            ray, task = self._connect()
        except Exception as e:
            why = "ray is not installed: pip install -e '.[ray]'" if isinstance(e, ImportError) else _first_line(e)
            for i, _ in misses:
                done(i, row_for(jobs[i], error=f"executor=ray: could not start or join the Ray cluster: {why}"))
            self._close()
            return
        try:
            self._loop(ray, task, jobs, misses, on_start, done)
        finally:
            self._close()

    def _loop(self, ray, task, jobs, misses, on_start, done) -> None:
        queue, inflight = deque(misses), {}
        workers = max(1, int(self.ex.get("workers") or 1))
        while queue or inflight:
            if self.stopped:
                while queue:
                    i, _ = queue.popleft()
                    done(i, row_for(jobs[i], status="skipped", error=f"not run: {self.stopped}"))
                self._cancel(ray, inflight, done)
                if not inflight:
                    break
            while queue and len(inflight) < workers and not self.stopped:
                i, notes = queue.popleft()
                try:
                    ref = self._submit(task, jobs[i])
                except Exception as e:
                    done(i, _internal(jobs[i], e))
                    continue
                inflight[ref] = _Task(i, jobs[i], notes, time.perf_counter())
                self.children.refs.add(ref)
            if not inflight:
                continue
            try:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            except Exception as e:  # the cluster is gone: every job not done yet is failed, saying so
                for i, job in [*((t.i, t.job) for t in inflight.values()), *((i, jobs[i]) for i, _ in queue)]:
                    done(i, row_for(job, error=f"executor=ray: lost the Ray cluster: {_first_line(e)}"))
                return
            self._poll_starts(ray, inflight, on_start)
            for ref in ready:
                t = inflight.pop(ref)
                self.children.refs.discard(ref)
                try:
                    row = self._finish(ray, t, ref)
                except Exception as e:
                    row = _internal(t.job, e)
                done(t.i, row)
            self._timeouts(ray, inflight, done)

    def _connect(self):
        ex = self.ex
        if not ex.get("address"):  # our own cluster: else Ray rewrites 127.0.0.1 to the outbound IP and listens there
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # (read when ray is imported)
        import ray

        opts = dict(num_cpus=float(ex.get("num_cpus") or 0), num_gpus=float(ex.get("num_gpus") or 0),
                    max_calls=int(ex.get("max_calls") or 0), max_retries=int(ex.get("max_retries") or 0),
                    retry_exceptions=False)  # fmt: skip
        if ex.get("memory_gb"):
            opts["memory"] = int(float(ex["memory_gb"]) * 1024**3)
        if ex.get("resources"):
            opts["resources"] = {k: float(v) for k, v in ex["resources"].items()}
        want = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts.get("memory"),
                **opts.get("resources", {})}  # fmt: skip
        self.opts = dict(want={k: v for k, v in want.items() if v})
        self.opts["asks"] = ", ".join(f"{k}={v}" for k, v in self.opts["want"].items())
        saved = _handlers()
        try:
            common = dict(log_to_driver=False, logging_level=logging.ERROR, namespace="pipeline")
            if ex.get("address"):
                ray.init(address=ex["address"], **common)
            else:
                workers = max(1, int(ex.get("workers") or 1))
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address="local", num_cpus=max(1, math.ceil(workers * opts["num_cpus"])),
                         include_dashboard=False, object_store_memory=200 * 1024**2,
                         _node_ip_address="127.0.0.1", **common)  # fmt: skip
                self.children.own_cluster = True
        finally:
            _restore(saved)  # ray.init installs its own SIGTERM handler: the CLI's stays in charge
        missing = _unschedulable(ray, self.opts)
        if missing and self.children.own_cluster:
            raise RuntimeError(f"the local Ray cluster has no {missing}; join a cluster that has (executor.address)")
        env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        env["TORCHINDUCTOR_CACHE_DIR"] = self.cache.inductor_env()["TORCHINDUCTOR_CACHE_DIR"]
        self.runtime_env = {"env_vars": env}
        task = ray.remote(**opts)(_run_job)
        try:
            self.tracker = self._start_tracker(ray)
        except Exception:
            self.tracker = None
        self.probe = self.cache.root / ".ray" / f"probe-{uuid.uuid4().hex}"
        self.probe.parent.mkdir(parents=True, exist_ok=True)
        self.probe.write_text(self.probe.name)
        return ray, task

    def _start_tracker(self, ray):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        return ray.remote(num_cpus=0, max_restarts=0)(_Tracker).options(scheduling_strategy=here).remote()

    def _submit(self, task, job: dict):
        cfg = self.cfg
        payload = worker_payload(job, self.cache, cfg["publish"], cfg.get("shared_cache"), None)
        probe = (str(self.probe.resolve()), self.probe.name) if self.probe else None
        named = task.options(name=f"pipeline-{job['key'][:12]}", runtime_env=self.runtime_env)
        return named.remote(payload, self.tracker, probe)

    def _poll_starts(self, ray, inflight: dict, on_start: Callable) -> None:
        """What the tracker heard (a snapshot asked for at the last poll: never waited for)."""
        now, starts = time.perf_counter(), None
        if self.tracker is not None:
            self.snapshot = self.snapshot or self.tracker.snapshot.remote()
            if not ray.wait([self.snapshot], timeout=0)[0]:
                return
            try:
                starts = ray.get(self.snapshot)
            except Exception:
                self.tracker = None  # from here on: timeouts count from submission, attempts unknown
            self.snapshot = None
        for t in inflight.values():
            seen = len(starts.get(t.job["key"], [])) if starts is not None else max(t.attempts, 1)
            if seen > t.attempts:
                if t.attempts == 0:
                    on_start(t.i, t.job)
                t.attempts, t.started = seen, now if starts is not None else t.submitted

    def _timeouts(self, ray, inflight: dict, done: Callable) -> None:
        now = time.perf_counter()
        for ref, t in list(inflight.items()):
            limit = float(t.job["timeout_s"])
            if t.started is not None and now - t.started > limit:
                error = f"timed out after {limit:.0f} s (timeout_s); not retried"
            elif t.started is None and now - t.submitted > limit:
                error = (f"not started within {limit:.0f} s (timeout_s): no node of the Ray cluster had "
                         f"{self.opts['asks']} free")  # fmt: skip
            else:
                continue
            _cancel_quietly([ref], force=True)
            inflight.pop(ref)
            self.children.refs.discard(ref)
            row = self._row(t, {"status": "timeout", "error": error})
            self._record_transient(row, t.job)
            done(t.i, row)

    def _cancel(self, ray, inflight: dict, done: Callable) -> None:
        """After stop(): cancel what has not started (skipped); with an interrupt, force-cancel
        what runs too (interrupted, its temp dirs cleared once the killed worker let go of the lock)."""
        killed = []
        for ref, t in list(inflight.items()):
            if t.started is not None and not self.interrupted:
                continue  # fail_fast: running jobs finish
            _cancel_quietly([ref], force=self.interrupted)
            inflight.pop(ref)
            self.children.refs.discard(ref)
            if t.started is None:
                done(t.i, row_for(t.job, status="skipped", error=f"not run: {self.stopped}", notes=t.notes))
            else:
                killed.append((ref, t))
        if killed:
            ray.wait([r for r, _ in killed], num_returns=len(killed), timeout=5)
        for _, t in killed:
            self.cache.clear_stale_tmp_locked(t.job["key"], timeout=5)
            done(t.i, self._row(t, {"status": "interrupted"}))

    def _finish(self, ray, t: _Task, ref) -> dict:
        from ray import exceptions as rex

        try:
            result = ray.get(ref)
        except rex.TaskCancelledError:
            result = {"status": "transient", "error": f"the Ray task was cancelled: {self.stopped}"}
        except (rex.RuntimeEnvSetupError, rex.RayTaskError) as e:  # deterministic: not retried
            what = "set up the task's runtime_env" if isinstance(e, rex.RuntimeEnvSetupError) else "run the task"
            result = {"status": "failed", "error": f"Ray could not {what}: {_first_line(e)}"}
        except rex.RayError as e:  # the worker or its node died, and Ray's retries are used up
            retries = int(self.ex.get("max_retries") or 0)
            result = {"status": "transient", "error": f"Ray system failure: {_first_line(e)} (Ray retried "
                      f"{retries} time(s), executor.max_retries)"}  # fmt: skip
        if result.get("exchange") and result["status"] in OK:
            result = fetch_exchanged(self.cache, t.job, result, self.cfg["publish"])
        row = self._row(t, result)
        if result["status"] == "transient" and row["status"] == "failed":
            self._record_transient(row, t.job)
        return row

    def _row(self, t: _Task, result: dict) -> dict:
        timings = dict(result.get("timings") or {}, wall_s=round(time.perf_counter() - t.submitted, 3))
        attempts = max(t.attempts, 1)
        notes = [n for n in [*t.notes, *(result.get("notes") or [])] if n]
        if attempts > 1:
            notes.append(f"Ray retried the task after its worker died ({attempts} attempts)")
        if self.stopped and self.interrupted and result["status"] in ("transient", "timeout", "interrupted"):
            return row_for(t.job, status="interrupted", error=f"interrupted: {self.stopped}", timings=timings,
                           attempts=attempts, notes=notes)  # fmt: skip
        return row_for(t.job, status=OK.get(result["status"], "failed"), error=result.get("error"),
                       metrics=result.get("metrics", {}), timings=timings, artifact=result.get("artifact"),
                       attempts=attempts, notes=notes, pid=result.get("pid"))  # fmt: skip

    def _record_transient(self, row: dict, job: dict) -> None:
        try:
            self.cache.record_failure(job["key"], {"error": row["error"], "spec": job["spec"], "transient": True})
        except OSError as e:
            row["notes"].append(f"could not record the failure: {e}")

    def _close(self) -> None:
        saved = _handlers()
        try:
            import ray

            if ray.is_initialized():  # the tracker actor ends with the driver's job
                ray.shutdown()
        except ImportError:
            pass
        finally:
            _restore(saved)
            if self.probe is not None:
                self.probe.unlink(missing_ok=True)


def fetch_exchanged(cache: Cache, job: dict, result: dict, publish_cfg: dict) -> dict:
    """A task on a node without the driver's filesystem pushed its entry to the shared cache
    repo: take it from there into the driver's cache (sha256 of every file checked against its
    manifest; built and verified by this run's own task, so not verified again)."""
    key, src = job["key"], result["exchange"]
    note = f"built by a Ray task on node {result.get('node')} and exchanged through the shared cache {src}"
    with cache.lock(key):
        folder, _ = cache.lookup(key, locked=True)
        if folder is not None:
            return dict(result, artifact=str(folder), notes=[*result.get("notes", []), note])
        cache.clear_stale_tmp(key)
        tmp = cache.new_tmp(key)
        try:
            manifest, why = shared_cache.download(key, job["spec"], tmp, publish_cfg)
            if manifest is None:
                why = f"the entry a Ray task pushed to {src} could not be fetched: {why or 'not found'}"
                return dict(result, status="failed", artifact=None, error=why)
            verification = dict(manifest.get("verification") or {}, local="built by this run's Ray task")
            dest = cache.commit(key, tmp, dict(manifest, verification=verification))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(result, artifact=str(dest), notes=[*result.get("notes", []), note])


def _unschedulable(ray, opts: dict) -> str | None:
    """What no alive node of the cluster has at all (None: some node could run a job)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return None if any(all(have.get(k, 0) >= v for k, v in opts["want"].items()) for have in nodes) else opts["asks"]


def _handlers() -> dict:
    main = threading.current_thread() is threading.main_thread()
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}


def _restore(saved: dict) -> None:
    for signum, handler in saved.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


def _first_line(e: BaseException) -> str:
    """One line for an exception (a RayTaskError: the task's own exception, not Ray's wrapper)."""
    cause = getattr(e, "cause", None)
    e = cause if isinstance(cause, BaseException) else e
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return hub.scrub(f"{type(e).__name__}: {lines[0]}"[:500]) if lines else type(e).__name__


def _internal(job: dict, e: BaseException) -> dict:
    return row_for(job, error=f"internal error: {type(e).__name__}: {e}", notes=[traceback.format_exc(limit=3)[-1500:]])
