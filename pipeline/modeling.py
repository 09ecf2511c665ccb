"""CompiledModelFor<Task>: drop-ins for transformers' AutoModelFor<Task> over compiled artifacts.

    model = CompiledModelForSequenceClassification.from_pretrained("path/or/repo")          # load
    model = CompiledModelForSequenceClassification.from_pretrained(
        "distilbert/...", export=True, auto_cast_type="bf16", batch_size=1, sequence_length=128)  # compile on demand

A loaded artifact needs no compile arguments: backend, shapes and cast settings come from the
config.json written at compile time. `export=True` builds the same spec and key as the
pipeline, looks in the local cache (then the shared Hub cache when one is configured), and
compiles + verifies through the same worker when nothing is found.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from pipeline import generation, reuse
from pipeline.artifact_folder import resolve_folder
from pipeline.backends import get_backend
from pipeline.backends.base import BackendUnavailable
from pipeline.cache import Cache, artifact_files
from pipeline.config import VerifyConfig
from pipeline.history import history
from pipeline.hub import push_folder
from pipeline.keys import canonical_cast_type
from pipeline.model_entries import check_model_id, entry_from, validation_job
from pipeline.obtain import ObtainError, obtain
from pipeline.plan import make_job
from pipeline.tasks import TASKS, get_mandatory_axes_for_task, output_class  # noqa: F401  (re-exported helper)
from pipeline.validate import (
    ArtifactError,
    ArtifactNotFoundError,
    check_artifact_file_names,
    check_artifact_manifest,
    check_artifact_meta,
    read_artifact_json,
)

DEFAULT_CACHE = "artifacts/cache"
logger = logging.getLogger(__name__)


class UnverifiedArtifactError(ArtifactError, RuntimeError):
    """The artifact's manifest does not show a passed verification."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CACHE_DIR", DEFAULT_CACHE))


class CompiledModel:
    """A compiled artifact with the forward contract of the eager model."""

    task: ClassVar[str] = "feature-extraction"
    default_backend: ClassVar[str] = "inductor"
    main_input_name = "input_ids"

    def __init__(self, folder: Path, config: dict, runner: Any, manifest: dict | None):
        from transformers import AutoConfig

        self.folder = Path(folder)
        self.reused_for: dict | None = None  # from_pretrained(export=True, reuse_larger_shapes=True): the entry taken
        self.compile_config = config
        self.meta = config["pipeline"]
        self.manifest = manifest
        self.runner = runner
        self.config = AutoConfig.from_pretrained(self.folder)
        self.shapes = dict(self.meta["shapes"])
        self.input_names = list(self.meta["input_names"])
        compiled = config.get("compiled") or {}
        self.dynamic_batch_size = bool(
            compiled.get("dynamic_batch_size") or self.meta["spec"].get("dynamic_batch_size")
        )
        self.allow_other_batch = self.dynamic_batch_size
        import torch

        self.device = torch.device("cpu")
        self.dtype = torch.float32  # outputs are returned in fp32, like the eager reference

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str,
        *,
        export: bool = False,
        revision: str | None = None,
        allow_unverified: bool = False,
        cache_dir: str | Path | None = None,
        token: str | None = None,
        backend: str | None = None,
        auto_cast: str = "matmul",
        auto_cast_type: str = "fp32",
        num_cores: int | None = None,
        dynamic_batch_size: bool = False,
        backend_options: dict | None = None,
        reuse_larger_shapes: bool = False,
        **input_shapes: int,
    ) -> "CompiledModel":
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        reused_for = None
        if export:
            folder, reused_for = cls._export(
                model_id_or_path,
                revision,
                cache_dir,
                backend or cls.default_backend,
                auto_cast,
                auto_cast_type,
                num_cores,
                dynamic_batch_size,
                backend_options or {},
                input_shapes,
                reuse_larger_shapes,
            )
        else:
            if input_shapes:
                raise TypeError(
                    f"input shapes {sorted(input_shapes)} are only accepted with export=True; "
                    "a compiled artifact carries its shapes in config.json"
                )
            folder, checked = resolve_folder(str(model_id_or_path), revision, cache_dir, token)
        model = cls._load(folder, allow_unverified, checked=export or checked)
        model.allow_other_batch = model.dynamic_batch_size or dynamic_batch_size
        model.reused_for = reused_for
        return model

    @classmethod
    def _load(cls, folder: Path, allow_unverified: bool, checked: bool = False) -> "CompiledModel":
        """Load an artifact folder; every problem is an ArtifactError (or ArtifactNotFoundError)
        naming the file. `checked`: the cache lookup has just checked its files' hashes."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ArtifactNotFoundError(f"{folder}: no config.json; is this a compiled artifact?")
        manifest = check_artifact_manifest(folder, integrity=not checked)  # every file's sha256 first
        config = read_artifact_json(config_path)
        meta = check_artifact_meta(config, config_path)
        if meta["task"] != cls.task:
            raise ArtifactError(
                f"{folder} was compiled for task {meta['task']!r}; load it with {CLASS_FOR_TASK[meta['task']].__name__}"
            )
        status = ((manifest or {}).get("verification") or {}).get("status")
        if status != "passed" and not allow_unverified:
            raise UnverifiedArtifactError(
                f"{folder}: verification status is {status or 'missing (no manifest.json)'}; "
                "pass allow_unverified=True to load it anyway"
            )
        check_artifact_file_names(config, config_path)
        section = config.get("compiled") or config.get("neuron") or {}
        name = section.get("file") or section.get("model_file") if isinstance(section, dict) else None
        try:
            backend = get_backend(meta["backend"], meta["backend_options"])
            runner = backend.load(folder, config)
        except BackendUnavailable:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            where = folder / name if name else folder
            raise ArtifactError(f"{where} cannot be loaded: {type(e).__name__}: {first}") from e
        try:
            return cls(folder, config, runner, manifest)
        except Exception as e:  # transformers cannot read the model config part
            first = (str(e).strip().splitlines() or [""])[0]
            raise ArtifactError(f"{config_path} cannot be read as a model config: {type(e).__name__}: {first}") from e

    @classmethod
    def _export(
        cls,
        model_id,
        revision,
        cache_dir,
        backend_name,
        auto_cast,
        auto_cast_type,
        num_cores,
        dynamic_batch_size,
        backend_options,
        input_shapes,
        reuse_larger_shapes: bool = False,
    ) -> tuple[Path, dict | None]:
        axes = get_mandatory_axes_for_task(cls.task)
        missing = [
            a for a in axes if a not in input_shapes and not (TASKS[cls.task].decoder and a == "sequence_length")
        ]
        if missing:
            raise TypeError(
                f"export=True for {cls.task} needs the input shapes {', '.join(missing)} (mandatory axes: "
                f"{', '.join(axes)})"
            )
        unknown = sorted(set(input_shapes) - set(axes))
        if unknown:
            raise TypeError(f"unknown input shape arguments {unknown}; {cls.task} takes {', '.join(axes)}")
        if canonical_cast_type(auto_cast_type) is None:
            raise ValueError(f"auto_cast_type {auto_cast_type!r} is not one of fp32, bf16, fp16, int8")
        why = check_model_id(str(model_id))
        if why:
            raise ValueError(f"model id: {why}")
        errors: list[str] = []
        info = entry_from(
            {"id": str(model_id), "task": cls.task, **({"revision": revision} if revision else {})}, "model", errors
        )
        if info is None:
            raise ValueError("; ".join(errors))
        options = dict(backend_options)
        if num_cores is not None:
            options["num_cores"] = num_cores
        backend = get_backend(backend_name, options)
        verify_cfg = dataclasses.asdict(VerifyConfig())
        input_shapes = dict(input_shapes)
        if TASKS[cls.task].decoder and input_shapes.get("sequence_length") is None:
            if info.max_positions is None:
                raise TypeError(
                    f"{model_id}: config.json names no max_position_embeddings; pass sequence_length "
                    "(prompt + generated tokens) for export=True"
                )
            input_shapes["sequence_length"] = info.max_positions  # the README's promise: the model's maximum
        job = make_job(info, input_shapes, auto_cast_type, auto_cast, dynamic_batch_size, backend, verify_cfg, 7200)
        problems = backend.validate(
            validation_job(info, job["shapes"], job["cast_type"], auto_cast, dynamic_batch_size)
        )
        if problems:
            raise ValueError("; ".join(problems))
        cache = Cache(cache_dir)
        if reuse_larger_shapes and cache.status(job["key"]) != "hit":  # a verified larger entry instead
            entry = reuse.covering(job, history(cache), cache)
            if entry is not None:
                logger.info(reuse.take(job, entry))
        try:  # local cache -> shared cache (PIPELINE_CACHE_REPO) -> compile + verify, re-gated like a run
            folder, notes = obtain(job, cache)
        except ObtainError as e:
            raise RuntimeError(f"{model_id} ({cls.task}, {job['cast_type']}, {job['shapes']}): {e}") from None
        for note in notes:  # e.g. "refit: the program of <key> + these weights" (weights: refit, graph cached)
            logger.info("%s: %s", model_id, note)
        return folder, job.get("reused_for")

    # ------------------------------------------------------------------ running
    def _pad(self, name: str, t, batch: int, seq: int):
        """Pad a [b, s] input to the compiled [batch, seq]; pad rows repeat row 0 (a fully
        masked row is not a realistic input), pad columns get pad ids and mask 0."""
        import torch

        b, s = t.shape
        if s < seq:
            fill = 0 if name != "input_ids" else int(self.config.pad_token_id or 0)
            t = torch.cat([t, torch.full((b, seq - s), fill, dtype=t.dtype)], dim=1)
        if b < batch:
            t = torch.cat([t, t[:1].expand(batch - b, -1)], dim=0)
        return t

    def _run_chunk(self, inputs: dict) -> dict:

        b, s = inputs["input_ids"].shape
        batch, seq = self.shapes["batch_size"], self.shapes["sequence_length"]
        target_batch = b if (self.dynamic_batch_size and b <= max(batch, 2)) else batch
        if b == target_batch and s == seq:  # the compiled shape: nothing to pad or cut (the common case)
            return {name: v.float() for name, v in self.runner(**inputs).items()}
        padded = {n: self._pad(n, inputs[n], target_batch, seq) for n in self.input_names}
        out = self.runner(**padded)
        cut = {}
        for name, v in out.items():
            v = v[:b].float()
            if name in TASKS[self.task].token_outputs:  # [batch, seq, ...]: back to the input length
                v = v[:, :s]
            cut[name] = v
        return cut

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict: bool = True, **unused):
        import torch

        if input_ids is None:
            raise ValueError("input_ids is required")
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        b, s = input_ids.shape
        seq, batch = self.shapes["sequence_length"], self.shapes["batch_size"]
        if s > seq:
            raise ValueError(
                f"sequence length {s} exceeds the compiled sequence_length {seq}; "
                f"truncate the inputs (tokenizer(..., truncation=True, max_length={seq})) or compile for a longer one"
            )
        limit = max(batch, 2) if self.dynamic_batch_size else batch
        if b > batch and not self.allow_other_batch:
            raise ValueError(
                f"batch size {b} exceeds the compiled batch_size {batch}; load with dynamic_batch_size=True "
                "(runs in compiled-size chunks) or compile for a larger batch"
            )
        inputs = {
            "input_ids": input_ids.to(torch.int64),
            "attention_mask": torch.ones_like(input_ids)
            if attention_mask is None
            else torch.as_tensor(attention_mask).to(torch.int64),
        }
        if "token_type_ids" in self.input_names:
            inputs["token_type_ids"] = (
                torch.zeros_like(input_ids)
                if token_type_ids is None
                else torch.as_tensor(token_type_ids).to(torch.int64)
            )
        if b <= limit:
            merged = self._run_chunk(inputs)
        else:
            chunks = [self._run_chunk({k: v[i : i + limit] for k, v in inputs.items()}) for i in range(0, b, limit)]
            merged = {k: torch.cat([c[k] for c in chunks], dim=0) for k in chunks[0]}
        output = output_class(self.task)(**merged)
        return output if return_dict else output.to_tuple()

    __call__ = forward

    # ------------------------------------------------------------------ transformers compatibility
    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def can_generate(self) -> bool:
        return False

    @property
    def name_or_path(self) -> str:
        return str(self.folder)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Copy the artifact (compiled files, config.json, tokenizer, manifest) to a folder
        that reloads anywhere with from_pretrained(save_directory)."""
        dest = Path(save_directory)
        dest.mkdir(parents=True, exist_ok=True)
        for rel, src in artifact_files(self.folder, manifest=True).items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
        return dest

    def push_to_hub(
        self, repo_id: str, revision: str | None = None, token: str | None = None, commit_message: str | None = None
    ):
        """Upload the artifact as one atomic commit (through the publisher's code path)."""
        return push_folder(
            self.folder,
            repo_id,
            revision=revision,
            token=token,
            commit_message=commit_message or f"Upload compiled {self.task} model",
        )


class CompiledModelForFeatureExtraction(CompiledModel):
    task = "feature-extraction"


class CompiledModelForSequenceClassification(CompiledModel):
    task = "text-classification"


class CompiledModelForTokenClassification(CompiledModel):
    task = "token-classification"


class CompiledModelForQuestionAnswering(CompiledModel):
    task = "question-answering"


class CompiledModelForMaskedLM(CompiledModel):
    task = "fill-mask"


class CompiledModelForCausalLM(CompiledModel):
    """A compiled decoder over a static KV cache: batch_size and sequence_length (prompt +
    generated tokens) are fixed at compile time; generate() enforces both before any work."""

    task = "text-generation"

    def forward(self, input_ids=None, attention_mask=None, return_dict: bool = True, **unused):
        """Logits for a prompt of the compiled batch size (a prefill from position 0)."""
        import torch
        import transformers.modeling_outputs as mo

        ids = torch.as_tensor(input_ids, dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
            raise generation.PaddingNotSupported(
                "padded prompts are not supported by the static-cache graph: pass equal-length prompts"
            )
        if ids.shape[0] != self.runner.batch_size or not 1 <= ids.shape[1] <= self.runner.sequence_length:
            raise generation.StaticShapeError(
                f"input_ids of shape {tuple(ids.shape)} do not fit the compiled batch_size "
                f"{self.runner.batch_size} and sequence_length {self.runner.sequence_length}"
            )
        with torch.no_grad():
            logits = self.runner.forward(ids.contiguous(), torch.arange(ids.shape[1])).float()
        out = mo.CausalLMOutput(logits=logits)
        return out if return_dict else out.to_tuple()

    __call__ = forward

    def generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs):
        """Like transformers' generate(): greedy or sampling; defaults from the artifact's
        generation_config.json, call arguments take precedence."""
        return generation.generate(
            self.runner, input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs
        )

    def can_generate(self) -> bool:
        return True

    @property
    def generation_config(self):
        """The artifact's generation_config.json (what transformers' pipeline() reads for its defaults)."""
        from transformers import GenerationConfig

        return getattr(self.runner, "generation_config", None) or GenerationConfig.from_model_config(self.config)


class CompiledModelForSentenceTransformers(CompiledModel):
    """transformer + pooling (+ normalize) of a sentence-transformers model in one compiled graph;
    forward() returns `sentence_embedding` ([batch, dim]) and `token_embeddings`. Inside
    SentenceTransformer itself: pipeline.st_module.CompiledSentenceTransformer."""

    task = "sentence-embeddings"

    @property
    def st_config(self) -> dict:
        """{pooling, normalize, max_seq_length, dimension} read from the model at compile time."""
        return dict(getattr(self.config, "sentence_transformers", None) or {})


CLASS_FOR_TASK = {
    "feature-extraction": CompiledModelForFeatureExtraction,
    "text-classification": CompiledModelForSequenceClassification,
    "token-classification": CompiledModelForTokenClassification,
    "question-answering": CompiledModelForQuestionAnswering,
    "fill-mask": CompiledModelForMaskedLM,
    "text-generation": CompiledModelForCausalLM,
    "sentence-embeddings": CompiledModelForSentenceTransformers,
}


def _neuron_default(cls: type) -> type:
    """The seed's NeuronModelFor<Task> names: the same classes with backend="neuron" by default."""
    return type(
        cls.__name__.replace("CompiledModel", "NeuronModel"),
        (cls,),
        {"default_backend": "neuron", "__doc__": cls.__doc__},
    )


NeuronModelForFeatureExtraction = _neuron_default(CompiledModelForFeatureExtraction)
NeuronModelForSequenceClassification = _neuron_default(CompiledModelForSequenceClassification)
NeuronModelForTokenClassification = _neuron_default(CompiledModelForTokenClassification)
NeuronModelForQuestionAnswering = _neuron_default(CompiledModelForQuestionAnswering)
NeuronModelForMaskedLM = _neuron_default(CompiledModelForMaskedLM)
NeuronModelForCausalLM = _neuron_default(CompiledModelForCausalLM)
NeuronModelForSentenceTransformers = _neuron_default(CompiledModelForSentenceTransformers)
