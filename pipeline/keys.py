"""Spec -> key, and `explain`.

A key is the sha256 of the canonical JSON of a spec: sorted keys, no whitespace, ASCII,
no NaN. Python's json module formats floats with repr(), which does not depend on the
locale, so the same spec gives the same key on every machine.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from typing import Any

# Bump when the export/compile code changes in a way that changes the compiled bytes.
RECIPE_VERSION = "2026.11.27"

# Equivalent spellings of a cast type map to one canonical name, so they share a key.
CAST_TYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "int8": "int8",
    "qint8": "int8",
}
CAST_TYPES = ("fp32", "bf16", "fp16", "int8")
AUTO_CAST_SCOPES = ("none", "matmul", "all")
SHORT = 12


def canonical_cast_type(name: str) -> str | None:
    """The canonical cast type for a spelling, or None when it is not one."""
    return CAST_TYPE_ALIASES.get(str(name).lower())


def package_version(dist: str) -> str:
    """An installed distribution's version for a toolchain, or "absent"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def key_of(spec: dict) -> str:
    return hashlib.sha256(canonical_json(spec).encode("ascii")).hexdigest()


def short(key: str) -> str:
    return key[:SHORT]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value, for explain and diff."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k in sorted(obj):
            out.update(flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def diff(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """Fields whose values differ between two specs: (path, value in a, value in b)."""
    fa, fb = flatten(a), flatten(b)
    missing = object()
    rows = []
    for path in sorted(set(fa) | set(fb)):
        va, vb = fa.get(path, missing), fb.get(path, missing)
        if va != vb:
            rows.append((path, None if va is missing else va, None if vb is missing else vb))
    return rows


# --------------------------------------------------------------------------- graph key

# config.json fields that name, label or date a checkpoint but never change the compiled program.
# id2label / label2id carry label *names*: only their count (num_labels) shapes the graph.
WEIGHT_ONLY_CONFIG_FIELDS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "transformers_version",
        "id2label",
        "label2id",
        "finetuning_task",
        "task_specific_params",
        "torch_dtype",  # the spec's cast_type decides the compiled dtype; weights load as fp32
        "dtype",
    }
)


def architecture(config: dict) -> dict:
    """The compile-relevant part of a model's config.json: everything but the fields that name,
    label or date a checkpoint. Two fine-tunes of one base agree on it; any shape, layer count,
    activation or head size makes it differ."""
    arch = {k: v for k, v in config.items() if k not in WEIGHT_ONLY_CONFIG_FIELDS}
    labels = config.get("id2label")
    if isinstance(labels, dict):
        arch["num_labels"] = len(labels)
    return arch


def graph_spec(spec: dict, config: dict | None) -> dict | None:
    """The spec of the program without its weights: the spec minus the model's id and
    revision (commit or content hash), plus the architecture from its config.json. None when
    the config is unknown (unreadable offline): such a job never shares a program."""
    if not isinstance(config, dict):
        return None
    out = {k: v for k, v in spec.items() if k != "model"}
    out["architecture"] = architecture(config)
    return out


def graph_key(spec: dict, config: dict | None) -> str | None:
    """Names a compiled program with no weights inside; the full key (key_of) still names one
    verified artifact: graph + these weights."""
    g = graph_spec(spec, config)
    return None if g is None else key_of(g)


def shared_program(job: dict) -> str | None:
    """The graph key under which a job shares its program with other fine-tunes (backend option
    weights: refit), or None when its artifact embeds its weights."""
    return job.get("graph_key") if (job.get("backend_options") or {}).get("weights") == "refit" else None
