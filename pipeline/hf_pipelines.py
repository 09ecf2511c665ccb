"""transformers' pipeline() over the compiled runtime classes, for every task.

    from pipeline.hf_pipelines import pipeline
    pipe = pipeline("text-generation", model=CompiledModelForCausalLM.from_pretrained(folder))
    pipe("Once upon a time", max_new_tokens=20)

transformers' own pipeline() runs our classes too, but the text-classification,
token-classification and text-generation pipelines log "The model '...' is not supported"
because they check the class name against transformers' model lists. This pipeline() passes a
subclass of the task's pipeline whose check accepts the compiled classes (and still checks any
other model), and takes the tokenizer from the artifact folder when none is given (the worker
saves it there). Generation defaults come from the artifact's generation_config.json
(`CompiledModelForCausalLM.generation_config`), as transformers reads them from a model.
"""

from __future__ import annotations

import functools
from typing import Any

from pipeline.modeling import CompiledModel
from pipeline.tasks import TASKS, canonical_task

# transformers has no sentence-embeddings pipeline: that task runs inside SentenceTransformer (st_module)
PIPELINE_TASKS = tuple(name for name in TASKS if name != "sentence-embeddings")


class PipelineUnavailable(ValueError):
    """The installed transformers has no pipeline for this task (transformers 5 removed question-answering)."""


@functools.cache
def pipeline_class(task: str) -> type:
    """The task's transformers pipeline class, accepting the compiled runtime classes."""
    import importlib

    import transformers
    import transformers.pipelines as tp

    removed = getattr(tp, "REMOVED_TASKS", {})
    if task in removed or task not in tp.PIPELINE_REGISTRY.supported_tasks:
        raise PipelineUnavailable(
            f"transformers {transformers.__version__} has no {task!r} pipeline"
            + (f" ({removed[task]})" if task in removed else "")
            + f"; call the compiled model directly, as {task} models are called"
        )
    base = tp.PIPELINE_REGISTRY.supported_tasks[task]["impl"]
    if isinstance(base, str):  # transformers 5 names it by dotted path
        module, _, name = base.rpartition(".")
        base = getattr(importlib.import_module(module), name)

    def check_model_type(self, supported_models):
        if isinstance(self.model, CompiledModel):
            return  # a compiled artifact of this task's auto class (the runtime class checked the task on load)
        return base.check_model_type(self, supported_models)

    return type(f"Compiled{base.__name__}", (base,), {"check_model_type": check_model_type})


def pipeline(task: str, model: CompiledModel, tokenizer: Any = None, **kwargs: Any):
    """transformers.pipeline(task, model=compiled, ...) without the class-name complaint; the
    tokenizer defaults to the one saved in the artifact folder."""
    import transformers

    if not isinstance(model, CompiledModel):
        raise TypeError(f"model must be a loaded CompiledModelFor<Task>, got {type(model).__name__}")
    canonical = canonical_task(task)
    if canonical not in PIPELINE_TASKS:
        raise ValueError(f"task {task!r}: pipeline() covers {', '.join(PIPELINE_TASKS)}")
    if canonical != model.task:
        raise ValueError(f"task {task!r} does not match the artifact's task {model.task!r}")
    cls = pipeline_class(canonical)  # before loading anything: the task may have no pipeline
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model.folder)
    return transformers.pipeline(
        canonical,
        model=model,
        tokenizer=tokenizer,
        pipeline_class=cls,
        **kwargs,
    )
