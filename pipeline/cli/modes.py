"""What each mode does. `dispatch` returns the exit code (see the CLI contract)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from pipeline import keys
from pipeline.cache import Cache
from pipeline.cli.console import console, err, print_advice
from pipeline.cli.run import annotate_for, run
from pipeline.gc import describe as describe_gc
from pipeline.gc import gc
from pipeline.listing import age, local_variants, shared_variants
from pipeline.merge import MergeError, merge_reports
from pipeline.model_entries import RevisionError
from pipeline.plan import combinations, describe, plan, write_plan
from pipeline.report import mark_latest, new_run_dir
from pipeline.shared_cache import describe as shared_name
from pipeline.sync import SyncError, sync
from pipeline.validate import ConfigError, validate

NEEDS_NO_VALIDATION = ("gc", "explain", "merge", "ls", "sync")  # modes that read the cache or reports, not the matrix


def dispatch(cfg: dict, model_choice: str | None = None) -> int:
    cfg.pop("hydra", None)
    if model_choice and isinstance(cfg.get("model"), dict):
        cfg["model"].setdefault("name", model_choice)  # +model=<file>: named like in matrix.models
    try:
        resolved = validate(cfg) if cfg.get("mode") not in NEEDS_NO_VALIDATION else None
    except ConfigError as e:
        err.print(f"[bold red]config error[/] ({len(e.errors)} problem{'s' * (len(e.errors) != 1)}):")
        for line in e.errors:
            err.print(f"  {line}", markup=False, soft_wrap=True)  # one problem per line, never wrapped
        return 2
    mode = cfg.get("mode", "run")
    if mode == "validate":
        n = sum(1 for _ in combinations(resolved.cfg, resolved.models))
        console.print(
            f"config OK: {len(resolved.models)} models, {n} combinations (revisions are resolved by mode=plan/run)"
        )
        return 0
    if mode == "plan":
        return plan_mode(resolved)
    if mode == "explain":
        return explain_mode(cfg)
    if mode == "gc":
        return gc_mode(cfg)
    if mode == "ls":
        return ls_mode(cfg)
    if mode == "merge":
        return merge_mode(cfg)
    if mode == "sync":
        return sync_mode(cfg)
    return run(resolved, _plan_or_exit(resolved))


def _plan_or_exit(resolved) -> list[dict]:
    try:
        return plan(resolved)
    except RevisionError as e:
        err.print(f"[bold red]cannot plan[/]: {escape(str(e))}", soft_wrap=True)
        raise SystemExit(2)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


WHY = {"new": "new variant", "shared-hit": "shared cache", "shared": "rebuild (shared)"}  # plan table's "why"


def plan_mode(resolved) -> int:
    cfg = resolved.cfg
    jobs = _plan_or_exit(resolved)
    totals = annotate_for(cfg, jobs)
    table = Table(title=f"plan: {len(jobs)} jobs")
    for col in ("#", "model", "task", "batch", "seq", "cast", "backend", "key", "status", "est.", "why"):
        table.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    shown = 200  # a table of thousands of rows is slow to draw and unreadable: plan.json has them all
    for i, job in enumerate(jobs, 1):
        status = job["status"]
        counts[status] = counts.get(status, 0) + 1
        if i > shown:
            continue
        style = {"hit": "green", "failed-before": "red", "refit": "cyan"}.get(status, "yellow")
        table.add_row(
            str(i),
            job["model"]["name"],
            job["task"],
            str(job["shapes"].get("batch_size")),
            str(job["shapes"].get("sequence_length")),
            job["cast_type"],
            job["backend"],
            keys.short(job["key"]),
            f"[{style}]{status}[/]",
            "-" if status == "hit" else _minutes(job["estimate"]["seconds"]),
            "" if status == "hit" else WHY.get((job.get("rebuild") or {}).get("kind"), "rebuild"),
        )
    if len(jobs) > shown:
        table.caption = f"first {shown} of {len(jobs)} jobs; every job is in plan.json"
    console.print(table)
    console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to do")
    rebuilds = [j for j in jobs if (j.get("rebuild") or {}).get("against")]
    for job in rebuilds[:shown]:
        console.print(
            f"{keys.short(job['key'])} {describe(job)}: {job['rebuild']['text']}", markup=False, soft_wrap=True
        )
    workers = int(cfg["executor"]["workers"])
    if totals["misses"]:
        bases = sorted({j["estimate"]["basis"] for j in jobs if j["status"] != "hit"})
        console.print(
            f"estimated: {totals['misses']} to build"
            + (f" ({totals['refits']} by refit of a program built once per architecture)" if totals["refits"] else "")
            + f", {_minutes(totals['miss_s'])} of compile + verify, "
            f"~{_minutes(totals['miss_s'] / workers)} on {workers} worker{'s' * (workers != 1)}; "
            f"the {totals['hits']} hits save ~{_minutes(totals['hit_saved_s'])} (basis: {'; '.join(bases)})",
            markup=False,
            soft_wrap=True,
        )
    print_advice(cfg, jobs)
    run_dir = new_run_dir(cfg["report"]["dir"])
    try:
        write_plan(jobs, run_dir / "plan.json")
    except OSError as e:
        err.print(f"[bold red]could not write[/] {run_dir / 'plan.json'}: {escape(str(e))}", soft_wrap=True)
        return 3
    mark_latest(run_dir)
    console.print(f"plan written to {run_dir / 'plan.json'}")
    return 0


def _known_specs(cfg: dict) -> dict[str, dict]:
    """key -> spec from the cache (entries, failures) and recent plans."""
    cache = Cache(cfg["cache"]["dir"])
    out: dict[str, dict] = {}
    for entry in cache.entries():
        m = cache.manifest(entry.name)
        if m and "spec" in m:
            out[entry.name] = m["spec"]
    for f in (cache.root / ".failures").glob("*.json") if (cache.root / ".failures").is_dir() else []:
        rec = cache.failure(f.stem)
        if rec and "spec" in rec:
            out.setdefault(f.stem, rec["spec"])
    runs = Path(cfg["report"]["dir"])
    for plan_file in sorted(runs.glob("*/plan.json"), reverse=True)[:20] if runs.is_dir() else []:
        try:
            for job in json.loads(plan_file.read_text())["jobs"]:
                out.setdefault(job["key"], job["spec"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def _find(specs: dict[str, dict], prefix: str) -> tuple[str, dict] | None:
    hits = [k for k in specs if k.startswith(prefix.lower())]
    if len(hits) == 1:
        return hits[0], specs[hits[0]]
    if not hits:
        err.print(f"no known key starts with {prefix!r} (searched the cache, its failures and recent plans)")
    else:
        err.print(f"{prefix!r} is ambiguous: {', '.join(keys.short(h) for h in hits)}")
    return None


def explain_mode(cfg: dict) -> int:
    if cfg.get("key") in (None, ""):  # not `not key`: Hydra reads key=0 as the int 0, a valid one-digit prefix
        err.print("mode=explain needs key=<key or prefix> (and optionally against=<other key>)")
        return 2
    for name in ("key", "against"):
        if isinstance(cfg.get(name), (float, bool)):  # Hydra reads e.g. key=12e3 as 12000.0
            err.print(
                f"{name}: Hydra read the value as a {type(cfg[name]).__name__} ({cfg[name]!r}), not a key prefix; "
                f"quote it: {name}=\"'<prefix>'\"",
                markup=False,
            )
            return 2
    specs = _known_specs(cfg)
    a = _find(specs, str(cfg["key"]))
    if a is None:
        return 2
    if cfg.get("against") not in (None, ""):
        b = _find(specs, str(cfg["against"]))
        if b is None:
            return 2
        rows = keys.diff(a[1], b[1])
        table = Table(title=f"{keys.short(a[0])} vs {keys.short(b[0])}: {len(rows)} fields differ")
        for col in ("field", keys.short(a[0]), keys.short(b[0])):
            table.add_column(col)
        for path, va, vb in rows:
            table.add_row(path, json.dumps(va), json.dumps(vb))
        console.print(table)
        return 0
    assert keys.key_of(a[1]) == a[0], "stored spec does not hash to its key"
    table = Table(title=f"key {a[0]}")
    table.add_column("field")
    table.add_column("value")
    for path, value in keys.flatten(a[1]).items():
        table.add_row(path, json.dumps(value))
    console.print(table)
    return 0


def merge_mode(cfg: dict) -> int:
    """Merge CI shards' reports (runs=DIR1,DIR2,...) into one report under report.dir."""
    runs = [r.strip() for r in str(cfg.get("runs") or "").split(",") if r.strip()]
    if not runs:
        err.print(
            "mode=merge needs \"runs='DIR1,DIR2,...'\" (the shards' run folders, each with a report.json; "
            "the quotes keep Hydra from reading the commas as a sweep)",
            markup=False,
        )
        return 2
    out = new_run_dir(cfg["report"]["dir"])
    try:
        report = merge_reports([Path(r) for r in runs], out)
    except MergeError as e:
        err.print(f"[bold red]cannot merge[/]: {escape(str(e))}", soft_wrap=True)
        return 2
    s = report["summary"]
    console.print(
        f"merged {len(runs)} runs: {s['jobs']} jobs, "
        + ", ".join(f"{v} {k}" for k, v in sorted(s.items()) if k not in ("jobs", "ok"))
        + f"; reports in {out}",
        markup=False,
    )
    return 0 if s["ok"] else 1


def ls_mode(cfg: dict) -> int:
    """mode=ls [+model=NAME]: the cached variants, local (and shared, when its index is readable),
    optionally of one model (a configs/model file; its name or id is matched)."""
    chosen = cfg.get("model")
    model = chosen.get("name") or chosen.get("id") if isinstance(chosen, dict) else chosen
    variants = local_variants(Cache(cfg["cache"]["dir"]), model)
    shared = shared_variants(cfg["publish"], model)
    variants += shared
    if shared:
        console.print(f"shared: {shared_name(cfg['publish'])}", markup=False, soft_wrap=True)
    table = Table(title=f"{len(variants)} cached variants" + (f" of {model}" if model else ""))
    for col in (
        "where",
        "model",
        "task",
        "batch",
        "seq",
        "cast",
        "backend",
        "platform",
        "toolchain",
        "verified",
        "size",
        "age",
        "key",
    ):
        table.add_column(col, overflow="fold")
    for v in sorted(variants, key=lambda v: (v.model, v.task, v.cast_type, str(v.shapes), v.where)):
        table.add_row(
            v.where,
            v.model,
            v.task,
            str(v.shapes.get("batch_size")),
            str(v.shapes.get("sequence_length")),
            v.cast_type,
            v.backend,
            v.platform,
            v.toolchain,
            v.metrics,
            f"{v.size_bytes / 1e6:.1f} MB" if v.size_bytes is not None else "-",
            age(v.created_at),
            keys.short(v.key),
        )
    console.print(table)
    return 0


def gc_mode(cfg: dict) -> int:
    cache = Cache(cfg["cache"]["dir"])
    result = gc(cache, int(cfg["cache"]["max_size_gb"] * 1e9), cfg["cache"]["stale_tmp_hours"])
    console.print(describe_gc(result), markup=False)
    return 0


def sync_mode(cfg: dict) -> int:
    """mode=sync publish=hub publish.cache_repo=ORG/NAME: push the verified local entries."""
    try:
        result = sync(cfg)
    except SyncError as e:
        err.print(f"[bold red]cannot sync[/]: {escape(str(e))}", soft_wrap=True)
        return 2
    where = cfg["publish"]["cache_repo"]
    for r in result.rows:
        line = f"{r['status']:<17} {keys.short(r['key'])} {r.get('model', '')} -> {where}:{r.get('cache_path', '')}"
        if r.get("commit"):
            line += f" (commit {str(r['commit'])[:10]})"
        console.print(line + (f": {r['error']}" if r.get("error") else ""), markup=False, soft_wrap=True)
    for key, why in result.skipped:
        console.print(f"{'not pushed':<17} {keys.short(key)}: {why}", markup=False, soft_wrap=True)
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no verified entries"
    console.print(f"sync to {where}: {summary}; {len(result.skipped)} not pushed", markup=False, soft_wrap=True)
    return 0 if result.ok else 1
