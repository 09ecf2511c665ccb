"""Matrix expansion: product + include - exclude, dedup by key, stable order, shards.

Planning reads config.json files and hashes local weights, but never loads a model.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline import keys, rebuild, reuse
from pipeline.backends import get_backend
from pipeline.backends.neuron.rules import estimate_parameters
from pipeline.cache import Cache
from pipeline.estimate import estimate, refit_estimate, static_cost
from pipeline.history import entry_record, history
from pipeline.job import Job, Spec
from pipeline.tasks import TASKS

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'i/N' (1-based) -> (i, N); raises ValueError with the reason when malformed."""
    if spec is None:
        return None
    m = SHARD.match(str(spec))
    if not m:
        raise ValueError(f"{spec!r} is not of the form i/N")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"{spec!r}: need 1 <= i <= N")
    return i, n


def _shape(shape: dict, model) -> dict:
    out = {"batch_size": shape.get("batch_size"), "sequence_length": shape.get("sequence_length")}
    if out["sequence_length"] is None and TASKS[model.task].decoder:
        out["sequence_length"] = model.max_positions  # decoders: prompt + generated, default the model's max
    return out


def _matches(combo: dict, pattern: dict) -> bool:
    values = {
        "model": (combo["model"].name, combo["model"].id),
        "task": (combo["model"].task,),
        "batch_size": (combo["shapes"]["batch_size"],),
        "sequence_length": (combo["shapes"]["sequence_length"],),
        "cast_type": (combo["cast_type"],),
    }
    for k, v in pattern.items():
        v = keys.canonical_cast_type(v) if k == "cast_type" else v
        if v not in values.get(k, ()):
            return False
    return True


def combinations(cfg: dict, models: list) -> Iterator[dict[str, Any]]:
    """Every (model, shape, cast type) of the matrix, with the config paths it came from."""
    m = cfg["matrix"]
    shapes = list(enumerate(m["shapes"]))
    casts = [(i, keys.canonical_cast_type(c)) for i, c in enumerate(m["cast_types"])]
    excludes = m.get("exclude") or []
    for model, (j, shape), (i, cast) in itertools.product(models, shapes, casts):
        combo = {
            "model": model,
            "shapes": _shape(shape, model),
            "cast_type": cast,
            "where": {"shape": f"matrix.shapes[{j}]", "cast_type": f"matrix.cast_types[{i}]"},
        }
        if not any(_matches(combo, ex) for ex in excludes):
            yield combo
    for k, inc in enumerate(m.get("include") or []):
        for model in models:
            if inc.get("model") not in (model.name, model.id):
                continue
            given = {a: inc[a] for a in ("batch_size", "sequence_length") if a in inc}
            inc_shapes = [dict(s, **given) for s in m["shapes"]] if len(given) < 2 else [given]
            inc_casts = [keys.canonical_cast_type(inc["cast_type"])] if "cast_type" in inc else [c for _, c in casts]
            for shape, cast in itertools.product(inc_shapes, inc_casts):
                yield {
                    "model": model,
                    "shapes": _shape(shape, model),
                    "cast_type": cast,
                    "where": {"shape": f"matrix.include[{k}]", "cast_type": f"matrix.include[{k}].cast_type"},
                }


def build_spec(
    model,
    task: str,
    shapes: dict,
    cast_type: str,
    auto_cast: str,
    dynamic_batch_size: bool,
    backend,
    toolchain: dict | None = None,
) -> Spec:
    """Everything that decides the compiled bytes. Verification settings are not in it.

    `toolchain`: backend.toolchain(), computed once per plan by the caller (reading package
    versions costs ~10 ms a call: per job, that was 20 s for a 1,000-job plan)."""
    cast = keys.canonical_cast_type(cast_type)
    spec = {
        "model": model.spec_model(),
        "task": task,
        "shapes": {k: int(v) for k, v in shapes.items() if v is not None},
        "cast_type": cast,
        "auto_cast": "none" if cast == "fp32" else auto_cast,
        "dynamic_batch_size": bool(dynamic_batch_size),
        "backend": {"name": backend.name, "options": backend.spec_options()},
        "toolchain": backend.toolchain() if toolchain is None else copy.deepcopy(toolchain),
        "recipe": keys.RECIPE_VERSION,
    }
    quantization = backend.quantization(cast)  # a quantization recipe decides the bytes too
    if quantization is not None:
        spec["quantization"] = quantization
    return spec


def make_job(
    model,
    shapes: dict,
    cast_type: str,
    auto_cast: str,
    dynamic_batch_size: bool,
    backend,
    verify_cfg: dict,
    timeout_s: int,
    toolchain: dict | None = None,
) -> Job:
    """A job: spec + key + verification settings. Pure data (JSON-able, picklable)."""
    spec = build_spec(model, model.task, shapes, cast_type, auto_cast, dynamic_batch_size, backend, toolchain)
    tolerance = {k: v for k, v in verify_cfg["tolerances"].get(spec["cast_type"], {}).items() if v is not None}
    return {
        "key": keys.key_of(spec),
        "graph_key": keys.graph_key(spec, model.config),
        "spec": spec,
        "model": {
            "params": estimate_parameters(model.config or {}, model.task),
            "name": model.name,
            "id": model.id,
            "path": model.path,
            "local": model.local,
            "revision": spec["model"]["revision"],
        },
        "task": model.task,
        "shapes": spec["shapes"],
        "cast_type": spec["cast_type"],
        "backend": backend.name,
        "backend_options": backend.options,
        "verify": {
            "tolerance": tolerance,
            "generate_tokens": verify_cfg["generate_tokens"],
            "seed": verify_cfg["seed"],
        },
        "timeout_s": timeout_s,
    }


def plan(resolved) -> list[Job]:
    """Jobs in stable order, deduplicated by key, restricted to the configured shard.
    `resolved`: what pipeline.validate.validate returned."""
    cfg = resolved.cfg
    backend = get_backend(cfg["backend"]["name"], cfg["backend"])
    m = cfg["matrix"]
    toolchain = backend.toolchain()  # once: the same for every job of this plan
    jobs, seen = [], set()
    for combo in combinations(cfg, resolved.models):
        model = combo["model"]
        job = make_job(
            model,
            combo["shapes"],
            combo["cast_type"],
            m["auto_cast"],
            m["dynamic_batch_size"],
            backend,
            cfg["verify"],
            cfg["timeout_s"],
            toolchain,
        )
        if job["key"] in seen:
            continue
        seen.add(job["key"])
        jobs.append(job)
    shard = parse_shard(cfg.get("shard"))
    if shard:
        i, n = shard
        jobs = shard_jobs(jobs, n)[i - 1]
    return jobs


def annotate(
    jobs: list[dict], cache: Cache, shared: Callable[[], list] | None = None, reuse_larger_shapes: bool = False
) -> dict:
    """Each job's cache status, its estimated compile + verify time (with the basis) and, for a
    miss, why it is rebuilt: against the local history and what `shared()` returns (the shared
    cache's index as records, `history.shared_history`; called at the first miss); plus the
    totals. The fields go into plan.json. The whole history is read only when something needs
    it: an all-hit plan reads each hit's own manifest and no more. `reuse_larger_shapes`: a miss
    that a verified larger-shape entry covers is pointed at it (`reuse.take`; `reused_for`)."""
    everything: list | None = None
    shared_records: list | None = None

    def records_for(job: dict) -> list:
        nonlocal everything
        if job["status"] == "hit":
            own = entry_record(cache, job["key"])
            if own is not None and own.seconds:
                return [own]
        if everything is None:
            everything = history(cache)
        return everything

    totals = {"misses": 0, "miss_s": 0.0, "hits": 0, "hit_saved_s": 0.0, "refits": 0}
    reused: list[str] = []
    programs: set[str] = set()  # graph keys (weights: refit) whose program is cached or built earlier in this plan
    for job in jobs:
        job["status"] = cache.status(job["key"])
        if reuse_larger_shapes and job["status"] != "hit":
            entry = reuse.covering(job, records_for(job), cache)
            if entry is not None:
                reused.append(reuse.take(job, entry))
                job["status"] = cache.status(job["key"])
        graph = keys.shared_program(job)
        if graph and job["status"] == "miss" and (graph in programs or cache.has_program(graph)):
            job["status"] = "refit"
        if graph:
            programs.add(graph)
        records = records_for(job)
        est = estimate(job, records)
        if job["status"] == "refit":
            est = refit_estimate(est)
            totals["refits"] += 1
        job["estimate"] = est.as_dict()
        if job["status"] == "hit":
            totals["hits"] += 1
            totals["hit_saved_s"] += est.seconds
        else:
            totals["misses"] += 1
            totals["miss_s"] += est.seconds
            if shared_records is None:
                shared_records = shared() if shared is not None else []
            job["rebuild"] = rebuild.reason(job, records, shared_records)
    totals["reused"] = reused
    return totals


def shard_jobs(jobs: list[dict], n: int) -> list[list[dict]]:
    """Split the jobs into n shards of about equal estimated cost (largest first, each to the
    cheapest shard so far), every job in exactly one. History-free (`static_cost`), so every CI
    machine computes the same partition from the same config; each shard keeps plan order."""
    load = [0.0] * n
    owner: dict[str, int] = {}
    for job in sorted(jobs, key=lambda j: (-static_cost(j), j["key"])):
        s = min(range(n), key=lambda k: (load[k], k))
        owner[job["key"]] = s
        load[s] += static_cost(job)
    return [[j for j in jobs if owner[j["key"]] == s] for s in range(n)]


def describe(job: dict) -> str:
    s = job["shapes"]
    shape = f"b{s.get('batch_size')} s{s.get('sequence_length')}"
    return f"{job['model']['name']} {job['task']} {shape} {job['cast_type']} {job['backend']}"


def write_plan(jobs: list[dict], path: Path) -> None:
    """plan.json, atomically (a full disk leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"jobs": jobs}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
