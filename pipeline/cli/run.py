"""mode=run: execute the plan, show progress, write the reports, return the exit code."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback

from rich.live import Live
from rich.table import Table

from pipeline import keys
from pipeline.cache import Cache
from pipeline.cli.console import console, err, print_advice, print_lines
from pipeline.executors.local import LocalExecutor, row_for
from pipeline.gc import describe as describe_gc
from pipeline.gc import gc
from pipeline.history import shared_history
from pipeline.plan import annotate, describe, write_plan
from pipeline.publish import publish_rows
from pipeline.report import STATUS_STYLE, new_run_dir, summary_counts, summary_table, write_reports


class Progress:
    """Live per-job status with elapsed time (a log line per finished job when not a TTY)."""

    def __init__(self, jobs: list[dict]):
        self.jobs = jobs
        self.state = ["queued"] * len(jobs)
        self.started: dict[int, float] = {}
        self.elapsed: dict[int, float] = {}
        self.lock = threading.Lock()
        self.live = (
            Live(self.render(), console=console, refresh_per_second=2, transient=True) if console.is_terminal else None
        )

    def render(self) -> Table:
        table = Table(title=f"{sum(s not in ('queued', 'running') for s in self.state)}/{len(self.jobs)} jobs done")
        for col in ("job", "key", "status", "elapsed"):
            table.add_column(col)
        now = time.perf_counter()
        for i, job in enumerate(self.jobs):
            el = self.elapsed.get(i, now - self.started[i] if i in self.started else 0.0)
            style = STATUS_STYLE.get(self.state[i], "white")
            table.add_row(
                describe(job), keys.short(job["key"]), f"[{style}]{self.state[i]}[/]", f"{el:.0f}s" if el else ""
            )
        return table

    def start(self, i: int, job: dict) -> None:
        with self.lock:
            self.state[i] = "running"
            self.started[i] = time.perf_counter()
            self._refresh()
        if self.live is None:
            console.print(f"[{i + 1}/{len(self.jobs)}] compiling {describe(job)} ({keys.short(job['key'])})")

    def done(self, i: int, row: dict) -> None:
        with self.lock:
            self.state[i] = row["status"]
            if i in self.started:
                self.elapsed[i] = time.perf_counter() - self.started[i]
            self._refresh()
        if self.live is None:
            extra = f": {row['error']}" if row.get("error") else ""
            console.print(f"[{i + 1}/{len(self.jobs)}] {row['status']} {describe(self.jobs[i])}{extra}", markup=False)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())


EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_INTERNAL = 3


class Interrupts:
    """SIGINT / SIGTERM during a run: the first stops it (children killed, report still written,
    exit 130 / 143); a second Ctrl-C ends the process at once (children killed first)."""

    def __init__(self, executor):
        self.executor = executor
        self.signum: int | None = None
        self.saved: dict[int, object] = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_SIGNAL:
                self.saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: no more waiting
            self.executor.children.kill_all()
            os._exit(EXIT_SIGNAL.get(signum, 130))
        self.signum = signum
        self.executor.stop(f"the run was interrupted ({signal.Signals(signum).name})")


def make_executor(cfg: dict, run_dir):
    if cfg["executor"]["name"] == "ray":
        from pipeline.executors.ray import RayExecutor  # lazy: ray is an optional extra, imported only when chosen

        return RayExecutor(cfg, run_dir)
    return LocalExecutor(cfg, run_dir)


def annotate_for(cfg: dict, jobs: list[dict]) -> dict:
    """`plan.annotate` as configured (shared cache's index read only when trusted,
    reuse_larger_shapes), printing the reused larger entries; the totals. For mode=plan and runs."""
    trusted = list((cfg.get("shared_cache") or {}).get("trusted_repos") or [])
    shared = lambda: shared_history(cfg["publish"], trusted)  # noqa: E731
    totals = annotate(jobs, Cache(cfg["cache"]["dir"]), shared, bool(cfg.get("reuse_larger_shapes")))
    for line in totals["reused"]:
        console.print(line, markup=False, soft_wrap=True)
    return totals


def run(resolved, jobs: list[dict]) -> int:
    """Execute the plan, publish, write the reports; the exit code. The reports are written
    whatever happens: a signal (exit 130 / 143), an internal error (exit 3)."""
    cfg = resolved.cfg
    run_dir = new_run_dir(cfg["report"]["dir"])
    annotate_for(cfg, jobs)  # estimates, rebuild reasons and reused larger entries, in plan.json and the rows
    try:
        write_plan(jobs, run_dir / "plan.json")
    except OSError as e:
        err.print(f"[bold red]could not write[/] {run_dir / 'plan.json'}: {e}; nothing was run", markup=False)
        return EXIT_INTERNAL
    print_advice(cfg, jobs)
    progress = Progress(jobs)
    executor = make_executor(cfg, run_dir)
    rows: list[dict | None] = [None] * len(jobs)
    internal = None

    def done(i: int, row: dict) -> None:
        if row["status"] != "cached" and jobs[i].get("rebuild"):
            row["rebuild"] = jobs[i]["rebuild"]["text"]
        row["estimate"] = jobs[i].get("estimate")
        if jobs[i].get("reused_for"):
            row["reused_for"] = jobs[i]["reused_for"]
        rows[i] = row
        progress.done(i, row)

    with Interrupts(executor) as interrupts:
        try:
            if progress.live is not None:
                with progress.live:
                    executor.execute(jobs, progress.start, done)
            else:
                executor.execute(jobs, progress.start, done)
            if cfg["publish"]["name"] != "none" and not executor.interrupted:
                print_lines(publish_rows([r for r in rows if r is not None], jobs, cfg))
        except Exception as e:  # our bug, or the machine's: still a report, and its own exit code
            internal = f"internal error: {type(e).__name__}: {e}"
            executor.stop(internal)
            err.print(traceback.format_exc(), markup=False)
        final = [
            r if r is not None else row_for(j, status="skipped", error=f"not run: {executor.stopped or internal}")
            for r, j in zip(rows, jobs)
        ]
        try:
            report = write_reports(run_dir, run_dir.name, cfg, final, extra={"stopped": executor.stopped})
        except OSError as e:
            err.print(f"[bold red]could not write the reports[/] in {run_dir}: {e}", soft_wrap=True)
            return EXIT_INTERNAL
    console.print(summary_table(final))
    cap = int(cfg["cache"]["max_size_gb"] * 1e9)
    cache = Cache(cfg["cache"]["dir"])
    # Keep the cache under its cap after every run that wrote to it (a local hit's row has no
    # timings: a run of hits only added nothing, and walking a big cache for nothing is not free).
    grew = any(r["status"] != "cached" or r.get("timings") for r in final)
    if grew and not executor.interrupted and cache.root.is_dir():
        collected = gc(cache, cap, cfg["cache"]["stale_tmp_hours"])
        if any(collected["removed"].values()):
            console.print(describe_gc(collected) + f" (cache.max_size_gb={cfg['cache']['max_size_gb']})", markup=False)
    s = report["summary"]
    console.print(summary_counts(s) + f"; reports in {run_dir}", markup=False)
    if interrupts.signum is not None:
        err.print(
            f"stopped by {signal.Signals(interrupts.signum).name}: running jobs interrupted, the rest skipped; "
            "a rerun reuses every finished entry",
            markup=False,
        )
        return EXIT_SIGNAL[interrupts.signum]
    if internal:
        err.print(internal, markup=False)
        return EXIT_INTERNAL
    return 0 if s["ok"] else 1
