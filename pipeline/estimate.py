"""What a plan will cost: each miss's compile + verify time, estimated from what was recorded.

The records come from `pipeline.history`. The basis, best first, is always stated next to the figure:

1. `recorded`: this variant's own last time (its manifest, or its failure record);
2. `same model`: other variants of the same model and backend, scaled by tokens;
3. `scaled`: every recorded job of the backend, scaled by parameter count and tokens;
4. `default`: nothing recorded yet, a stated default.

`static_cost` is the history-free cost that CI shards balance on: every shard of a CI matrix
computes the same partition from the plan alone, whatever cache each machine restored.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from pipeline.history import Record, tokens_of

DEFAULT_S = 60.0  # a compile + verify with nothing recorded (tiny models take ~30 s on 2 cores)


@dataclass
class Estimate:
    seconds: float
    basis: str

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "basis": self.basis}


# Compile time barely depends on the compiled shape (the same graph, other constants); only the
# verification's eager reference and run grow with the tokens. Measured on the smoke sweep: tiny
# encoders at 16 and 64 tokens took the same 19-20 s; a square-root scaling halved the estimate.
SHAPE_EXPONENT = 0.1


def _shape_factor(tokens: int, shapes: dict) -> float:
    return (tokens / tokens_of(shapes)) ** SHAPE_EXPONENT


def estimate(job: dict, records: list[Record]) -> Estimate:
    backend = job["backend"]
    records = [r for r in records if r.seconds]
    same_variant = [r for r in records if r.key == job["key"]]
    if same_variant:
        return Estimate(same_variant[-1].seconds, "recorded for this variant")
    tokens = tokens_of(job["shapes"])
    same_model = [r for r in records if r.model == job["model"]["name"] and r.backend == backend]
    same_cast = [r for r in same_model if r.cast_type == job["cast_type"]]
    same_model = same_cast or same_model
    if same_model:
        scaled = [r.seconds * _shape_factor(tokens, r.shapes) for r in same_model]
        basis = f"same model and backend ({len(same_model)} recorded), scaled by tokens"
        return Estimate(statistics.median(scaled), basis)
    params = job["model"].get("params")
    peers = [r for r in records if r.backend == backend and r.params and params]
    if peers:
        scaled = [r.seconds * (params / r.params) ** 0.5 * _shape_factor(tokens, r.shapes) for r in peers]
        basis = f"{len(peers)} recorded {backend} jobs, scaled by parameters and tokens"
        return Estimate(statistics.median(scaled), basis)
    return Estimate(DEFAULT_S, f"default {DEFAULT_S:.0f} s (no recorded timings)")


# A refit (weights: refit, the graph key's program cached or compiled earlier in the plan) costs
# the eager reference, writing the weights and the verification, not the compile. Measured through
# the CLI on a loaded 2-core machine (tests/test_refit.py): 36 s against 111 s for the compile of
# the same tiny model (0.33x), nearly all of it the fresh verifying process's start, which a
# compile hides (it starts while the compile runs). The refit itself: ~1 s (bench/results/refit.md).
REFIT_SHARE = 0.33


def refit_estimate(full: Estimate) -> Estimate:
    if full.basis == "recorded for this variant":  # its own earlier time: already what it costs
        return full
    return Estimate(full.seconds * REFIT_SHARE, f"a refit: {REFIT_SHARE}x the compile estimate ({full.basis})")


def static_cost(job: dict) -> float:
    """A history-free relative cost for balancing CI shards: parameters and tokens."""
    params = job["model"].get("params") or 10_000_000
    return (params**0.5) * math.sqrt(tokens_of(job["shapes"])) * (2.0 if job["task"] == "text-generation" else 1.0)
