"""Pipeline overhead: N jobs through the CLI vs the same compiles called directly (goal <= 1.05x).

    python bench/overhead_bench.py [--models tiny-bert tiny-distilbert tiny-roberta] [--cast fp32]

Direct arm (one script, one process): for each model, load it, build the example inputs,
backend.compile(...) into a temp dir, backend.load(...) and run once. This is the floor: the
work any tool must do to produce one compiled artifact.
CLI arm: `python -m pipeline` over the same jobs (executor.workers=1, like the direct arm's
sequential loop), cold cache. A third arm runs the CLI with `executor.standby=false` (each job's
process starts cold, doing its imports after the previous job ended) to show what standby saves.
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

from common import run_pipeline  # noqa: E402  (bench/ is the script's folder)

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
    names: list[str], cast: str, batch: int, seq: int, work: Path, env: dict, standby: bool
) -> tuple[float, list[dict]]:
    args = [
        "+sweep=smoke",
        f"executor.standby={str(standby).lower()}",
        f"matrix.models=[{','.join(names)}]",
        f"matrix.cast_types=[{cast}]",
        f"matrix.shapes=[{{batch_size:{batch},sequence_length:{seq}}}]",
        "executor.workers=1",
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
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from pipeline import tiny

    tiny.main([str(REPO / "artifacts" / "models"), *args.models])
    models = []
    for name in args.models:
        cfg = OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")
        models.append((str(REPO / cfg.id), cfg.task))
    results = {"cli": [], "cli-nostandby": [], "direct": []}
    arms = list(results)
    for r in range(args.rounds):
        for arm in arms[r % 3 :] + arms[: r % 3]:
            work = Path(tempfile.mkdtemp(prefix=f"overhead-{arm}-"))
            env = dict(
                os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(work / "inductor")
            )
            try:
                if arm == "direct":
                    wall, info = run_direct(models, args.cast, args.batch, args.seq, env)
                    results["direct"].append({"wall_s": wall, **info})
                    print(
                        f"round {r + 1} direct: {wall:.1f} s wall (per job "
                        f"{', '.join(f'{x:.1f}' for x in info['per_job_s'])} s)",
                        flush=True,
                    )
                else:
                    wall, rows = run_cli(args.models, args.cast, args.batch, args.seq, work, env, standby=arm == "cli")
                    timings = [r_["timings"] for r_ in rows]
                    results[arm].append({"wall_s": wall, "timings": timings})
                    print(f"round {r + 1} {arm}: {wall:.1f} s wall", flush=True)
                    for row in rows:
                        t = row["timings"]
                        print(
                            f"    {row['model']:16s} "
                            + "  ".join(f"{k} {v}" for k, v in sorted(t.items()) if isinstance(v, (int, float)))
                        )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    cli = sum(x["wall_s"] for x in results["cli"]) / len(results["cli"])
    cold = sum(x["wall_s"] for x in results["cli-nostandby"]) / len(results["cli-nostandby"])
    direct = sum(x["wall_s"] for x in results["direct"]) / len(results["direct"])
    n = len(args.models)
    print(
        f"\n{n} jobs ({args.cast}, b{args.batch} s{args.seq}): CLI {cli:.1f} s vs direct {direct:.1f} s -> ratio "
        f"{cli / direct:.2f}x "
        f"(goal <= 1.05x: {'MET' if cli / direct <= 1.05 else 'NOT MET'}); with executor.standby=false {cold:.1f} s "
        f"-> {cold / direct:.2f}x"
    )
    # where the extra time goes, from the worker's own timings (averaged over rounds)
    keys = ("load_s", "reference_s", "compile_s", "verify_s", "total_s")
    avg = {k: sum(t.get(k, 0) or 0 for x in results["cli"] for t in x["timings"]) / len(results["cli"]) for k in keys}
    compile_direct = sum(sum(x["per_job_s"]) for x in results["direct"]) / len(results["direct"])
    print("CLI time split (sum over jobs): " + ", ".join(f"{k} {avg[k]:.1f}" for k in keys))
    print(f"  outside the workers' build (process start, imports, planning, reports): {cli - avg['total_s']:.1f} s")
    print(
        f"  fresh-process verification: {avg['verify_s']:.1f} s; reference: {avg['reference_s']:.1f} s; "
        f"direct arm's per-job work (load + compile + load + run): {compile_direct:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
