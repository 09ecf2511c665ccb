"""Model entries: id and revision rules, where a model lives, its config.json facts, and the
revision that keys it (a Hub commit sha, or a content hash of a local folder's files).

No model is ever loaded here. A Hub model costs one config.json read; a local folder's key
reads its files' bytes once (the content hash), and again only when a file changed.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import ModelEntry
from pipeline.config_files import ModelConfigError, not_utf8, read_json_object, yaml_problem
from pipeline.job import ValidationJob
from pipeline.tasks import AUTO, TASKS, TaskInferenceError, canonical_task, infer_task

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# config.json keys that hold a model's maximum number of positions, in order of preference.
MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# Files whose bytes decide the compiled artifact (weights, configs, tokenizer).
CONTENT_SUFFIXES = (".json", ".safetensors", ".txt", ".model")


class RevisionError(Exception):
    """A Hub revision that cannot be resolved to a commit sha (e.g. offline)."""


@dataclass
class ModelInfo:
    name: str
    id: str
    task: str
    revision: str | None
    local: bool
    config: dict | None  # config.json contents when readable
    max_positions_declared: int | None = None

    @property
    def path(self) -> str:
        return str(Path(self.id).expanduser().resolve()) if self.local else self.id

    @property
    def max_positions(self) -> int | None:
        found = max_positions(self.config or {})
        return found if found is not None else self.max_positions_declared

    def spec_model(self) -> dict:
        """The model part of a spec: id and the commit sha or content hash."""
        return {"id": self.id if not self.local else f"local:{Path(self.id).name}", "revision": resolve_revision(self)}


def max_positions(config: Any) -> int | None:
    """The maximum number of positions of a config.json dict (or a transformers config), or None."""
    for k in MAX_POSITION_KEYS:
        v = config.get(k) if isinstance(config, dict) else getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def validation_job(
    model: "ModelInfo", shapes: dict, cast_type: str, auto_cast: str, dynamic_batch_size: bool
) -> ValidationJob:
    """The fields of one combination that `Backend.validate` checks."""
    return {
        "model": {"id": model.id, "task": model.task, "config": model.config, "name": model.name},
        "task": model.task,
        "shapes": shapes,
        "cast_type": cast_type,
        "auto_cast": auto_cast,
        "dynamic_batch_size": dynamic_batch_size,
    }


def offline() -> bool:
    """The one offline switch for the whole package: HF_HUB_OFFLINE read at call time, or
    huggingface_hub's own constant (fixed when the library was first imported): when either
    says offline, nothing tries the network, so the two can never disagree in effect."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


HUB_ID = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?)?$"
)
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


def is_hub_id(value: object) -> bool:
    """A safe Hub repo id: 'name' or 'org/name', no '..' or '--' (which the Hub reserves)."""
    return isinstance(value, str) and ".." not in value and "--" not in value and bool(HUB_ID.match(value))


# First path components that are local folders, never a Hub organisation.
LOCAL_ROOTS = ("artifacts",)
SMOKE_MODELS = "artifacts/models"


def _local_path(model_id: str) -> Path:
    try:
        return Path(model_id).expanduser()
    except RuntimeError:  # ~user that does not exist
        return Path(model_id)


def is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def is_local_id(model_id: str) -> bool:
    """A local folder: an explicit path (/, ./, ../, ~), an existing folder, a path of more
    than two parts (a Hub id is 'name' or 'org/name'), or one whose first part is a local
    root (artifacts/) or an existing folder."""
    if model_id.startswith(("/", "./", "../", "~")) or is_dir(_local_path(model_id)):
        return True
    parts = model_id.split("/")
    return len(parts) > 2 or (len(parts) == 2 and (parts[0] in LOCAL_ROOTS or is_dir(Path(parts[0]))))


def check_model_id(model_id: str) -> str | None:
    """None when the id is a safe Hub repo id or an existing local model folder, else why not."""
    if not model_id:
        return "must not be empty"
    if "\0" in model_id:
        return f"{model_id!r} holds a NUL character"
    if is_local_id(model_id):
        p = _local_path(model_id)
        if not is_dir(p):
            smoke = Path(model_id).as_posix().lstrip("./").startswith(SMOKE_MODELS + "/")
            hint = "; build the smoke models with `make tiny-models`" if smoke else ""
            return f"local model folder {model_id!r} does not exist{hint}"
        if not _is_file(p / "config.json"):
            return f"local model folder {model_id!r} has no config.json"
        return None
    if not is_hub_id(model_id):
        return (
            f"{model_id!r} is not a valid Hub repo id (expected 'name' or 'org/name' of letters, digits, '-', '_', '.')"
        )
    return None


def check_revision(revision: str) -> str | None:
    if ".." in revision or not REVISION.match(revision) or revision.endswith("/"):
        return f"{revision!r} is not a valid revision (branch, tag or 40-hex commit sha)"
    return None


def load_model_file(name: str) -> dict | None:
    """configs/model/<name>.yaml as a dict; None when there is no such file; ModelConfigError
    (file, line, column) when it is not valid YAML, not UTF-8 or not a mapping."""
    if not name or any(c in name for c in "/\\\0"):
        return None
    path = CONFIG_DIR / "model" / f"{name}.yaml"
    if not _is_file(path):
        return None
    shown = f"configs/model/{name}.yaml"
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as e:
        raise ModelConfigError(yaml_problem(e, shown)) from None
    except UnicodeDecodeError:
        raise ModelConfigError(not_utf8(path, shown)) from None
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
        raise ModelConfigError(f"{shown}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{shown}: expected a mapping {{id, task, ...}}, got {type(data).__name__}")
    data.setdefault("name", name)
    return data


def model_files() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


# Position embeddings these model types reserve for the padding offset.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def read_config(model_id: str, local: bool, revision: str | None) -> dict | None:
    """config.json of a local folder, or of a Hub model from the local HF cache (or the Hub
    when online). None when there is none; ModelConfigError naming the file when it is not
    a JSON object."""
    if local:
        p = _local_path(model_id) / "config.json"
        return read_json_object(p, f"{model_id.rstrip('/')}/config.json") if _is_file(p) else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision or "main")
    if isinstance(cached, str):
        return read_json_object(Path(cached), f"{model_id}: config.json ({cached})")
    if offline():
        return None
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(model_id, "config.json", revision=revision or "main", etag_timeout=5)
    except Exception:
        return None
    return read_json_object(Path(downloaded), f"{model_id}: config.json ({downloaded})")


def custom_code_problem(model_id: str, config: dict | None) -> str | None:
    """Why a model cannot be used because it needs its own code (the pipeline never runs remote code)."""
    if isinstance(config, dict) and config.get("auto_map"):
        return f"{model_id} needs custom code (auto_map in config.json); the pipeline never runs remote code"
    return None


def _content_files(folder: Path) -> list[Path]:
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.suffix in CONTENT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def _signature(files: list[Path]) -> tuple:
    """Names, sizes and mtimes: a change to any file of the folder changes it."""
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])


_hashed: dict[str, tuple[tuple, str]] = {}


def content_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the files that decide a local model's artifact.

    Remembered per folder for as long as no file's name, size or mtime changes, so a plan of
    many jobs hashes a folder once, and an edited folder gets a new hash in the same process."""
    files = _content_files(folder)
    signature = _signature(files)
    memo = _hashed.get(str(folder))
    if memo is not None and memo[0] == signature:
        return memo[1]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    out = "sha256:" + h.hexdigest()
    _hashed[str(folder)] = (signature, out)
    return out


_resolved: dict[tuple[str, str | None], str] = {}  # Hub (id, revision) -> commit sha


def resolve_revision(model: ModelInfo) -> str:
    """Commit sha (Hub) or content hash (local folder). Never a silent guess: a branch name
    that cannot be resolved raises RevisionError naming the model."""
    if model.local:
        return content_hash(Path(model.path))
    memo = (model.path, model.revision)
    if memo in _resolved:
        return _resolved[memo]
    rev = model.revision or "main"
    out = rev if COMMIT_SHA.match(rev) else _sha_from_hf_cache(model.id, rev) or _sha_from_hub(model.id, rev)
    _resolved[memo] = out
    return out


def _sha_from_hf_cache(model_id: str, rev: str) -> str | None:
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / rev
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if COMMIT_SHA.match(sha) else None
    return None


def _sha_from_hub(model_id: str, rev: str) -> str:
    if offline():
        raise RevisionError(
            f"{model_id}: cannot resolve revision {rev!r} to a commit offline (HF_HUB_OFFLINE=1) and it is not in the "
            f"local HF cache; pin `revision: <40-hex commit sha>` or run online"
        )
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(model_id, revision=rev).sha
    except Exception as e:  # network, 404, auth: name the model and the cause
        raise RevisionError(
            f"{model_id}: cannot resolve revision {rev!r}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def entry_from(item: Any, path: str, errors: list[str]) -> ModelInfo | None:
    """A matrix model item (file name or inline dict) -> ModelInfo, appending errors."""
    if isinstance(item, str):
        try:
            data = load_model_file(item)
        except ModelConfigError as e:
            errors.append(f"{path}: {e}")
            return None
        if data is None:
            errors.append(
                f"{path}: no model config named {item!r} in configs/model/ (known: {', '.join(model_files())})"
            )
            return None
    elif isinstance(item, dict):
        data = dict(item)
    else:
        errors.append(f"{path}: expected a model name or a mapping {{id, task, revision}}, got {item!r}")
        return None
    known = set(ModelEntry.__dataclass_fields__)
    for k in data:
        if k not in known:
            near = difflib.get_close_matches(str(k), sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            errors.append(f"{path}.{k}: unknown key{hint}; known: {', '.join(sorted(known))}")
    model_id, task = data.get("id"), data.get("task")
    ok = True
    if not isinstance(model_id, str) or not model_id:
        errors.append(f"{path}.id: required (a Hub repo id or a local folder)")
        ok = False
    elif (why := check_model_id(model_id)) is not None:
        errors.append(f"{path}.id: {why}")
        ok = False
    auto = isinstance(task, str) and task.lower() == AUTO
    if not auto and (not isinstance(task, str) or canonical_task(task) is None):
        errors.append(f"{path}.task: {task!r} is not a supported task; known: {', '.join(TASKS)}, or auto")
        ok = False
    rev = data.get("revision")
    if rev is not None and (not isinstance(rev, str) or (why := check_revision(rev)) is not None):
        errors.append(f"{path}.revision: {why if isinstance(rev, str) else 'must be a string'}")
        ok = False
    maxp = data.get("max_positions")
    if maxp is not None and (not isinstance(maxp, int) or isinstance(maxp, bool) or maxp < 1):
        errors.append(f"{path}.max_positions: must be an integer >= 1")
        maxp = None
    if not ok:
        return None
    local = is_local_id(model_id)
    try:
        config = read_config(model_id, local, rev)
    except ModelConfigError as e:
        errors.append(f"{path}.id: {e}")
        return None
    why = custom_code_problem(model_id, config)
    if why is not None:
        errors.append(f"{path}.id: {why}")
        return None
    name = data.get("name") or Path(model_id.rstrip("/")).name
    if auto:
        try:
            task = infer_task(config)
        except TaskInferenceError as e:
            errors.append(f"{path}.task: auto: cannot infer the task of {name} ({model_id}): {e}; set `task:`")
            return None
    return ModelInfo(
        name=str(name),
        id=model_id,
        task=canonical_task(task),
        revision=rev,
        local=local,
        config=config,
        max_positions_declared=maxp,
    )
