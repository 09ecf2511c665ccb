"""Worker processes: start one (or hand a job to a standby one), wait with the job's timeout,
kill its whole process group; and the registry of live children that an interrupted run kills.

Protocol with `python -m pipeline.worker`: the job as JSON in a file, the result as JSON in
another, written atomically by the worker. No result file means the process died: that is a
transient fault (retried once by the executor) unless it was our timeout (not retried: a
deterministic slow compile would only cost the timeout twice).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


class Children:
    """Live worker processes (each the leader of its own process group)."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.closed = False

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            if self.closed:  # the run was stopped while this one started
                _kill_group(proc)
            self.procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def kill_all(self) -> int:
        """Kill every child's process group (its verifier and compiler processes too); no new
        child is let live afterwards. Returns how many were killed."""
        with self.lock:
            self.closed = True
            procs = list(self.procs)
        for proc in procs:
            _kill_group(proc)
        return len(procs)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_worker(args: list[str], log_path: Path, env: dict | None, stdin=None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", *args],
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


class Standby:
    """Worker processes started ahead of need (`python -m pipeline.worker --standby BACKEND`), each
    for one job. `take()` hands out a ready one (or None) and starts its replacement while jobs
    are still to come; `close()` ends the unused ones (EOF on stdin, then kill)."""

    def __init__(self, size: int, run_dir: Path, backend: str, env: dict, children: Children):
        self.size, self.run_dir, self.backend, self.env, self.children = size, run_dir, backend, env, children
        self.ready: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.started = 0

    def _start(self) -> subprocess.Popen:
        logs = self.run_dir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        self.started += 1
        proc = start_worker(
            ["--standby", self.backend], logs / f"standby-{self.started - 1}.log", self.env, stdin=subprocess.PIPE
        )
        self.children.add(proc)
        return proc

    def take(self, more_to_come: bool) -> subprocess.Popen | None:
        with self.lock:
            live = [p for p in self.ready if p.poll() is None]
            proc = live.pop(0) if live else None
            self.ready = live
            while more_to_come and len(self.ready) < self.size and not self.children.closed:
                self.ready.append(self._start())
            return proc

    def close(self) -> None:
        with self.lock:
            for proc in self.ready:
                try:
                    proc.stdin.close()
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    _kill_group(proc)
                    proc.wait()
                self.children.discard(proc)
            self.ready = []


def run_worker(
    job: dict,
    work: Path,
    timeout_s: float,
    standby: subprocess.Popen | None = None,
    env: dict | None = None,
    children: Children | None = None,
) -> dict:
    """One attempt in a fresh process (a standby one when given, else one started with `env`).
    A process that died comes back as status 'transient', our timeout as status 'timeout'."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / "job.json", work / "result.json", work / "worker.log"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    proc = standby
    if proc is not None:
        try:
            proc.stdin.write(json.dumps([str(job_file), str(result_file)]).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died while waiting: start this job cold
            proc = None
    if proc is None:
        proc = start_worker([str(job_file), str(result_file)], log_file, env)
        if children is not None:
            children.add(proc)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        return {"status": "timeout", "error": f"timed out after {timeout_s:.0f} s (timeout_s); not retried"}
    finally:
        if children is not None:
            children.discard(proc)
    if result_file.is_file():
        return json.loads(result_file.read_text())
    how = (
        f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode} without a result"
    )
    tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file.is_file() else []
    return {"status": "transient", "error": f"worker {how}" + (f": {tail[0][:300]}" if tail else "")}
