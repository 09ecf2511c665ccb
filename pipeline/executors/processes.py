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
import time
from pathlib import Path
from typing import Callable


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


class Worker:
    """A worker process serving jobs from its stdin (`python -m pipeline.worker --standby`), at
    most `capacity` of them; stdin is closed after the last so the process exits by itself."""

    def __init__(self, proc: subprocess.Popen, capacity: int):
        self.proc, self.capacity, self.jobs = proc, capacity, 0

    def can_take(self) -> bool:
        return self.proc.poll() is None and self.jobs < self.capacity and not self.proc.stdin.closed

    def send(self, job_file: Path, result_file: Path) -> bool:
        """Hand one job over; False when the process is gone."""
        try:
            line = [str(job_file), str(result_file), time.time()]  # when sent: was the process ready by then?
            self.proc.stdin.write(json.dumps(line).encode() + b"\n")
            self.proc.stdin.flush()
            self.jobs += 1
            if self.jobs >= self.capacity:
                self.proc.stdin.close()
            return True
        except (OSError, ValueError):
            return False

    def rss_gb(self) -> float:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) / 1024**2
        except (OSError, IndexError, ValueError):
            return 0.0

    def retire(self, children: Children | None = None) -> None:
        """Let it go: EOF on stdin (it exits after its current job), killed if it lingers."""
        try:
            if not self.proc.stdin.closed:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            _kill_group(self.proc)
            self.proc.wait()
        if children is not None:
            children.discard(self.proc)


class Standby:
    """Worker processes started ahead of need (`python -m pipeline.worker --standby BACKEND RUN_DIR`).
    `take()` hands out a ready one (or None) and starts its replacement while jobs are still to
    come; `close()` ends the unused ones (EOF on stdin, then kill)."""

    def __init__(self, size: int, run_dir: Path, backend: str, env: dict, children: Children, capacity: int = 1):
        self.size, self.run_dir, self.backend, self.env, self.children = size, run_dir, backend, env, children
        self.capacity = capacity
        self.ready: list[Worker] = []
        self.lock = threading.Lock()
        self.started = 0

    def start(self) -> Worker:
        """A new worker process (not kept ready: the caller uses it now)."""
        logs = self.run_dir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.started += 1
            n = self.started
        args = ["--standby", self.backend, str(self.run_dir)]  # the run dir names the run's processes in `ps`
        proc = start_worker(args, logs / f"process-{n - 1}.log", self.env, stdin=subprocess.PIPE)
        self.children.add(proc)
        return Worker(proc, self.capacity)

    def take(self, more_to_come: bool) -> Worker | None:
        with self.lock:
            live = [w for w in self.ready if w.proc.poll() is None]
            worker = live.pop(0) if live else None
            self.ready = live
            missing = self.size - len(self.ready) if more_to_come and not self.children.closed else 0
        for _ in range(max(missing, 0)):
            started = self.start()
            with self.lock:
                self.ready.append(started)
        return worker

    def close(self) -> None:
        with self.lock:
            ready, self.ready = self.ready, []
        for worker in ready:
            worker.retire(self.children)


def run_worker(
    job: dict,
    work: Path,
    timeout_s: float,
    worker: Worker | None = None,
    env: dict | None = None,
    children: Children | None = None,
    start: Callable[[], Worker] | None = None,
) -> tuple[dict, Worker | None]:
    """One attempt of a job in a worker process: `worker` when it can take one, else a new one
    (from `start`, or a one-job process started with `env`). Returns the result and the worker,
    still alive for another job, or None when it is gone. A process that died comes back as
    status 'transient', our timeout as status 'timeout' (its whole group killed)."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / "job.json", work / "result.json", work / "worker.log"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    if worker is None or not worker.can_take() or not worker.send(job_file, result_file):
        if start is not None:
            worker = start()
        else:
            proc = start_worker(["--standby", job["backend"]], log_file, env, stdin=subprocess.PIPE)
            if children is not None:
                children.add(proc)
            worker = Worker(proc, 1)
        if not worker.send(job_file, result_file):
            return {"status": "transient", "error": "worker process died before taking the job"}, None
    deadline = time.monotonic() + timeout_s
    while not result_file.is_file():
        if worker.proc.poll() is not None:
            if result_file.is_file():
                break
            code = worker.proc.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exited {code} without a result"
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file.is_file() else []
            if children is not None:
                children.discard(worker.proc)
            return {"status": "transient", "error": f"worker {how}" + (f": {tail[0][:300]}" if tail else "")}, None
        if time.monotonic() > deadline:
            _kill_group(worker.proc)
            worker.proc.wait()
            if children is not None:
                children.discard(worker.proc)
            return {"status": "timeout", "error": f"timed out after {timeout_s:.0f} s (timeout_s); not retried"}, None
        time.sleep(0.05)
    result = json.loads(result_file.read_text())
    if not worker.can_take():  # it served its last job: it exits on EOF
        worker.retire(children)
        return result, None
    return result, worker
