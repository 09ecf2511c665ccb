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
from pathlib import Path
from typing import Any, Dict, Iterator, List

from omegaconf import DictConfig, ListConfig

from pipeline import keys
from pipeline.backends import MODULES, get_backend, options_class
from pipeline.cache import MANIFEST, check_integrity, is_artifact_file, safe_rel
from pipeline.config import MODES, RunConfig
from pipeline.config_files import ModelConfigError, read_json_object
from pipeline.executors import EXECUTORS
from pipeline.model_entries import POSITION_OFFSET, entry_from, is_hub_id, validation_job
from pipeline.plan import combinations, parse_shard
from pipeline.publish import check_templates
from pipeline.tasks import TASKS


class ConfigError(Exception):
    """Every problem found in a config; exit code 2."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class ArtifactError(ValueError):
    """A compiled artifact that cannot be loaded; the message names the file and the cause."""


class ArtifactNotFoundError(FileNotFoundError):
    """No artifact at that folder, cache key prefix or Hub repo."""


def _is_optional(tp) -> tuple[bool, Any]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0] if len(args) == 1 else Any
    return False, tp


def _plain(value: Any) -> Any:
    """A schema default as plain data (dataclasses, also inside lists and dicts, as dicts)."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default_of(tp: Any) -> Any:
    """A plain default value of a schema type (for a reported list item)."""
    if dataclasses.is_dataclass(tp):
        return dataclasses.asdict(tp())
    return {list: [], List: [], dict: {}, Dict: {}}.get(typing.get_origin(tp), None)


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
        for name, f in fields.items() if isinstance(value, dict) else ():
            if name not in value:  # absent (Hydra always composes it; a hand-made dict may not): the default
                value[name] = _plain(f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
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
                value[k] = _plain(default)
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
            if isinstance(value, list) and any(e.startswith(f"{path}[{i}]: ") for e in errors[before:]):
                value[i] = _default_of(item)  # reported; a default item lets the other checks run
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
    if cfg["executor"].get("name") not in EXECUTORS:
        known = ", ".join(EXECUTORS)
        errors.append(f"executor.name: {cfg['executor'].get('name')!r} is not a known executor; known: {known}")
    for name in ("workers", "jobs_per_process", "max_calls"):
        if cfg["executor"].get(name, 1) < 1:
            errors.append(f"executor.{name}: must be >= 1")
    for name in ("memory_limit_gb", "max_rss_gb", "memory_gb"):
        if cfg["executor"].get(name) is not None and cfg["executor"][name] <= 0:
            errors.append(f"executor.{name}: must be > 0 (or null)")
    if cfg["executor"].get("max_retries", 0) < 0:
        errors.append("executor.max_retries: must be >= 0")
    if cfg["publish"].get("name") not in ("none", "local", "hub"):
        errors.append(f"publish.name: {cfg['publish'].get('name')!r} is not one of none, local, hub")
    elif cfg["publish"].get("name") != "none" or cfg["publish"].get("cache_repo"):
        errors += check_templates(cfg["publish"])
    for i, repo in enumerate((cfg.get("shared_cache") or {}).get("trusted_repos") or []):
        if not is_hub_id(repo):
            errors.append(f"shared_cache.trusted_repos[{i}]: {repo!r} is not a Hub repo id")
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
    if not isinstance(bname, str) or bname not in MODULES:
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
    models, unusable = [], set()  # unusable: names of the entries reported above (no follow-up errors)
    for item, path in zip(items, paths):
        info = entry_from(item, path, errors)
        if info is None:
            unusable.add(str(item.get("name") or item.get("id")) if isinstance(item, dict) else str(item))
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
        "model": set(names) | {info.id for info, _ in models} | unusable,
        "task": {info.task for info, _ in models},
        "batch_size": {s.get("batch_size") for s in m.get("shapes") or []},
        "sequence_length": {s.get("sequence_length") for s in m.get("shapes") or []},
        "cast_type": set(casts),
    }
    def known(k: str, v: Any) -> bool:
        try:
            return (keys.canonical_cast_type(v) if k == "cast_type" else v) in known_values[k]
        except TypeError:  # unhashable
            return False

    sound = {"exclude": [], "include": []}  # the entries without problems: the combinations below use only these
    for j, ex in enumerate(m.get("exclude") or []):
        before = len(errors)
        for k, v in ex.items():
            if k not in known_values:
                errors.append(f"matrix.exclude[{j}].{k}: unknown key; known: {', '.join(known_values)}")
            elif not known(k, v):
                errors.append(
                    f"matrix.exclude[{j}].{k}: {v!r} is not in the matrix (values: "
                    f"{', '.join(map(str, sorted(known_values[k], key=str)))})"
                )
        sound["exclude"] += [ex] if len(errors) == before else []
    for j, inc in enumerate(m.get("include") or []):
        before = len(errors)
        for k, v in inc.items():
            if k not in ("model", "batch_size", "sequence_length", "cast_type"):
                errors.append(
                    f"matrix.include[{j}].{k}: unknown key; known: model, batch_size, sequence_length, cast_type"
                )
        if not known("model", inc.get("model")):
            errors.append(
                f"matrix.include[{j}].model: {inc.get('model')!r} is not a model of the matrix ({', '.join(names)})"
            )
        if "cast_type" in inc and keys.canonical_cast_type(inc["cast_type"]) is None:
            errors.append(f"matrix.include[{j}].cast_type: {inc['cast_type']!r} is not a cast type")
        for axis in ("batch_size", "sequence_length"):
            if axis in inc and (type(inc[axis]) is not int or inc[axis] < 1):
                errors.append(f"matrix.include[{j}].{axis}: must be an integer >= 1, got {inc[axis]!r}")
        sound["include"] += [inc] if len(errors) == before else []

    # per-combination checks: mandatory axes, max positions, backend rules
    for combo in combinations(dict(cfg, matrix=dict(m, **sound)), [info for info, _ in models]):
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


# --------------------------------------------------------------------------- compiled artifacts
# The runtime classes (pipeline.modeling) check an artifact folder's config.json and
# manifest.json with these before any backend reads a file of it.


def read_artifact_json(path: Path) -> dict:
    """The JSON object in an artifact's file; ArtifactError naming the file otherwise."""
    try:
        return read_json_object(path)
    except ModelConfigError as e:
        raise ArtifactError(str(e)) from None


def check_artifact_meta(config: dict, where: Path) -> dict:
    """The `pipeline` section of an artifact's config.json, checked field by field."""
    meta = config.get("pipeline")
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where} has no 'pipeline' section: not an artifact compiled by pipeline")
    spec = meta.get("spec")
    spec_backend = spec.get("backend") or {} if isinstance(spec, dict) else None
    options = meta.get("backend_options") or (spec_backend or {}).get("options") or {}
    shapes = meta.get("shapes")
    task = meta.get("task") if isinstance(meta.get("task"), str) and meta["task"] in TASKS else None
    problems = {
        "task": task is None,
        "backend": not isinstance(meta.get("backend"), str) or meta["backend"] not in MODULES,
        "spec": not isinstance(spec, dict) or not isinstance(spec_backend, dict),
        "backend_options": not isinstance(options, dict),
        "shapes": not isinstance(shapes, dict)
        or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in shapes.values())
        or (task is not None and any(a not in shapes for a in TASKS[task].axes)),
        "input_names": not isinstance(meta.get("input_names"), list)
        or not all(isinstance(n, str) for n in meta["input_names"]),
    }
    for field_, bad in problems.items():
        if bad:
            raise ArtifactError(f"{where}: pipeline.{field_}: {meta.get(field_)!r} is not valid")
    if not isinstance(config.get("compiled") or {}, dict):
        raise ArtifactError(f"{where}: compiled: expected a mapping, got {config['compiled']!r}")
    return dict(meta, backend_options=options)


def _file_fields(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every key named `file` or `*_file` under a config.json section."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        sub = f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]"
        if isinstance(k, str) and (k == "file" or k.endswith("_file")):
            yield sub, v
        else:
            yield from _file_fields(v, sub)


def check_artifact_file_names(config: dict, where: Path) -> None:
    """File names the runtime joins to the folder must be plain names inside it."""
    for section, node in config.items():
        if section == "pipeline" or not isinstance(node, (dict, list)):
            continue
        for path, v in _file_fields(node, section):
            plain = isinstance(v, str) and v not in ("", ".", "..") and not any(c in v for c in "/\\\0")
            if v is not None and not plain:
                raise ArtifactError(f"{where}: {path}: {v!r} is not a plain file name in the artifact folder")


def check_artifact_manifest(folder: Path, integrity: bool) -> dict | None:
    """manifest.json (None when absent), its file table checked against the files on disk."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = read_artifact_json(path)
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not isinstance(manifest.get("verification") or {}, dict):
        raise ArtifactError(f"{path}: 'files' and 'verification' must be mappings")
    for rel, meta in files.items():
        if not safe_rel(rel):
            raise ArtifactError(f"{path}: files: {rel!r} is not a path inside the artifact folder")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or type(meta.get("size")) is not int:
            raise ArtifactError(f"{path}: files.{rel}: expected {{sha256, size}}, got {meta!r}")
    if integrity:  # logs/ are never loaded (and not published)
        problem = check_integrity(folder, {"files": {r: m for r, m in files.items() if is_artifact_file(r, False)}})
        if problem is not None:
            raise ArtifactError(f"{folder}/{problem} (against {MANIFEST}): the artifact changed after it was verified")
    return manifest
