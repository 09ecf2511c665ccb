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
from pipeline.tasks import canonical_task

# our task -> transformers' pipeline task and the pipeline class it would pick
PIPELINE_TASKS = {
    "feature-extraction": ("feature-extraction", "FeatureExtractionPipeline"),
    "text-classification": ("text-classification", "TextClassificationPipeline"),
    "token-classification": ("token-classification", "TokenClassificationPipeline"),
    "question-answering": ("question-answering", "QuestionAnsweringPipeline"),
    "fill-mask": ("fill-mask", "FillMaskPipeline"),
    "text-generation": ("text-generation", "TextGenerationPipeline"),
}


@functools.cache
def pipeline_class(task: str) -> type:
    """The task's transformers pipeline class, accepting the compiled runtime classes."""
    import transformers

    base = getattr(transformers, PIPELINE_TASKS[task][1])

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
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model.folder)
    return transformers.pipeline(
        PIPELINE_TASKS[canonical][0],
        model=model,
        tokenizer=tokenizer,
        pipeline_class=pipeline_class(canonical),
        **kwargs,
    )
