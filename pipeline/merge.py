"""Merge the reports of CI shards (`python -m pipeline shard=I/N ...`, one run folder each) into one
report.json / report.md / junit.xml.

Pure Python (stdlib + pipeline.report); never imports torch, so merging is cheap in a CI job.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterable

from pipeline import report as report_mod

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
RUN_ID_PARTS = 3  # run ids named in the merged run id; more shards are counted, not listed


class MergeError(Exception):
    """Shard reports that cannot be merged; the message names the folder(s) at fault."""


def parse_runs(value: Any) -> list[Path]:
    """`runs=` from the command line: "DIR1,DIR2" (a quoted Hydra string), or a list ([DIR1,DIR2]).
    Empty entries are dropped."""
    if value is None:
        return []
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    return [Path(str(item).strip()) for item in items if str(item).strip()]


def _load(run_dir: Path) -> dict:
    if not run_dir.exists():
        raise MergeError(f"{run_dir}: run folder does not exist")
    if not run_dir.is_dir():
        raise MergeError(f"{run_dir}: not a folder")
    path = run_dir / "report.json"
    if not path.is_file():
        raise MergeError(f"{run_dir}: no report.json (did this shard's run finish?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise MergeError(f"{run_dir}: cannot read report.json: {e}") from e
    except json.JSONDecodeError as e:
        raise MergeError(f"{run_dir}: report.json is not valid JSON ({e}); truncated or not a pipeline report") from e
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise MergeError(f'{run_dir}: report.json is not a pipeline report (no "jobs" list)')
    if data.get("config") is not None and not isinstance(data["config"], dict):
        raise MergeError(f'{run_dir}: report.json\'s "config" is not an object')
    for n, row in enumerate(data["jobs"]):
        if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not row["key"]:
            raise MergeError(f"{run_dir}: report.json jobs[{n}] has no job key")
        if not isinstance(row.get("status"), str):
            raise MergeError(f"{run_dir}: report.json jobs[{n}] (key {row['key'][:12]}) has no status")
    return data


def _shard_of(run_dir: Path, data: dict) -> tuple[int, int] | None:
    spec = (data.get("config") or {}).get("shard")
    if spec is None:
        return None
    m = SHARD.match(str(spec))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise MergeError(f"{run_dir}: config.shard {spec!r} is not of the form i/N with 1 <= i <= N")
    return int(m.group(1)), int(m.group(2))


def _check_shards(shards: list[tuple[Path, tuple[int, int] | None]]) -> None:
    """Every shard of the same N; each i at most once; when all say their shard, every 1..N present."""
    known = [(d, s) for d, s in shards if s is not None]
    counts = {}
    for d, (_, n) in known:
        counts.setdefault(n, []).append(d)
    if len(counts) > 1:
        detail = "; ".join(f"N={n} in {', '.join(map(str, dirs))}" for n, dirs in sorted(counts.items()))
        raise MergeError(f"shards disagree about the shard count: {detail}")
    seen: dict[int, Path] = {}
    for d, (i, n) in known:
        if i in seen:
            raise MergeError(f"shard {i}/{n} appears twice: in {seen[i]} and {d}")
        seen[i] = d
    if known and len(known) == len(shards):
        n = known[0][1][1]
        missing = [i for i in range(1, n + 1) if i not in seen]
        if missing:
            have = ", ".join(f"{d} ({i}/{n})" for i, d in sorted(seen.items()))
            raise MergeError(", ".join(f"shard {i}/{n}" for i in missing) + f" missing; have {have}")


def _environment(sources: list[dict]) -> dict | None:
    """One environment for the merged report: the first shard's, unavailable if any shard's backend was,
    every host, and the advice of all shards (each line once)."""
    envs = [s["report"].get("environment") for s in sources if isinstance(s["report"].get("environment"), dict)]
    if not envs:
        return None
    env = copy.deepcopy(envs[0])
    unavailable = [e for e in envs if not e.get("backend_available", True)]
    if unavailable:
        env["backend_available"] = False
        env["unavailable_reason"] = unavailable[0].get("unavailable_reason")
    hosts = list(dict.fromkeys(str(e.get("host")) for e in envs if e.get("host")))
    if hosts:
        env["host"] = ", ".join(hosts)
    env["advice"] = list(dict.fromkeys(line for e in envs for line in (e.get("advice") or [])))
    return env


def merge_reports(run_dirs: list[Path], out_dir: Path) -> dict:
    """Merge the shards' run folders into one report written to `out_dir` (report.json, report.md,
    junit.xml, via report.write_report_files) and return it. Raises MergeError, naming the folder,
    on a missing/unreadable report.json, a job key in two shards, shards of different N, or (when
    every shard's config names its shard) a shard given twice or missing. Jobs keep the shards'
    order: by shard index when every shard has one, else the order of `run_dirs`."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise MergeError("no run folders to merge")
    out_dir = Path(out_dir)
    seen_dirs: dict[Path, Path] = {}
    for d in run_dirs:
        resolved = d.resolve()
        if resolved in seen_dirs:
            raise MergeError(f"{d}: given twice (also as {seen_dirs[resolved]})")
        seen_dirs[resolved] = d
    if out_dir.resolve() in seen_dirs:
        raise MergeError(
            f"{out_dir}: the output folder is one of the shards' run folders; its report would be overwritten"
        )

    sources = [{"dir": d, "report": _load(d)} for d in run_dirs]
    for s in sources:
        s["shard"] = _shard_of(s["dir"], s["report"])
    _check_shards([(s["dir"], s["shard"]) for s in sources])
    if all(s["shard"] is not None for s in sources):
        sources.sort(key=lambda s: s["shard"][0])

    owner: dict[str, Path] = {}
    jobs: list[dict] = []
    for s in sources:
        for row in s["report"]["jobs"]:
            key = row["key"]
            if key in owner:
                where = f"twice in {s['dir']}" if owner[key] == s["dir"] else f"in both {owner[key]} and {s['dir']}"
                raise MergeError(
                    f"job key {key[:12]} is {where}: overlapping shards (the same shard run twice, "
                    f"or shards of different sweeps?)"
                )
            owner[key] = s["dir"]
            jobs.append(row)

    run_ids = [str(s["report"].get("run_id") or s["dir"].name) for s in sources]
    run_id = "merged-" + "+".join(run_ids[:RUN_ID_PARTS])
    if len(run_ids) > RUN_ID_PARTS:
        run_id += f"+{len(run_ids) - RUN_ID_PARTS}-more"
    config = copy.deepcopy(sources[0]["report"].get("config") or {})
    config["shard"] = None
    merged = {
        "run_id": run_id,
        "merged_from": [
            {
                "dir": str(s["dir"]),
                "run_id": s["report"].get("run_id"),
                "shard": (s["report"].get("config") or {}).get("shard"),
                "jobs": len(s["report"]["jobs"]),
                "environment": s["report"].get("environment"),
            }
            for s in sources
        ],
        "config": config,
        "environment": _environment(sources),
        "jobs": jobs,
        "summary": report_mod.summary(jobs),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report_mod.write_report_files(out_dir, merged)
    report_mod.mark_latest(out_dir)
    return merged
