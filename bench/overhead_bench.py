"""Pipeline overhead: N jobs through the CLI vs the same compiles called directly (goal <= 1.10x),
with worker processes reused (executor.jobs_per_process=REUSE) and fresh per job (=1).

    python bench/overhead_bench.py [--models tiny-bert tiny-distilbert tiny-roberta] [--cast fp32] [--reuse 8]
    python bench/overhead_bench.py --smoke    # the whole smoke sweep (14 jobs), fresh vs reused processes only

Direct arm (one script, one process): for each model, load it, build the example inputs,
backend.compile(...) into a temp dir, backend.load(...) and run once. This is the floor: the
work any tool must do to produce one compiled artifact.
CLI arms: `python -m pipeline` over the same jobs (executor.workers=1, like the direct arm's
sequential loop), cold cache; "fresh" = executor.jobs_per_process=1 (each job in a new process,
started ahead while the previous job compiles), "reused" = one process serves up to REUSE jobs in
turn (later jobs keep Inductor's in-process state, as the direct arm does).
On top of the direct work it does: worker process start (spawn,
imports), the CPU fp32 reference, the fresh-process verification (a second interpreter that
loads the artifact), tokenizer/config files, manifest (sha256 of every file), reports.
Each arm gets its own empty TORCHINDUCTOR_CACHE_DIR so none reuses another's compiles.
The arms' order rotates over --rounds, to spread machine noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import lscpu, run_pipeline  # noqa: E402  (bench/ is the script's folder)

DIRECT = r"""
import json, sys, tempfile, time
from pathlib import Path
t0 = time.perf_counter()
import torch
from pipeline import tasks
from pipeline.backends import get_backend
from pipeline.keys import canonical_cast_type
models, cast, batch, seq = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
backend = get_backend("inductor", {"name": "inductor", "device": "cpu", "inductor_configs": {"freezing": True}})
per = []
for path, task in models:
    t = time.perf_counter()
    model = tasks.load_eager_model(task, path)
    inputs = tasks.example_inputs(model.config.to_dict(), batch, seq, 0, None)
    shapes = {"batch_size": batch, "sequence_length": seq}
    spec = {"task": task, "cast_type": canonical_cast_type(cast), "shapes": shapes}
    with tempfile.TemporaryDirectory() as d:
        section = backend.compile(model, inputs, spec, Path(d))
        out = backend.load(Path(d), section)(**inputs)
        assert all(torch.isfinite(v.float()).all() for v in out.values())
    per.append(time.perf_counter() - t)
print(json.dumps({"total_s": time.perf_counter() - t0, "per_job_s": per}))
"""


def run_direct(models: list[tuple[str, str]], cast: str, batch: int, seq: int, env: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", DIRECT, json.dumps(models), cast, str(batch), str(seq)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(
    names: list[str], cast: str, batch: int, seq: int, work: Path, env: dict, per_process: int, smoke: bool
) -> tuple[float, list[dict]]:
    args = ["+sweep=smoke", f"executor.jobs_per_process={per_process}", "executor.workers=1"]
    if not smoke:
        args += [
            f"matrix.models=[{','.join(names)}]",
            f"matrix.cast_types=[{cast}]",
            f"matrix.shapes=[{{batch_size:{batch},sequence_length:{seq}}}]",
            "matrix.include=[]",
            "matrix.exclude=[]",
        ]
    wall, rows, _ = run_pipeline(args, work, env)
    return wall, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny-bert", "tiny-distilbert", "tiny-roberta"])
    ap.add_argument("--cast", default="fp32")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--reuse", type=int, default=8, help="jobs_per_process of the reused arm")
    ap.add_argument("--smoke", action="store_true", help="the smoke sweep, fresh vs reused (no direct arm)")
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from pipeline import tiny

    cpu, flags = lscpu()
    print(f"CPU: {cpu}\nflags: {flags}", flush=True)
    tiny.main([str(REPO / "artifacts" / "models"), *([] if args.smoke else args.models)])
    models = []
    for name in args.models:
        cfg = OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")
        models.append((str(REPO / cfg.id), cfg.task))
    arms = ["reused", "fresh"] if args.smoke else ["reused", "fresh", "direct"]
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            work = Path(tempfile.mkdtemp(prefix=f"overhead-{arm}-"))
            env = dict(
                os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(work / "inductor")
            )
            try:
                if arm == "direct":
                    wall, info = run_direct(models, args.cast, args.batch, args.seq, env)
                    results["direct"].append({"wall_s": wall, **info})
                    per = ", ".join(f"{x:.1f}" for x in info["per_job_s"])
                    print(f"round {r + 1} direct: {wall:.1f} s wall (per job {per} s)", flush=True)
                    continue
                per_process = args.reuse if arm == "reused" else 1
                wall, rows = run_cli(args.models, args.cast, args.batch, args.seq, work, env, per_process, args.smoke)
                results[arm].append({"wall_s": wall, "timings": [row["timings"] for row in rows]})
                print(f"round {r + 1} {arm} (jobs_per_process={per_process}): {wall:.1f} s wall", flush=True)
                for row in rows:
                    t = row["timings"]
                    nums = "  ".join(f"{k} {v}" for k, v in sorted(t.items()) if isinstance(v, (int, float)))
                    print(f"    {row['model']:16s} {row['cast_type']:5s} {nums}")
            finally:
                shutil.rmtree(work, ignore_errors=True)
    mean = {arm: sum(x["wall_s"] for x in xs) / len(xs) for arm, xs in results.items()}
    jobs = len(results["reused"][0]["timings"])
    print(f"\n{jobs} jobs, {args.rounds} round(s), CPU {cpu}")
    print(
        f"reused processes (jobs_per_process={args.reuse}) {mean['reused']:.1f} s vs fresh (=1) {mean['fresh']:.1f} s "
        f"-> fresh/reused {mean['fresh'] / mean['reused']:.2f}x"
    )
    if "direct" in mean:
        ratio = mean["reused"] / mean["direct"]
        print(
            f"vs the direct script {mean['direct']:.1f} s: reused {ratio:.2f}x (goal <= 1.10x: "
            f"{'MET' if ratio <= 1.10 else 'NOT MET'}), fresh {mean['fresh'] / mean['direct']:.2f}x"
        )
    keys = ("load_s", "reference_s", "compile_s", "verify_s", "total_s")
    for arm in ("reused", "fresh"):
        avg = {k: sum(t.get(k, 0) or 0 for x in results[arm] for t in x["timings"]) / len(results[arm]) for k in keys}
        print(f"{arm}: time split (sum over jobs): " + ", ".join(f"{k} {avg[k]:.1f}" for k in keys))
        print(f"  outside the workers' build (start, imports, planning, reports): {mean[arm] - avg['total_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
