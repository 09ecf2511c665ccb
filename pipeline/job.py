"""The shapes of the plain data that travels between planner, executors, workers and reports.

They stay dicts on purpose (JSON-able and picklable: written as they are to plan.json, job.json,
result.json and report.json); these TypedDicts name every field once, so a reader and a type
checker see one definition instead of five ad-hoc shapes.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ModelRef(TypedDict, total=False):
    name: str  # display name (config file name or folder name)
    id: str  # Hub repo id or the local folder as given
    path: str  # what loaders open: the Hub id, or the absolute local folder
    local: bool
    revision: str  # commit sha, or "sha256:<content hash>" of a local folder
    params: int | None  # estimated parameter count (config.json), for estimates and shards


class Spec(TypedDict, total=False):
    """Everything that decides the compiled bytes; its canonical JSON hashes to the key."""

    model: dict[str, str]  # {id, revision}
    task: str
    shapes: dict[str, int]
    cast_type: str
    auto_cast: str
    dynamic_batch_size: bool
    backend: dict[str, Any]  # {name, options}
    toolchain: dict[str, Any]
    recipe: str
    quantization: dict[str, str]


class VerifySettings(TypedDict):
    tolerance: dict[str, float]
    generate_tokens: int
    seed: int


class ValidationJob(TypedDict):
    """The fields of one combination that Backend.validate checks (before any spec exists)."""

    model: dict[str, Any]
    task: str
    shapes: dict[str, int | None]
    cast_type: str
    auto_cast: str
    dynamic_batch_size: bool


class Job(TypedDict, total=False):
    """A spec + key + verification settings; plus what planning adds (status, estimate,
    rebuild) and what a worker needs besides (cache_dir, shared_cache, memory_limit_gb)."""

    key: str
    graph_key: str | None  # the program without weights (keys.graph_key); None when config.json is unknown
    spec: Spec
    model: ModelRef
    task: str
    shapes: dict[str, int]
    cast_type: str
    backend: str
    backend_options: dict[str, Any]
    verify: VerifySettings
    timeout_s: int
    status: str  # hit | miss | failed-before | refit (plan)
    estimate: dict[str, Any]  # {seconds, basis}
    rebuild: dict[str, Any]  # {text, fields, against}
    cache_dir: str
    shared_cache: dict[str, Any]
    memory_limit_gb: float | None


class WorkerResult(TypedDict, total=False):
    """What a worker process writes to result.json."""

    key: str
    status: str  # passed | cached | fetched | failed (transient | timeout: from the launcher)
    error: str | None
    metrics: dict[str, dict[str, Any]]
    timings: dict[str, Any]
    artifact: str | None
    notes: list[str]
    pid: int


class Row(TypedDict, total=False):
    """One job's line in report.json."""

    key: str
    model: str
    task: str
    shapes: dict[str, int]
    cast_type: str
    backend: str
    status: str  # passed | cached | failed | failed-to-publish | interrupted | skipped
    error: str | None
    metrics: dict[str, dict[str, Any]]
    timings: dict[str, Any]
    artifact: str | None
    attempts: int
    notes: list[str]
    pid: int | None
    rebuild: str
    estimate: dict[str, Any]
    published: dict[str, Any] | None
