"""`validate()`: check a composed config and report every problem at once, each with its path.

Wrongly typed values are reported and replaced by the schema's default, and misspelt keys are
reported and never read, so one mistake does not hide the others; then the models' config.json
files, the matrix and every combination are checked against the tasks and the backend's rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from typing import Any, Dict, List

from omegaconf import DictConfig, ListConfig

from pipeline import keys
from pipeline.backends import MODULES, get_backend, options_class
from pipeline.config import MODES, RunConfig
from pipeline.model_entries import POSITION_OFFSET, entry_from, validation_job
from pipeline.plan import combinations, parse_shard
from pipeline.tasks import TASKS


class ConfigError(Exception):
    """Every problem found in a config; exit code 2."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def _is_optional(tp) -> tuple[bool, Any]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0] if len(args) == 1 else Any
    return False, tp


def _check_type(value: Any, tp: Any, path: str, errors: list[str], unknown: list[str] | None = None) -> None:
    """Check a composed value against a schema type, appending errors with paths (unknown
    keys to `unknown` when given: they do not stop the checks that follow)."""
    optional, tp = _is_optional(tp)
    if value is None:
        if not optional and tp is not Any:
            errors.append(f"{path}: must not be null")
        return
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, (dict, DictConfig)):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
            return
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for k, v in list(value.items()):
            sub = f"{path}.{k}" if path else str(k)
            if k not in hints:
                near = difflib.get_close_matches(str(k), list(hints), n=1)
                (errors if unknown is None else unknown).append(
                    f"{sub}: unknown key"
                    + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(hints)}")
                )
                continue
            before = len(errors)
            _check_type(v, hints[k], sub, errors, unknown)
            if isinstance(value, dict) and any(e.startswith(f"{sub}: ") for e in errors[before:]):
                # Reported; put the schema default in its place so the other checks can run.
                f = fields[k]
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                value[k] = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        return
    origin = typing.get_origin(tp)
    if origin in (list, List):
        if not isinstance(value, (list, ListConfig)):
            errors.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
            return
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            before = len(errors)
            _check_type(v, item, f"{path}[{i}]", errors, unknown)
            if (
                dataclasses.is_dataclass(item)
                and isinstance(value, list)
                and any(e.startswith(f"{path}[{i}]: ") for e in errors[before:])
            ):
                value[i] = dataclasses.asdict(item())  # reported; a default item lets the other checks run
        return
    if origin in (dict, Dict):
        if not isinstance(value, (dict, DictConfig)):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
            return
        _, item = typing.get_args(tp) or (Any, Any)
        for k, v in value.items():
            _check_type(v, item, f"{path}.{k}", errors, unknown)
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(tp, lambda v: True)(value)
    if not ok:
        errors.append(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


@dataclass
class Resolved:
    """A validated config: plain data plus the resolved model entries."""

    cfg: dict
    models: list  # list[pipeline.models.ModelInfo]


def validate(cfg: dict) -> Resolved:
    """Check a composed config; raise ConfigError with every problem, each with its path."""
    errors: list[str] = []
    unknown: list[str] = []
    cfg.pop("hydra", None)
    _check_type(cfg, RunConfig, "", errors, unknown)
    # Wrongly typed values were reported and replaced by their defaults; a misspelt key is
    # never read below: both are reported with everything the later checks find.
    errors = unknown + errors
    mode = cfg.get("mode", "run")
    if mode not in MODES:
        errors.append(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    try:
        parse_shard(cfg.get("shard"))
    except ValueError as e:
        errors.append(f"shard: {e}")
    if cfg.get("timeout_s", 1) < 1:
        errors.append("timeout_s: must be >= 1")
    if cfg["executor"].get("name") != "local":
        errors.append(f"executor.name: {cfg['executor'].get('name')!r} is not a known executor; known: local")
    if cfg["executor"].get("workers", 1) < 1:
        errors.append("executor.workers: must be >= 1")
    if cfg["publish"].get("name") not in ("none", "local", "hub"):
        errors.append(f"publish.name: {cfg['publish'].get('name')!r} is not one of none, local, hub")
    if cfg["cache"].get("max_size_gb", 1) <= 0:
        errors.append("cache.max_size_gb: must be > 0")
    for cast in cfg["verify"].get("tolerances", {}):
        if keys.canonical_cast_type(cast) is None:
            errors.append(f"verify.tolerances.{cast}: not a cast type; known: {', '.join(keys.CAST_TYPES)}")
    if cfg["verify"].get("generate_tokens", 1) < 1:
        errors.append("verify.generate_tokens: must be >= 1")

    # backend and its options
    backend_cfg = dict(cfg.get("backend") or {})
    bname = backend_cfg.get("name")
    backend = None
    if bname not in MODULES:
        errors.append(f"backend.name: {bname!r} is not a known backend; known: {', '.join(MODULES)}")
    else:
        before = len(errors)
        _check_type({k: v for k, v in backend_cfg.items() if k != "name"}, options_class(bname), "backend", errors)
        if len(errors) == before:
            backend = get_backend(bname, backend_cfg)

    m = cfg["matrix"]
    if m.get("auto_cast") not in keys.AUTO_CAST_SCOPES:
        errors.append(f"matrix.auto_cast: {m.get('auto_cast')!r} is not one of {', '.join(keys.AUTO_CAST_SCOPES)}")
    casts = []
    for i, c in enumerate(m.get("cast_types") or []):
        canon = keys.canonical_cast_type(c)
        if canon is None:
            errors.append(
                f"matrix.cast_types[{i}]: {c!r} is not a cast type; known: {', '.join(keys.CAST_TYPES)} (and aliases)"
            )
        elif backend is not None and canon not in backend.cast_types:
            errors.append(
                f"matrix.cast_types[{i}]: {c!r} is not supported by backend {bname}; it supports "
                f"{', '.join(backend.cast_types)}"
            )
        casts.append(canon)
    if not m.get("cast_types"):
        errors.append("matrix.cast_types: empty; list at least one cast type (e.g. [fp32])")
    for j, s in enumerate(m.get("shapes") or []):
        for axis in ("batch_size", "sequence_length"):
            v = s.get(axis)
            if v is not None and v < 1:
                errors.append(f"matrix.shapes[{j}].{axis}: must be >= 1, got {v}")
    if not m.get("shapes"):
        errors.append("matrix.shapes: empty; list at least one shape {batch_size, sequence_length}")

    items = list(m.get("models") or [])
    paths = [f"matrix.models[{i}]" for i in range(len(items))]
    if cfg.get("model") is not None:
        items.append(cfg["model"])
        paths.append("model")
    if not items:
        errors.append("matrix.models: empty; name at least one model (configs/model/*.yaml) or give {id, task}")
    models = []
    for item, path in zip(items, paths):
        info = entry_from(item, path, errors)
        if info is None:
            continue
        models.append((info, path))
        if backend is not None and info.task not in backend.tasks:
            errors.append(
                f"{path}.task: {info.task!r} is not supported by backend {bname}; it supports "
                f"{', '.join(backend.tasks)}"
            )
    names = [info.name for info, _ in models]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"matrix.models: two models are named {dup!r}; give one a `name:`")

    known_values = {
        "model": set(names) | {info.id for info, _ in models},
        "task": {info.task for info, _ in models},
        "batch_size": {s.get("batch_size") for s in m.get("shapes") or []},
        "sequence_length": {s.get("sequence_length") for s in m.get("shapes") or []},
        "cast_type": set(casts),
    }
    for j, ex in enumerate(m.get("exclude") or []):
        for k, v in ex.items():
            if k not in known_values:
                errors.append(f"matrix.exclude[{j}].{k}: unknown key; known: {', '.join(known_values)}")
            elif (keys.canonical_cast_type(v) if k == "cast_type" else v) not in known_values[k]:
                errors.append(
                    f"matrix.exclude[{j}].{k}: {v!r} is not in the matrix (values: "
                    f"{', '.join(map(str, sorted(known_values[k], key=str)))})"
                )
    for j, inc in enumerate(m.get("include") or []):
        for k, v in inc.items():
            if k not in ("model", "batch_size", "sequence_length", "cast_type"):
                errors.append(
                    f"matrix.include[{j}].{k}: unknown key; known: model, batch_size, sequence_length, cast_type"
                )
        if inc.get("model") not in known_values["model"]:
            errors.append(
                f"matrix.include[{j}].model: {inc.get('model')!r} is not a model of the matrix ({', '.join(names)})"
            )
        if "cast_type" in inc and keys.canonical_cast_type(inc["cast_type"]) is None:
            errors.append(f"matrix.include[{j}].cast_type: {inc['cast_type']!r} is not a cast type")
        for axis in ("batch_size", "sequence_length"):
            if axis in inc and (not isinstance(inc[axis], int) or inc[axis] < 1):
                errors.append(f"matrix.include[{j}].{axis}: must be an integer >= 1, got {inc[axis]!r}")

    # per-combination checks: mandatory axes, max positions, backend rules
    for combo in combinations(cfg, [info for info, _ in models]):
        where = combo["where"]
        info = combo["model"]
        mpath = dict((i.name, p) for i, p in models)[info.name]
        axes = TASKS[info.task].axes
        for axis in axes:
            if combo["shapes"].get(axis) is None:
                errors.append(
                    f"{where['shape']}.{axis}: required for task {info.task} of {info.name} (mandatory axes: "
                    f"{', '.join(axes)})"
                )
        seq = combo["shapes"].get("sequence_length")
        maxp = info.max_positions
        if maxp is not None and seq is not None:
            limit = maxp - POSITION_OFFSET.get((info.config or {}).get("model_type"), 0)
            if seq > limit:
                errors.append(
                    f"{where['shape']}.sequence_length: {seq} exceeds max_position_embeddings {limit} of {info.name}"
                )
        if backend is not None and combo["cast_type"] is not None:  # an unknown cast type is reported above
            job = validation_job(info, combo["shapes"], combo["cast_type"], m["auto_cast"], m["dynamic_batch_size"])
            for msg in backend.validate(job):
                field_, _, text = msg.partition(":")
                if field_.startswith("backend"):
                    path = field_
                elif field_ == "cast_type":
                    path = where["cast_type"]
                elif field_.startswith("shapes."):
                    path = f"{where['shape']}.{field_.split('.', 1)[1]}"
                elif field_.startswith("model"):
                    path = mpath
                else:
                    path = f"matrix.{field_}"
                errors.append(
                    f"{path}:{text} ({info.name}, {combo['cast_type']}, b{combo['shapes'].get('batch_size')} s{seq})"
                    if not field_.startswith("backend")
                    else f"{path}:{text}"
                )
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return Resolved(cfg=cfg, models=[info for info, _ in models])
