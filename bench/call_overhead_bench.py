"""Runtime call overhead: the CompiledModelFor<Task> class vs the bare AOTInductor runner, on one artifact.

    python bench/call_overhead_bench.py [--model tiny-bert] [--calls 300] [--rounds 5]

Compiles (or reuses, from artifacts/bench-cache) a feature-extraction artifact of the model at
batch 1, sequence 16, then times in one process, interleaved round by round:
  bare   the AOTInductor loader's boxed_run on the flat input tensors (the floor)
  package the package as torch._inductor.aoti_load_package returns it, called with keyword inputs
  runner the backend's runner (what the class calls: input names, device move, no_grad)
  class  CompiledModelForFeatureExtraction(...)(input_ids=..., attention_mask=...) returning a ModelOutput
Prints median microseconds per call of each arm and the class's overhead over the bare runner
(issue goal: <= 50 us), and checks that the three give identical outputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import lscpu  # noqa: E402  (bench/ is the script's folder)


def median_us(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-bert")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache-dir", default=str(REPO / "artifacts" / "bench-cache"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from pipeline.modeling import CompiledModelForFeatureExtraction

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(*lscpu(), sep="\n")
    model = CompiledModelForFeatureExtraction.from_pretrained(
        str(REPO / "artifacts" / "models" / args.model), export=True, cache_dir=args.cache_dir,
        batch_size=1, sequence_length=16,
    )
    ids = torch.randint(5, 100, (1, 16))
    mask = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in model.input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    package = torch._inductor.aoti_load_package(str(model.folder / model.compile_config["compiled"]["file"]))
    ordered = [inputs[n] for n in model.input_names]

    def bare():  # the loader itself: flat tensors in, flat tensors out
        with torch.no_grad():
            return package.loader.boxed_run(list(ordered))

    def pt2():  # torch's AOTICompiledModel.__call__: parses the call spec and (un)flattens pytrees each call
        with torch.no_grad():
            return package(**inputs)

    arms = {"bare": bare, "package": pt2, "runner": lambda: model.runner(**inputs), "class": lambda: model(**inputs)}
    want = bare()[0]
    assert torch.equal(pt2()[0], want)
    assert torch.equal(model.runner(**inputs)["last_hidden_state"], want)
    assert torch.equal(model(**inputs).last_hidden_state, want), "the class changes the runner's output"
    per: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.rounds):
        for name in list(arms)[r % len(arms):] + list(arms)[: r % len(arms)]:
            per[name].append(median_us(arms[name], args.calls))
    med = {k: statistics.median(v) for k, v in per.items()}
    print(f"\n{args.model} b1 s16 fp32, median of {args.calls} calls x {args.rounds} rounds (us per call)")
    for k, v in med.items():
        print(f"  {k:7s} {v:8.1f}")
    print(f"class - bare: {med['class'] - med['bare']:.1f} us (goal <= 50); runner - bare: "
          f"{med['runner'] - med['bare']:.1f} us; class / bare {med['class'] / med['bare']:.2f}x; outputs identical")


if __name__ == "__main__":
    main()
