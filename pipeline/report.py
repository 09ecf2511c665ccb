"""Run folders and reports: console table, report.json, report.md, junit.xml."""

from __future__ import annotations

import json
import os
import platform
import re
import time
import uuid
from pathlib import Path

from pipeline.backends import get_backend


def new_run_dir(root: str) -> Path:
    """<root>/<run-id>/ (`mark_latest` points <root>/latest at it once its files are written)."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    d = Path(root) / run_id
    d.mkdir(parents=True, exist_ok=True)
    return d


def mark_latest(run_dir: Path) -> None:
    """<root>/latest -> run_dir, atomically; called after the run's files are complete, so
    `latest` never points at a run whose plan or report could not be written."""
    tmp = run_dir.parent / f".latest-{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, run_dir.parent / "latest")


# Every status a row can have, in the order summaries list them. `interrupted`: the run was stopped
# while this job ran. Only `passed` and `cached` are ok; `skipped` is neither ok nor a junit failure.
STATUSES = ("passed", "cached", "failed", "failed-to-publish", "interrupted", "skipped")
OK_STATUSES = ("passed", "cached")
STATUS_STYLE = {
    "passed": "green",
    "cached": "cyan",
    "failed": "red",
    "skipped": "yellow",
    "failed-to-publish": "red",
    "interrupted": "magenta",
}


def summary(rows: list[dict]) -> dict:
    out = {"jobs": len(rows)}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    out["ok"] = all(r["status"] in OK_STATUSES for r in rows)
    return out


def summary_counts(s: dict) -> str:
    """'14 jobs: 10 passed, 2 cached, 1 failed, 1 interrupted' from a summary(); statuses not in
    STATUSES (none today) are listed after the known ones."""
    known = [k for k in STATUSES if s.get(k)]
    other = sorted(
        k
        for k, v in s.items()
        if k not in (*STATUSES, "jobs", "ok") and isinstance(v, int) and not isinstance(v, bool) and v
    )
    return f"{s['jobs']} jobs: " + ", ".join(f"{s[k]} {k}" for k in known + other)


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
    backend = get_backend(cfg["backend"]["name"], cfg["backend"])
    reason = backend.available()
    return {
        "backend": backend.name,
        "backend_available": reason is None,
        "unavailable_reason": reason,
        "platform": backend.toolchain().get("platform"),
        "host": platform.node(),
        "python": platform.python_version(),
        "advice": backend.advice(set(cast_types)),
    }


# ANSI/VT escape sequences: CSI (colours, cursor moves), OSC (titles, hyperlinks; ended by BEL or ST),
# and the other two-character escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
# Characters XML 1.0 does not allow anywhere, even as character references (lone surrogates included).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def xml_safe(text) -> str:
    """`text` without ANSI escape sequences, with every character XML 1.0 forbids (NUL, other C0
    controls but tab/newline/CR, lone surrogates, U+FFFE/U+FFFF) written out as `\\xNN`/`\\uNNNN`
    so the message stays readable. Escape the result as usual (xml.sax.saxutils)."""
    return _NOT_XML.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
        strip_ansi(str(text)),
    )


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `path` so that readers see the old file or the whole new one, never a part: a temp file
    in the same folder, fsync, os.replace. The temp file is removed if anything fails (full disk...)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for a plain open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; best effort (not every filesystem/OS allows fsync on a folder)
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _case_name(r: dict) -> str:
    shapes = r.get("shapes") or {}
    return (
        f"{r.get('model')}-{r.get('task')}-b{shapes.get('batch_size')}-s{shapes.get('sequence_length')}-"
        f"{r.get('cast_type')}-{r.get('backend')}"
    )


def render_markdown(report: dict) -> str:
    """report.md: paste-able into a CI summary."""
    rows, s, env = report["jobs"], report["summary"], report.get("environment")
    md = [f"## pipeline run `{report['run_id']}`", ""]
    if report.get("merged_from"):
        sources = [
            f"`{m.get('run_id')}`" + (f" (shard {m['shard']})" if m.get("shard") else "") for m in report["merged_from"]
        ]
        md += [f"Merged from {len(sources)} run(s): " + ", ".join(sources), ""]
    md += [summary_counts(s), ""]
    if env:
        if env["backend_available"]:
            md.append(
                f"Backend `{env['backend']}` ran and verified here ({env['host']}, {json.dumps(env['platform'])})."
            )
        else:
            md.append(
                f"Backend `{env['backend']}` is NOT available here ({env['unavailable_reason']}): "
                "nothing was compiled or verified."
            )
        md += ["", *[f"> note: {line}\n" for line in env.get("advice") or []]]
    md += [
        "| model | task | batch | seq | cast | backend | key | status | metrics / error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        detail = xml_safe(r.get("error") or _metric_brief(r)).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
        shapes = r.get("shapes") or {}
        cells = [
            r.get("model"),
            r.get("task"),
            shapes.get("batch_size"),
            shapes.get("sequence_length"),
            r.get("cast_type"),
            r.get("backend"),
            f"`{str(r.get('key'))[:12]}`",
            r["status"],
            detail,
        ]
        md.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(md) + "\n"


def render_junit(report: dict) -> str:
    """junit.xml: one testcase per job; anything not passed/cached/skipped (failed, failed-to-publish,
    interrupted) is a failure. Always well-formed XML, whatever the error messages contain."""
    from xml.sax.saxutils import escape, quoteattr

    rows = report["jobs"]
    failures = sum(r["status"] not in (*OK_STATUSES, "skipped") for r in rows)
    skipped = sum(r["status"] == "skipped" for r in rows)
    cases = []
    for r in rows:
        t = (r.get("timings") or {}).get("wall_s") or 0
        error = xml_safe(r.get("error") or "")
        body = ""
        if r["status"] == "skipped":
            body = f"<skipped message={quoteattr(error)}/>"
        elif r["status"] not in OK_STATUSES:
            message = error or ("the run was stopped while this job ran" if r["status"] == "interrupted" else "")
            body = f"<failure message={quoteattr(message)}>{escape(message)}</failure>"
        name = quoteattr(xml_safe(_case_name(r)))
        cases.append(f'  <testcase classname="pipeline" name={name} time="{t}">{body}</testcase>')
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuite name="pipeline" tests="{len(rows)}" failures="{failures}" skipped="{skipped}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )


def write_report_files(run_dir: Path, report: dict) -> None:
    """report.json, report.md and junit.xml in `run_dir` from a report dict (as built by
    write_reports or merge.merge_reports), each written atomically."""
    run_dir = Path(run_dir)
    _atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1, sort_keys=True, default=str))
    _atomic_write_text(run_dir / "report.md", render_markdown(report))
    _atomic_write_text(run_dir / "junit.xml", render_junit(report))


def build_report(run_id: str, cfg: dict, rows: list[dict]) -> dict:
    env = environment(cfg, {r["cast_type"] for r in rows})
    return {"run_id": run_id, "config": cfg, "environment": env, "jobs": rows, "summary": summary(rows)}


def write_reports(run_dir: Path, run_id: str, cfg: dict, rows: list[dict], extra: dict | None = None) -> dict:
    """Build the report (plus `extra` top-level fields, e.g. why the run stopped) and write its files."""
    report = dict(build_report(run_id, cfg, rows), **(extra or {}))
    write_report_files(run_dir, report)
    mark_latest(run_dir)
    return report


def summary_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="summary")
    for col in ("model", "task", "batch", "seq", "cast", "backend", "key", "status", "time", "metrics / error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "white")
        t = (r.get("timings") or {}).get("wall_s")
        shapes = r["shapes"]
        table.add_row(
            r["model"],
            r["task"],
            str(shapes.get("batch_size")),
            str(shapes.get("sequence_length")),
            r["cast_type"],
            r["backend"],
            r["key"][:12],
            f"[{style}]{r['status']}[/]",
            f"{t:.1f}s" if t else "-",
            r.get("error") or _metric_brief(r),
        )
    return table
