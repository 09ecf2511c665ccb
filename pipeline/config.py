"""The typed run-config schema: every knob, its default and a one-line doc.

Hydra composes the YAML tree (configs/) untyped; `pipeline.validate` checks the composed
config against these dataclasses and reports every problem at once with its path. They are
not registered in Hydra's ConfigStore on purpose: Hydra's struct checks stop at the first
error, which is the wrong experience for a fleet config with forty entries. The YAML files
hold the defaults a run starts from; these dataclasses hold the types, the docs and the
fallbacks `validate` puts in place of a wrong value so the other checks can still run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MODES = ("run", "plan", "validate", "explain", "gc", "merge", "ls", "sync")


@dataclass
class ModelEntry:
    id: str = ""  # Hub repo id ("org/name") or a local folder holding config.json + *.safetensors
    task: str = ""  # one of pipeline.tasks.TASKS, or auto: inferred from config.json's architectures
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
    include: List[Dict[str, Any]] = field(
        default_factory=list
    )  # extra combinations {model, batch_size, sequence_length, cast_type}
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
    name: str = "local"  # local (process pool on this machine) | ray (a Ray cluster)
    workers: int = 1  # parallel compiles; compiles are CPU-bound, so 1 is right on small machines
    standby: bool = True  # start the next job's process (imports) while a job compiles; ~250 MB RSS each
    memory_limit_gb: Optional[float] = None  # cap on a worker's address space; past it the job fails "out of memory"
    jobs_per_process: int = 1  # local: jobs one worker process takes in turn (replaced after a failure/timeout)
    max_rss_gb: Optional[float] = None  # local: a reused worker is replaced once its RSS passes this
    address: Optional[str] = None  # ray: "auto", "ray://host:port", or null = a local cluster started for the run
    num_cpus: float = 1.0  # ray: CPUs each job's task reserves
    memory_gb: Optional[float] = None  # ray: memory each job's task reserves
    num_gpus: float = 0.0  # ray: GPUs each job's task reserves
    resources: Dict[str, float] = field(default_factory=dict)  # ray: custom resources per job, e.g. {neuron_cores: 2}
    max_calls: int = 8  # ray: jobs one Ray worker process runs before Ray replaces it
    max_retries: int = 1  # ray: retries for system failures only (node or worker death), never for a failed job


@dataclass
class PublishConfig:
    name: str = "none"  # none | local | hub
    dry_run: bool = False  # list what would be pushed where, push nothing
    dir: str = "artifacts/published"  # publish=local: where the repo layout is written
    namespace: str = "compiled"  # owner of the variant repos
    repo_template: str = "{namespace}/{model_name}-{backend}-{cast_type}-b{batch_size}-s{sequence_length}"
    revision_template: Optional[str] = (
        None  # e.g. "{backend}-{cast_type}-b{batch_size}-s{sequence_length}": one repo per model
    )
    cache_repo: Optional[str] = None  # shared content-addressed cache repo, consulted before compiling (no default)
    endpoint: Optional[str] = None  # Hub endpoint; default HF_ENDPOINT or huggingface.co
    private: bool = True  # repos this run creates are private; false creates them public
    allow_gated: bool = False  # publish artifacts of gated models (their weights are baked into the artifact)


@dataclass
class SharedCacheConfig:
    verify: bool = True  # re-verify a fetched entry against the CPU fp32 reference before first use
    trusted_repos: List[str] = field(default_factory=list)  # if set, only these cache repos are read at all


@dataclass
class RunConfig:
    mode: str = "run"  # run | plan | validate | explain | gc | merge | ls | sync
    matrix: Matrix = field(default_factory=Matrix)
    model: Optional[Any] = None  # +model=<name>: one more model added to the matrix
    backend: Dict[str, Any] = field(default_factory=dict)  # checked against the chosen backend's Options
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    shared_cache: SharedCacheConfig = field(default_factory=SharedCacheConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    timeout_s: int = 1800  # per-job limit (compile + verify), seconds
    fail_fast: bool = False  # stop scheduling jobs after the first failure
    retry_failed: bool = True  # recompile keys that failed in an earlier run
    reuse_larger_shapes: bool = False  # a miss may take a verified local entry of larger batch/sequence, same spec
    shard: Optional[str] = None  # "i/N": run the i-th of N stable partitions (1-based)
    key: Optional[str] = None  # mode=explain: key or key prefix to explain
    against: Optional[str] = None  # mode=explain: a second key to diff against
    runs: Optional[str] = None  # mode=merge: comma-separated run folders (CI shards) to merge into one report
