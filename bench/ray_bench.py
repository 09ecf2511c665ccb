"""executor=local vs executor=ray on one machine, side by side in one run.

    python bench/ray_bench.py [--models tiny-bert tiny-distilbert] [--casts fp32 bf16] [--smoke] [--rounds 1]

Both arms run the same matrix through the CLI with `executor.workers=2`, each with a fresh cache
and a fresh TORCHINDUCTOR_CACHE_DIR (no arm reuses another's compiles): `executor=local` (a pool
of worker processes with standby) and `executor=ray` with no address (a local Ray cluster started
for the run, 2 CPUs, shut down after: its start-up is in the wall time). `--smoke` runs the smoke
sweep (14 jobs) instead of the small matrix. Prints the wall times, the per-job overhead (a job's
wall in the executor minus the worker's own `timings.total_s`, median) and the model-loading
time (`load_s`: where a cold process pays its torch/transformers imports), the CPU, and writes
bench/results/ray.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import lscpu, run_pipeline  # noqa: E402  (bench/ is the script's folder)

OUT = REPO / "bench" / "results" / "ray.md"


def run_arm(executor: str, matrix: list[str], work: Path) -> tuple[float, list[dict], str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0",
               TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"))  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return run_pipeline([*matrix, f"executor={executor}", "executor.workers=2"], work, env)


def stats(rows: list[dict]) -> dict:
    t = [r["timings"] for r in rows]
    return {
        "jobs": len(rows),
        "overhead_s": statistics.median(x["wall_s"] - x["total_s"] for x in t),
        "load_s": statistics.median(x.get("load_s", 0) for x in t),
        "compile_s": statistics.median(x.get("compile_s", 0) for x in t),
        "total_s": sum(x["total_s"] for x in t),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny-bert", "tiny-distilbert"])
    ap.add_argument("--casts", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--smoke", action="store_true", help="the smoke sweep (14 jobs) instead of the small matrix")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        print("executor=ray needs the ray extra: pip install -e '.[ray]'", file=sys.stderr)
        return 2

    from pipeline import tiny

    tiny.main([str(REPO / "artifacts" / "models")])
    if args.smoke:
        matrix, what = ["+sweep=smoke"], "smoke sweep (14 jobs)"
    else:
        matrix = [f"matrix.models=[{','.join(args.models)}]", f"matrix.cast_types=[{','.join(args.casts)}]",
                  "matrix.shapes=[{batch_size: 1, sequence_length: 16}]"]  # fmt: skip
        what = f"{' + '.join(args.models)} x {'/'.join(args.casts)}, b1 s16"
    cpu, flags = lscpu()
    load = [os.getloadavg()[0]]
    print(f"CPU: {cpu}\nFlags: {flags}\nmatrix: {what}; executor.workers=2, fresh caches per arm", flush=True)
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    rows_of: dict[str, list[dict]] = {"local": [], "ray": []}
    for r in range(args.rounds):
        for arm in (["local", "ray"] if r % 2 == 0 else ["ray", "local"]):
            work = Path(tempfile.mkdtemp(prefix=f"ray-bench-{arm}-"))
            try:
                wall, rows, _ = run_arm(arm, matrix, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            walls[arm].append(wall)
            rows_of[arm] += rows
            print(f"round {r + 1} {arm:5s}: {wall:6.1f} s wall, {len(rows)} jobs passed", flush=True)
    load.append(os.getloadavg()[0])
    s = {arm: stats(rows_of[arm]) for arm in walls}
    wall = {arm: statistics.mean(walls[arm]) for arm in walls}
    lines = [
        "| | executor=local | executor=ray (local cluster) |",
        "|---|---|---|",
        f"| wall time, whole run (s) | {wall['local']:.1f} | {wall['ray']:.1f} |",
        f"| sum of the workers' build time, total_s (s) | {s['local']['total_s']:.1f} | {s['ray']['total_s']:.1f} |",
        f"| per-job overhead: job wall - total_s, median (s) | {s['local']['overhead_s']:.2f} | "
        f"{s['ray']['overhead_s']:.2f} |",
        f"| model load incl. a cold process's imports, load_s, median (s) | {s['local']['load_s']:.2f} | "
        f"{s['ray']['load_s']:.2f} |",
        f"| compile_s, median (s) | {s['local']['compile_s']:.1f} | {s['ray']['compile_s']:.1f} |",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    notes = (
        f"Ray/local wall: {wall['ray'] / wall['local']:.2f}x. Ray's wall includes starting and stopping its local "
        "cluster; its per-job overhead is submission, scheduling, a worker process with the job's runtime_env and "
        "unpickling the task. Ray reserves `num_cpus` (1) per task and sets OMP_NUM_THREADS to it, so each Ray job "
        "compiles on 1 thread; each local worker uses every core (2 workers share 2 cores). Local standby workers "
        "import torch/transformers before their job (small load_s); a fresh Ray worker imports them inside the "
        f"job's load_s, and a reused one (max_calls) does not. Load average (1 min) at start / end: {load[0]:.1f} / "
        f"{load[1]:.1f} on {os.cpu_count()} CPUs (above the CPU count: other work shared the machine)."
    )
    print(notes)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        f"# executor=local vs executor=ray, one machine\n\n`python bench/ray_bench.py{' --smoke' if args.smoke else ''}"
        f"{f' --rounds {args.rounds}' if args.rounds > 1 else ''}`: {what}, `executor.workers=2`, fresh cache and "
        f"Inductor cache per arm, {args.rounds} round(s).\n\nCPU: {cpu}\n\nFlags: `{flags}`\n\n{table}\n\n{notes}\n"
    )
    print(f"written {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
