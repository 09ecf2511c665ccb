"""Greedy decoding throughput: AOTInductor static-cache decoder vs eager transformers.

    python bench/decode_bench.py [--hidden 256 --layers 4 --vocab 32000 --batch-sizes 1 4]

A tiny-ish random Llama is saved once; each batch size is compiled in its own process;
each (variant, batch) is measured in a fresh process (no compile pools, no warm caches from
another variant). Both variants run a full generate(): transformers' model.generate() for
eager (dynamic cache), pipeline.generation.generate() for compiled. The decode step is timed
by difference: T(1 + N new tokens) - T(1 new token) = N decode steps, so prefill and the
per-call setup cancel out. Medians over --repeats. CPU timings are noisy on a shared
machine: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build(args: argparse.Namespace, model_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=max(args.sequence_length, 128),
        bos_token_id=None,
        eos_token_id=None,
    )
    LlamaForCausalLM(config).eval().save_pretrained(model_dir)


def _compile(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    from pipeline.backends.inductor.decoder import export_decoder

    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    meta = export_decoder(model, args.batch, args.sequence_length, "fp32", Path(args.artifact))
    print(json.dumps(meta["timings"]))


def _measure(args: argparse.Namespace) -> None:
    import torch

    # Both variants get the same intra-op threads. The AOTI kernels' `#pragma omp parallel`
    # follows torch.set_num_threads too. On an oversubscribed machine (load > cores) OpenMP
    # barriers make the compiled graph 10-30x slower at 2 threads; 1 thread is the stable figure.
    torch.set_num_threads(args.threads)

    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt_length), generator=torch.Generator().manual_seed(0))
    if args.variant == "eager":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
        mask = torch.ones_like(prompt)

        def run(new: int):
            with torch.no_grad():
                return model.generate(
                    prompt, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new
                )
    else:
        from pipeline.backends.inductor.decoder import load_decoder
        from pipeline.generation import generate

        runner = load_decoder(args.artifact)

        def run(new: int):
            return generate(runner, prompt, do_sample=False, max_new_tokens=new)

    def timed(new: int) -> float:
        start = time.perf_counter()
        out = run(new)
        elapsed = time.perf_counter() - start
        assert out.shape == (args.batch, args.prompt_length + new), out.shape
        return elapsed

    n = args.new_tokens
    timed(1), timed(n + 1)  # warm-up
    short, full = [], []
    for _ in range(args.repeats):
        short.append(timed(1))
        full.append(timed(n + 1))
    t_short, t_full = statistics.median(short), statistics.median(full)
    decode_s = max(t_full - t_short, 1e-9)
    ids = run(n + 1)
    print(
        json.dumps(
            {
                "prefill_ms": t_short * 1e3,
                "decode_ms_per_step": decode_s / n * 1e3,
                "decode_tok_s": args.batch * n / decode_s,
                "e2e_tok_s": args.batch * (n + 1) / t_full,
                "ids": ids[:, args.prompt_length :].tolist(),
                "threads": torch.get_num_threads(),
            }
        )
    )


def _child(role: str, args: argparse.Namespace, **extra) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role]
    for name, value in {**vars(args), **extra}.items():
        if name in ("role", "batch_sizes", "thread_counts"):
            continue
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{role} {extra} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=["main", "compile", "measure"])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sequence-length", type=int, default=128, help="compiled prompt + new tokens")
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64, help="decode steps timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1], help="torch/OpenMP threads per run")
    parser.add_argument("--workdir", default="")
    # set by the parent for children
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--artifact", default="")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variant", default="eager")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    if args.role == "compile":
        return _compile(args)
    if args.role == "measure":
        return _measure(args)

    if args.prompt_length + args.new_tokens + 1 > args.sequence_length:
        raise SystemExit("--prompt-length + --new-tokens + 1 must fit --sequence-length")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="decode_bench_"))
    model_dir = workdir / "model"
    _build(args, model_dir)
    args.model_dir = str(model_dir)
    print(
        f"model: random Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}; "
        f"prompt={args.prompt_length}, decode steps={args.new_tokens}, compiled sequence_length={args.sequence_length}"
    )
    rows = []
    for batch in args.batch_sizes:
        artifact = workdir / f"compiled-b{batch}"
        if (artifact / "decoder.json").is_file():  # --workdir reuse
            timings = json.loads((artifact / "decoder.json").read_text())["timings"]
        else:
            timings = _child("compile", args, batch=batch, artifact=artifact)
        print(f"compiled batch={batch}: export {timings['export_s']:.1f} s, AOTI compile {timings['compile_s']:.1f} s")
        for threads in args.thread_counts:
            result = {
                v: _child("measure", args, batch=batch, artifact=artifact, variant=v, threads=threads)
                for v in ("eager", "compiled")
            }
            rows.append((batch, threads, result))

    print()
    print(
        f"{'batch':>5} {'threads':>7} {'variant':>9} {'prefill ms':>11} {'decode ms/step':>15} {'decode tok/s':>13} "
        f"{'e2e tok/s':>10}"
    )
    for batch, threads, result in rows:
        for variant in ("eager", "compiled"):
            r = result[variant]
            print(
                f"{batch:>5} {threads:>7} {variant:>9} {r['prefill_ms']:>11.2f} {r['decode_ms_per_step']:>15.3f} "
                f"{r['decode_tok_s']:>13.1f} {r['e2e_tok_s']:>10.1f}"
            )
    print()
    print(f"{'batch':>5} {'threads':>7} {'decode speedup':>15} {'e2e speedup':>12} {'greedy ids identical':>21}")
    for batch, threads, result in rows:
        e, c = result["eager"], result["compiled"]
        print(
            f"{batch:>5} {threads:>7} {c['decode_tok_s'] / e['decode_tok_s']:>14.2f}x "
            f"{c['e2e_tok_s'] / e['e2e_tok_s']:>11.2f}x "
            f"{str(e['ids'] == c['ids']):>21}"
        )
    print(f"\n(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; speedup = compiled / eager)")


if __name__ == "__main__":
    main()
