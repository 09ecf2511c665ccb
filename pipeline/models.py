"""Model entries: where a model lives, its config.json facts, and the revision that keys it.

Only config.json is ever read here, never weights, so planning stays fast and offline-safe.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
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
        c = self.config or {}
        for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
            if isinstance(c.get(k), int):
                return c[k]
        return self.max_positions_declared

    def spec_model(self) -> dict:
        """The model part of a spec: id and the commit sha or content hash."""
        return {"id": self.id if not self.local else f"local:{Path(self.id).name}", "revision": resolve_revision(self)}


def validation_job(model: "ModelInfo", shapes: dict, cast_type: str, auto_cast: str, dynamic_batch_size: bool) -> dict:
    """The fields of one combination that `Backend.validate` checks."""
    return {"model": {"id": model.id, "task": model.task, "config": model.config, "name": model.name}, "task": model.task,
            "shapes": shapes, "cast_type": cast_type, "auto_cast": auto_cast, "dynamic_batch_size": dynamic_batch_size}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def read_config(model_id: str, local: bool, revision: str | None) -> dict | None:
    """config.json of a local folder, or of a Hub model from the local HF cache (or the Hub
    when online). None when it cannot be read."""
    if local:
        p = Path(model_id).expanduser() / "config.json"
        return json.loads(p.read_text()) if p.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision or "main")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    if offline():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model_id, "config.json", revision=revision or "main", etag_timeout=5)).read_text())
    except Exception:
        return None


def content_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the files that decide a local model's artifact."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in CONTENT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            h.update(b"\0")
    return "sha256:" + h.hexdigest()


_resolved: dict[tuple[str, str | None], str] = {}


def resolve_revision(model: ModelInfo) -> str:
    """Commit sha (Hub) or content hash (local folder). Never a silent guess: a branch name
    that cannot be resolved raises RevisionError naming the model."""
    memo = (model.path, model.revision)
    if memo in _resolved:
        return _resolved[memo]
    if model.local:
        out = content_hash(Path(model.path))
    else:
        rev = model.revision or "main"
        if COMMIT_SHA.match(rev):
            out = rev
        else:
            out = _sha_from_hf_cache(model.id, rev) or _sha_from_hub(model.id, rev)
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
        raise RevisionError(f"{model_id}: cannot resolve revision {rev!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def entry_from(item: Any, path: str, errors: list[str]) -> ModelInfo | None:
    """A matrix model item (file name or inline dict) -> ModelInfo, appending errors."""
    from pipeline.config import check_model_id, check_revision, is_local_id, load_model_file, model_files
    from pipeline.tasks import TASKS, canonical_task

    if isinstance(item, str):
        data = load_model_file(item)
        if data is None:
            errors.append(f"{path}: no model config named {item!r} in configs/model/ (known: {', '.join(model_files())})")
            return None
    elif isinstance(item, dict):
        data = dict(item)
    else:
        errors.append(f"{path}: expected a model name or a mapping {{id, task, revision}}, got {item!r}")
        return None
    known = {"id", "task", "revision", "name", "max_positions"}
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
    if not isinstance(task, str) or canonical_task(task) is None:
        errors.append(f"{path}.task: {task!r} is not a supported task; known: {', '.join(TASKS)}")
        ok = False
    rev = data.get("revision")
    if rev is not None and (not isinstance(rev, str) or (why := check_revision(rev)) is not None):
        errors.append(f"{path}.revision: {why if isinstance(rev, str) else 'must be a string'}")
        ok = False
    maxp = data.get("max_positions")
    if maxp is not None and (not isinstance(maxp, int) or maxp < 1):
        errors.append(f"{path}.max_positions: must be an integer >= 1")
    if not ok:
        return None
    local = is_local_id(model_id)
    name = data.get("name") or Path(model_id.rstrip("/")).name
    return ModelInfo(
        name=str(name), id=model_id, task=canonical_task(task), revision=rev, local=local,
        config=read_config(model_id, local, rev), max_positions_declared=maxp,
    )
