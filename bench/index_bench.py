"""How fast `mode=ls` and planners read a shared-cache index of 10,000 entries.

Writes a synthetic `publish=local` shared cache with one platform index of N entries (rows
shaped like real ones, from pipeline.shared_cache.index_row), then times read_index + a model
filter, the way `mode=ls model=ID` does. Goal: <= 1 s for 10,000 entries.

    python bench/index_bench.py [--entries 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from common import lscpu

from pipeline.listing import shared_variants
from pipeline.shared_cache import INDEX, index_row, merged_index


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "published"
        tag = "inductor-cpu-x86_64-AVX512-torch2.13.0"
        rows = []
        for i in range(args.entries):
            key = hashlib.sha256(str(i).encode()).hexdigest()
            spec = {
                "model": {"id": f"org/model-{i % 500}", "revision": "a" * 40},
                "task": "feature-extraction",
                "shapes": {"batch_size": 1 + i % 8, "sequence_length": 128},
                "cast_type": ["fp32", "bf16"][i % 2],
                "backend": {"name": "inductor", "options": {"device": "cpu"}},
                "toolchain": {
                    "torch": "2.13.0",
                    "transformers": "5.24.0",
                    "platform": {"arch": "x86_64", "cpu_capability": "AVX512"},
                },
            }
            manifest = {
                "key": key,
                "spec": spec,
                "model": {"name": f"model-{i % 500}"},
                "created_at": "2026-12-01T00:00:00",
                "metrics": {"last_hidden_state": {"cosine": 0.99999, "max_abs": 1e-5}},
                "files": {"model.pt2": {"size": 1}},
            }
            rows.append(index_row(manifest))
        path = root / "cache" / tag / INDEX
        path.parent.mkdir(parents=True)
        path.write_bytes(merged_index(None, rows))
        cfg = {"name": "local", "dir": str(root), "cache_repo": None}
        times = []
        for _ in range(5):
            t = time.perf_counter()
            found = shared_variants(cfg, "model-7")
            times.append(time.perf_counter() - t)
        size = path.stat().st_size
    median = statistics.median(times)
    cpu, flags = lscpu()
    print(f"{cpu}; flags: {' '.join(f for f in flags.split() if f.startswith(('avx512', 'amx', 'avx2')))}")
    print(
        f"index of {args.entries} entries ({size / 1e6:.1f} MB): read + filter median {median * 1000:.0f} ms "
        f"({len(found)} variants of model-7); goal <= 1 s: {'MET' if median <= 1 else 'NOT MET'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
