"""mode=run: execute the plan, show progress, write the reports, return the exit code."""

from __future__ import annotations

import threading
import time

from rich.live import Live
from rich.table import Table

from pipeline import keys
from pipeline.cli.console import console, print_advice, print_lines
from pipeline.executors import local
from pipeline.plan import describe, write_plan
from pipeline.publish import publish_rows
from pipeline.report import STATUS_STYLE, new_run_dir, summary_table, write_reports


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


def run(resolved, jobs: list[dict]) -> int:
    cfg = resolved.cfg
    run_dir = new_run_dir(cfg["report"]["dir"])
    write_plan(jobs, run_dir / "plan.json")
    print_advice(cfg, jobs)
    progress = Progress(jobs)
    if progress.live is not None:
        with progress.live:
            rows = local.execute(jobs, cfg, run_dir, progress.start, progress.done)
    else:
        rows = local.execute(jobs, cfg, run_dir, progress.start, progress.done)
    if cfg["publish"]["name"] != "none":
        print_lines(publish_rows(rows, jobs, cfg))
    report = write_reports(run_dir, run_dir.name, cfg, rows)
    console.print(summary_table(rows))
    s = report["summary"]
    console.print(
        f"{s['jobs']} jobs: "
        + ", ".join(
            f"{s.get(k, 0)} {k}" for k in ("passed", "cached", "failed", "failed-to-publish", "skipped") if s.get(k)
        )
        + f"; reports in {run_dir}"
    )
    return 0 if s["ok"] else 1
