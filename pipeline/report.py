"""Run folders and reports: console table, report.json, report.md, junit.xml."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def new_run_dir(root: str) -> Path:
    """<root>/<run-id>/ and <root>/latest pointing at it."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = Path(root) / run_id
    d.mkdir(parents=True, exist_ok=True)
    latest = Path(root) / "latest"
    tmp = Path(root) / f".latest-{run_id}"
    tmp.symlink_to(run_id)
    os.replace(tmp, latest)
    return d


STATUS_STYLE = {"passed": "green", "cached": "cyan", "failed": "red", "skipped": "yellow", "failed-to-publish": "red"}


def summary(rows: list[dict]) -> dict:
    out = {"jobs": len(rows)}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    out["ok"] = all(r["status"] in ("passed", "cached") for r in rows)
    return out


def _metric_brief(row: dict) -> str:
    parts = []
    for name, m in (row.get("metrics") or {}).items():
        if "max_abs" in m:
            parts.append(f"{name}: max_abs {m['max_abs']:.2g} cos {m.get('cosine', float('nan')):.6f}")
        if "agreement_length" in m:
            parts.append(f"greedy agreement {m['agreement_length']}/{m['compared_tokens']} tokens")
    return "; ".join(parts)


def environment(cfg: dict, cast_types: set[str] = frozenset()) -> dict:
    """Where this run verified its artifacts: the backend, whether it can run here, the platform,
    and the backend's advice for the run's cast types."""
    import platform

    from pipeline.backends import get_backend

    backend = get_backend(cfg["backend"]["name"], cfg["backend"])
    reason = backend.available()
    return {"backend": backend.name, "backend_available": reason is None, "unavailable_reason": reason,
            "platform": backend.toolchain().get("platform"), "host": platform.node(), "python": platform.python_version(),
            "advice": backend.advice(set(cast_types))}


def write_reports(run_dir: Path, run_id: str, cfg: dict, rows: list[dict]) -> dict:
    import json
    from xml.sax.saxutils import escape, quoteattr

    env = environment(cfg, {r["cast_type"] for r in rows})
    report = {"run_id": run_id, "config": cfg, "environment": env, "jobs": rows, "summary": summary(rows)}
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str))

    s = report["summary"]
    md = [f"## pipeline run `{run_id}`", "",
          f"{s['jobs']} jobs: " + ", ".join(f"{s.get(k, 0)} {k}" for k in ("passed", "cached", "failed", "failed-to-publish", "skipped") if s.get(k)), "",
          (f"Backend `{env['backend']}` ran and verified here ({env['host']}, {json.dumps(env['platform'])})." if env["backend_available"]
           else f"Backend `{env['backend']}` is NOT available here ({env['unavailable_reason']}): nothing was compiled or verified."), "",
          *[f"> note: {line}\n" for line in env["advice"]],
          "| model | task | batch | seq | cast | backend | key | status | metrics / error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        detail = (r.get("error") or _metric_brief(r)).replace("|", "\\|").replace("\n", " ")
        md.append(f"| {r['model']} | {r['task']} | {r['shapes'].get('batch_size')} | {r['shapes'].get('sequence_length')} | "
                  f"{r['cast_type']} | {r['backend']} | `{r['key'][:12]}` | {r['status']} | {detail} |")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")

    failures = sum(r["status"] not in ("passed", "cached", "skipped") for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    cases = []
    for r in rows:
        name = f"{r['model']}-{r['task']}-b{r['shapes'].get('batch_size')}-s{r['shapes'].get('sequence_length')}-{r['cast_type']}-{r['backend']}"
        t = (r.get("timings") or {}).get("wall_s", 0)
        body = ""
        if r["status"] == "skipped":
            body = f"<skipped message={quoteattr(r.get('error') or '')}/>"
        elif r["status"] not in ("passed", "cached"):
            body = f"<failure message={quoteattr(r.get('error') or '')}>{escape(r.get('error') or '')}</failure>"
        cases.append(f'  <testcase classname="pipeline" name={quoteattr(name)} time="{t}">{body}</testcase>')
    xml = (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="pipeline" tests="{len(rows)}" failures="{failures}" '
           f'skipped="{skipped}">\n' + "\n".join(cases) + "\n</testsuite>\n")
    (run_dir / "junit.xml").write_text(xml)
    return report


def summary_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="summary")
    for col in ("model", "task", "batch", "seq", "cast", "backend", "key", "status", "time", "metrics / error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "white")
        t = (r.get("timings") or {}).get("wall_s")
        table.add_row(r["model"], r["task"], str(r["shapes"].get("batch_size")), str(r["shapes"].get("sequence_length")),
                      r["cast_type"], r["backend"], r["key"][:12], f"[{style}]{r['status']}[/]",
                      f"{t:.1f}s" if t else "-", r.get("error") or _metric_brief(r))
    return table
