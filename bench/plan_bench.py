"""Planning speed: a 1,000-job matrix (50 local models x 5 shapes x 4 cast types).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/plan_bench.py [--models 50] [--out artifacts/bench]

Builds one tiny BERT with pipeline.tiny, copies it 50 times with a different config value
each (so every copy has its own content hash, as 50 fine-tunes would), then times, in this
process: Hydra compose, validate, and plan (cold: content hashes computed; warm: memoised),
and `python -m pipeline +sweep=bench mode=plan` end to end. The goal is planning < 2 s.
Nothing is compiled and no weights are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

T0 = time.perf_counter()  # close to interpreter start: only the stdlib is imported above

from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS = ("feature-extraction", "text-classification", "token-classification", "fill-mask", "question-answering")
SHAPES = [(1, 16), (1, 32), (2, 64), (4, 128), (8, 128)]
CAST_TYPES = ["fp32", "bf16", "fp16", "int8"]


def build_models(out: Path, n: int) -> list[dict]:
    """n local model folders: one tiny BERT, copied with a different `initializer_range`."""
    base = out / "base"
    if not (base / "tiny-bert" / "config.json").is_file():  # in a subprocess: this one stays torch-free
        subprocess.run(
            [sys.executable, "-m", "pipeline.tiny", str(base), "tiny-bert"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    entries = []
    for i in range(n):
        folder = out / "models" / f"m{i:02d}"
        if not (folder / "config.json").is_file():
            shutil.copytree(base / "tiny-bert", folder, dirs_exist_ok=True)
            config = json.loads((folder / "config.json").read_text())
            config["initializer_range"] = 0.02 + i * 1e-4  # a different model for the key
            (folder / "config.json").write_text(json.dumps(config, indent=2))
        entries.append(
            {
                "id": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder),
                "task": TASKS[i % len(TASKS)],
                "name": f"m{i:02d}",
            }
        )
    return entries


def write_sweep(out: Path, entries: list[dict]) -> Path:
    """A sweep file in its own config dir, added with Hydra's --config-dir."""
    sweep = out / "configs" / "sweep" / "bench.yaml"
    sweep.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# @package _global_", "matrix:", "  models:"]
    lines += [f"    - {{id: {e['id']}, task: {e['task']}, name: {e['name']}}}" for e in entries]
    lines += ["  shapes:"] + [f"    - {{batch_size: {b}, sequence_length: {s}}}" for b, s in SHAPES]
    lines += [f"  cast_types: [{', '.join(CAST_TYPES)}]"]
    sweep.write_text("\n".join(lines) + "\n")
    return sweep.parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--out", default=str(REPO / "artifacts" / "bench"))
    args = ap.parse_args()
    os.chdir(REPO)  # model ids are relative to the repo root, as in the shipped configs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out).resolve()

    t_setup = time.perf_counter()
    entries = build_models(out, args.models)
    config_dir = write_sweep(out, entries)
    setup_s = time.perf_counter() - t_setup
    expected = len(entries) * len(SHAPES) * len(CAST_TYPES)

    # in-process: as the CLI does it, minus the interpreter start
    t_import = time.perf_counter()
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline import model_entries as models_mod
    from pipeline.plan import plan
    from pipeline.validate import validate

    t_compose = time.perf_counter()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{config_dir}]", "+sweep=bench"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    t_validate = time.perf_counter()
    resolved = validate(cfg)
    t_plan = time.perf_counter()
    jobs = plan(resolved)  # cold: hashes every model folder
    t_done = time.perf_counter()
    jobs_warm = plan(resolved)  # warm: content hashes memoised
    t_warm = time.perf_counter()
    models_mod._resolved.clear()
    models_mod._hashed.clear()
    assert len(jobs) == len(jobs_warm) == expected, (len(jobs), expected)
    assert len({j["key"] for j in jobs}) == expected
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))

    plan_s = t_done - t_validate
    print(f"setup (build/copy {len(entries)} models): {setup_s:.2f} s")
    print(f"in-process, {expected} jobs ({len(entries)} models x {len(SHAPES)} shapes x {len(CAST_TYPES)} cast types):")
    print(
        f"  interpreter start + imports       : {(t_setup - T0) + (t_compose - t_import):.2f} s "
        f"(pipeline/hydra imports {t_compose - t_import:.2f} s; model setup excluded)"
    )
    print(f"  hydra compose                     : {t_validate - t_compose:.3f} s")
    print(f"  validate                          : {t_plan - t_validate:.3f} s")
    print(f"  {f'plan (cold: hashes {len(entries)} folders)':34}: {t_done - t_plan:.3f} s")
    print(f"  plan (warm: hashes memoised)      : {t_warm - t_done:.3f} s")
    print(
        f"  validate + plan                   : {plan_s:.3f} s  -> {expected / plan_s:,.0f} jobs/s  "
        f"[goal < 2 s: {'OK' if plan_s < 2 else 'SLOW'}]"
    )
    print(f"  torch/transformers imported       : {'yes: ' + ', '.join(heavy[:5]) if heavy else 'no'}")

    # end to end: the CLI, interpreter start included
    runs = out / "runs"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "--config-dir",
        str(config_dir),
        "+sweep=bench",
        "mode=plan",
        f"cache.dir={out / 'cache'}",
        f"report.dir={runs}",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    cli_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return 1
    written = json.loads((runs / "latest" / "plan.json").read_text())["jobs"]
    assert [j["key"] for j in written] == [j["key"] for j in jobs], "CLI and in-process plans differ"
    print(
        f"CLI `python -m pipeline +sweep=bench mode=plan` ({len(written)} jobs, table + plan.json): {cli_s:.2f} s wall"
    )
    print(f"  last line: {proc.stdout.strip().splitlines()[-1]}")
    return 0 if plan_s < 2 else 3


if __name__ == "__main__":
    raise SystemExit(main())
