"""Compile time per job, by phase, under candidate Inductor settings, side by side in one run.

    python bench/compile_bench.py [--models tiny-bert] [--rounds 2] [--calls 300]

Each compile runs in a fresh process (as a pipeline worker does) against an Inductor cache dir
that an earlier compile of a *different* model has warmed (the pipeline shares one cache dir per
cache, so the ISA probe and headers are warm but no graph is a cache hit). For every arm it
prints compile wall and CPU seconds with the backend's phase breakdown (export, lower, cxx,
package), and the artifact's bare-runner latency (median of --calls calls, batch 1), so a
setting that saves compile time at the cost of latency shows up in the same table.
Arms rotate over --rounds to spread machine noise; CPU seconds are the steadier figure on a
loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import lscpu  # noqa: E402  (bench/ is the script's folder)

ARMS = {
    "default": {},
    "vec_isa_ok": {"cpp.vec_isa_ok": True},
    "vec_isa_ok+wrapper_O0": {"cpp.vec_isa_ok": True, "aot_inductor.compile_wrapper_opt_level": "O0"},
    "vec_isa_ok+wrapper_O0+no_line_tables": {
        "cpp.vec_isa_ok": True,
        "aot_inductor.compile_wrapper_opt_level": "O0",
        "aot_inductor.enable_line_tables": False,
    },
}

ONE = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
import torch
from pipeline import tasks
from pipeline.backends import get_backend
path, task, extra, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
configs = {"freezing": True, **extra}
backend = get_backend("inductor", {"name": "inductor", "device": "cpu", "inductor_configs": configs})
model = tasks.load_eager_model(task, path)
inputs = tasks.example_inputs(model.config.to_dict(), 1, 16, 0, None)
spec = {"task": task, "cast_type": "fp32", "shapes": {"batch_size": 1, "sequence_length": 16}}
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    section = backend.compile(model, inputs, spec, Path(d))
    wall = time.perf_counter() - t
    run = backend.load(Path(d), section)
    for _ in range(20):
        run(**inputs)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        run(**inputs)
        times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"compile_s": wall, "timings": section["timings"],
                              "latency_ms": statistics.median(times) * 1e3}))
"""


def one(model: Path, task: str, extra: dict, calls: int, cache_dir: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", ONE, str(model), task, json.dumps(extra), str(calls)],
                         capture_output=True, text=True, env=env, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"compile failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny-bert"])
    ap.add_argument("--warm-with", default="tiny-distilbert", help="model compiled first to warm each cache dir")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    args = ap.parse_args()
    models = REPO / "artifacts" / "models"
    print(*lscpu(), sep="\n")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as root:
        for arm in args.arms:  # warm one cache dir per arm (same settings as the arm)
            one(models / args.warm_with, "feature-extraction", ARMS[arm], 5, f"{root}/{arm}")
        for r in range(args.rounds):
            order = args.arms[r % len(args.arms):] + args.arms[: r % len(args.arms)]
            for model in args.models:
                for arm in order:
                    res = one(models / model, "feature-extraction", ARMS[arm], args.calls, f"{root}/{arm}")
                    results.setdefault((model, arm), []).append(res)
                    print(f"round {r} {model:16s} {arm:40s} compile {res['compile_s']:6.1f} s  "
                          f"latency {res['latency_ms']:.3f} ms  {json.dumps(res['timings'])}", flush=True)
    print("\nmedians over rounds (compile wall s | compile CPU s | lower/cxx/package wall s | latency ms)")
    for (model, arm), rs in results.items():
        med = {k: statistics.median(r["timings"].get(k, 0) for r in rs)
               for k in ("export_s", "lower_s", "cxx_s", "package_s", "export_cpu_s", "lower_cpu_s", "cxx_cpu_s",
                         "package_cpu_s")}
        cpu = med["export_cpu_s"] + med["lower_cpu_s"] + med["cxx_cpu_s"] + med["package_cpu_s"]
        print(f"{model:16s} {arm:40s} {statistics.median(r['compile_s'] for r in rs):6.1f} | {cpu:6.1f} | "
              f"{med['export_s']:.1f}/{med['lower_s']:.1f}/{med['cxx_s']:.1f}/{med['package_s']:.1f} | "
              f"{statistics.median(r['latency_ms'] for r in rs):.3f}")


if __name__ == "__main__":
    main()
