"""The typed run-config schema and `validate()`, which reports every problem at once.

Hydra composes the YAML tree untyped; `validate()` then checks the composed config against
these dataclasses (registered in Hydra's ConfigStore) and against the models' config.json
files, collecting every error with its config path. OmegaConf's own struct checks stop at the
first error, which is the wrong experience for a fleet config with forty entries.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline import keys
from pipeline.tasks import TASKS, canonical_task

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MODES = ("run", "plan", "validate", "explain", "gc")


@dataclass
class ModelEntry:
    id: str = ""  # Hub repo id ("org/name") or a local folder holding config.json + *.safetensors
    task: str = ""  # one of pipeline.tasks.TASKS
    revision: Optional[str] = None  # branch, tag or commit sha of a Hub model (default "main")
    name: Optional[str] = None  # display name; defaults to the config file's or the id's last part
    max_positions: Optional[int] = None  # the model's max positions, used only when config.json is unreadable offline


@dataclass
class Shape:
    batch_size: int = 1  # static batch size compiled into the artifact
    sequence_length: Optional[int] = None  # tokens; text-generation: prompt + generated (default: model max)


@dataclass
class Matrix:
    models: List[Any] = field(default_factory=list)  # names of configs/model/*.yaml or inline {id, task, revision}
    shapes: List[Shape] = field(default_factory=lambda: [Shape(1, 128)])  # input shapes to compile for
    cast_types: List[str] = field(default_factory=lambda: ["fp32"])  # fp32 | bf16 | fp16 | int8
    auto_cast: str = "matmul"  # scope of the cast for compilers that support one: none | matmul | all
    dynamic_batch_size: bool = False  # accept any batch size up to shapes.batch_size (inductor) / chunked (neuron)
    include: List[Dict[str, Any]] = field(default_factory=list)  # extra combinations {model, batch_size, sequence_length, cast_type}
    exclude: List[Dict[str, Any]] = field(default_factory=list)  # partial matches removed from the product


@dataclass
class Tolerance:
    atol: Optional[float] = None  # max-abs error bound over non-pad positions
    rtol: Optional[float] = None  # element-wise relative bound, used with atol as |d| <= atol + rtol*|ref|
    max_rel_error: Optional[float] = None  # ||got-ref|| / ||ref|| (Frobenius) bound
    min_cosine: Optional[float] = None  # cosine similarity lower bound, flattened and per token
    min_argmax_agreement: Optional[float] = None  # classification heads: share of equal argmax
    min_token_agreement: Optional[float] = None  # text-generation: greedy agreement rate vs eager


def _default_tolerances() -> Dict[str, Tolerance]:
    return {
        "fp32": Tolerance(atol=1e-4, rtol=1e-4, min_argmax_agreement=1.0, min_token_agreement=1.0),
        "bf16": Tolerance(max_rel_error=3e-2, min_cosine=0.999, min_argmax_agreement=0.9, min_token_agreement=0.5),
        "fp16": Tolerance(max_rel_error=5e-3, min_cosine=0.9999, min_argmax_agreement=0.95, min_token_agreement=0.75),
        "int8": Tolerance(max_rel_error=0.2, min_cosine=0.99, min_argmax_agreement=0.8, min_token_agreement=0.25),
    }


@dataclass
class VerifyConfig:
    tolerances: Dict[str, Tolerance] = field(default_factory=_default_tolerances)  # gate per cast type
    generate_tokens: int = 32  # text-generation: greedy tokens compared with eager generate()
    seed: int = 0  # seed of the example inputs


@dataclass
class CacheConfig:
    dir: str = "artifacts/cache"  # content-addressed local store
    max_size_gb: float = 20.0  # mode=gc prunes least-recently-used entries above this
    stale_tmp_hours: float = 6.0  # mode=gc removes temp dirs older than this


@dataclass
class ReportConfig:
    dir: str = "artifacts/runs"  # one <run-id>/ folder per run, plus `latest`


@dataclass
class ExecutorConfig:
    name: str = "local"  # local process pool
    workers: int = 1  # parallel compiles; compiles are CPU-bound, so 1 is right on small machines
    standby: bool = True  # start the next job's process (imports) while a job compiles; ~250 MB RSS each


@dataclass
class PublishConfig:
    name: str = "none"  # none | local | hub
    dry_run: bool = False  # list what would be pushed where, push nothing
    dir: str = "artifacts/published"  # publish=local: where the repo layout is written
    namespace: str = "compiled"  # owner of the variant repos
    repo_template: str = "{namespace}/{model_name}-{backend}-{cast_type}-b{batch_size}-s{sequence_length}"
    revision_template: Optional[str] = None  # e.g. "{backend}-{cast_type}-b{batch_size}-s{sequence_length}": one repo per model
    cache_repo: Optional[str] = None  # shared content-addressed cache repo, consulted before compiling
    endpoint: Optional[str] = None  # Hub endpoint; default HF_ENDPOINT or huggingface.co


@dataclass
class RunConfig:
    mode: str = "run"  # run | plan | validate | explain | gc
    matrix: Matrix = field(default_factory=Matrix)
    model: Optional[Any] = None  # +model=<name>: one more model added to the matrix
    backend: Dict[str, Any] = field(default_factory=dict)  # checked against the chosen backend's Options
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    timeout_s: int = 1800  # per-job limit (compile + verify), seconds
    fail_fast: bool = False  # stop scheduling jobs after the first failure
    retry_failed: bool = True  # recompile keys that failed in an earlier run
    shard: Optional[str] = None  # "i/N": run the i-th of N stable partitions (1-based)
    key: Optional[str] = None  # mode=explain: key or key prefix to explain
    against: Optional[str] = None  # mode=explain: a second key to diff against


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    from pipeline.backends import BACKEND_OPTIONS

    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=RunConfig)
    for name, options in BACKEND_OPTIONS().items():
        cs.store(group="backend", name=f"{name}_schema", node=options)


# --------------------------------------------------------------------------- validation


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
                    f"{sub}: unknown key" + (f" (did you mean '{near[0]}'?)" if near else f"; known: {', '.join(hints)}"))
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
            if dataclasses.is_dataclass(item) and isinstance(value, list) and any(e.startswith(f"{path}[{i}]: ") for e in errors[before:]):
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


HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?)?$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def is_local_id(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).is_dir()


def check_model_id(model_id: str) -> str | None:
    """None when the id is a safe Hub repo id or an existing local model folder, else why not."""
    if not model_id:
        return "must not be empty"
    if is_local_id(model_id):
        p = Path(model_id).expanduser()
        if not p.is_dir():
            return f"local model folder {model_id!r} does not exist (run `make tiny-models` for the smoke models)"
        if not (p / "config.json").is_file():
            return f"local model folder {model_id!r} has no config.json"
        return None
    if ".." in model_id or "--" in model_id or not HUB_ID.match(model_id):
        return f"{model_id!r} is not a valid Hub repo id (expected 'name' or 'org/name' of letters, digits, '-', '_', '.')"
    return None


def check_revision(revision: str) -> str | None:
    if ".." in revision or not REVISION.match(revision) or revision.endswith("/"):
        return f"{revision!r} is not a valid revision (branch, tag or 40-hex commit sha)"
    return None


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


def load_model_file(name: str) -> dict | None:
    path = CONFIG_DIR / "model" / f"{name}.yaml"
    if not path.is_file() or "/" in name or "\\" in name:
        return None
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    data.setdefault("name", name)
    return data


def model_files() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


# Position embeddings these model types reserve for the padding offset.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


@dataclass
class Resolved:
    """A validated config: plain data plus the resolved model entries."""

    cfg: dict
    models: list  # list[pipeline.models.ModelInfo]


def validate(cfg: dict) -> Resolved:
    """Check a composed config; raise ConfigError with every problem, each with its path."""
    from pipeline.backends import MODULES, get_backend, options_class
    from pipeline.models import entry_from, validation_job

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
    if mode == "explain" and not cfg.get("key"):
        errors.append("key: mode=explain needs key=<key or prefix> (and optionally against=<other key>)")
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
            errors.append(f"matrix.cast_types[{i}]: {c!r} is not a cast type; known: {', '.join(keys.CAST_TYPES)} (and aliases)")
        elif backend is not None and canon not in backend.cast_types:
            errors.append(f"matrix.cast_types[{i}]: {c!r} is not supported by backend {bname}; it supports {', '.join(backend.cast_types)}")
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
            errors.append(f"{path}.task: {info.task!r} is not supported by backend {bname}; it supports {', '.join(backend.tasks)}")
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
                errors.append(f"matrix.exclude[{j}].{k}: {v!r} is not in the matrix (values: {', '.join(map(str, sorted(known_values[k], key=str)))})")
    for j, inc in enumerate(m.get("include") or []):
        for k, v in inc.items():
            if k not in ("model", "batch_size", "sequence_length", "cast_type"):
                errors.append(f"matrix.include[{j}].{k}: unknown key; known: model, batch_size, sequence_length, cast_type")
        if inc.get("model") not in known_values["model"]:
            errors.append(f"matrix.include[{j}].model: {inc.get('model')!r} is not a model of the matrix ({', '.join(names)})")
        if "cast_type" in inc and keys.canonical_cast_type(inc["cast_type"]) is None:
            errors.append(f"matrix.include[{j}].cast_type: {inc['cast_type']!r} is not a cast type")
        for axis in ("batch_size", "sequence_length"):
            if axis in inc and (not isinstance(inc[axis], int) or inc[axis] < 1):
                errors.append(f"matrix.include[{j}].{axis}: must be an integer >= 1, got {inc[axis]!r}")

    # per-combination checks: mandatory axes, max positions, backend rules
    from pipeline.plan import combinations

    for combo in combinations(cfg, [info for info, _ in models]):
        if combo["cast_type"] is None:
            continue  # already reported
        where = combo["where"]
        info = combo["model"]
        mpath = dict((i.name, p) for i, p in models)[info.name]
        axes = TASKS[info.task].axes
        for axis in axes:
            if combo["shapes"].get(axis) is None:
                errors.append(f"{where['shape']}.{axis}: required for task {info.task} of {info.name} (mandatory axes: {', '.join(axes)})")
        seq = combo["shapes"].get("sequence_length")
        maxp = info.max_positions
        if maxp is not None and seq is not None:
            limit = maxp - POSITION_OFFSET.get((info.config or {}).get("model_type"), 0)
            if seq > limit:
                errors.append(f"{where['shape']}.sequence_length: {seq} exceeds max_position_embeddings {limit} of {info.name}")
        if backend is not None:
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
                errors.append(f"{path}:{text} ({info.name}, {combo['cast_type']}, b{combo['shapes'].get('batch_size')} s{seq})" if not field_.startswith("backend") else f"{path}:{text}")
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return Resolved(cfg=cfg, models=[info for info, _ in models])
