"""Task registry: mandatory axes, auto classes, outputs to check, example inputs.

Light at import: torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str  # transformers auto class that loads the eager model
    outputs: tuple[str, ...]  # ModelOutput fields that are compiled and compared
    argmax: bool  # classification-like head: argmax agreement is part of the gate
    axes: tuple[str, ...] = ("batch_size", "sequence_length")  # mandatory input shape axes
    output_class: str = "BaseModelOutput"  # transformers.modeling_outputs class for runtime outputs
    decoder: bool = False
    # outputs with a sequence axis ([batch, seq, ...]): the padding mask applies to them in
    # verification, and the runtime cuts them back to the input length; the others are per row
    token_outputs: tuple[str, ...] = ()


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "feature-extraction",
            "AutoModel",
            ("last_hidden_state",),
            False,
            output_class="BaseModelOutput",
            token_outputs=("last_hidden_state",),
        ),
        Task(
            "text-classification",
            "AutoModelForSequenceClassification",
            ("logits",),
            True,
            output_class="SequenceClassifierOutput",
        ),
        Task(
            "token-classification",
            "AutoModelForTokenClassification",
            ("logits",),
            True,
            output_class="TokenClassifierOutput",
            token_outputs=("logits",),
        ),
        Task(
            "question-answering",
            "AutoModelForQuestionAnswering",
            ("start_logits", "end_logits"),
            True,
            output_class="QuestionAnsweringModelOutput",
            token_outputs=("start_logits", "end_logits"),
        ),
        Task(
            "fill-mask",
            "AutoModelForMaskedLM",
            ("logits",),
            True,
            output_class="MaskedLMOutput",
            token_outputs=("logits",),
        ),
        Task("text-generation", "AutoModelForCausalLM", ("logits",), True, output_class="CausalLMOutput", decoder=True),
        # transformer + pooling (+ normalize) of a sentence-transformers model, one graph
        Task(
            "sentence-embeddings",
            "AutoModel",
            ("sentence_embedding", "token_embeddings"),
            False,
            output_class="SentenceEmbeddingOutput",
            token_outputs=("token_embeddings",),
        ),
    )
}

TASK_ALIASES = {
    "sequence-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "causal-lm": "text-generation",
    "masked-lm": "fill-mask",
    "default": "feature-extraction",
    "sentence-similarity": "sentence-embeddings",
    "sentence-transformers": "sentence-embeddings",
}


def canonical_task(name: str) -> str | None:
    name = str(name).lower()
    name = TASK_ALIASES.get(name, name)
    return name if name in TASKS else None


AUTO = "auto"  # `task: auto` in a model entry: inferred from config.json's architectures

# Architecture class name suffix -> task, longest suffix first (the transformers naming rule:
# BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, BertModel).
ARCHITECTURE_SUFFIXES: tuple[tuple[str, str | None], ...] = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),  # GPT2LMHeadModel, BertLMHeadModel (causal), OpenAIGPTLMHeadModel
    ("DoubleHeadsModel", None),  # GPT2DoubleHeadsModel: LM + multiple choice, not one task here
    ("Model", "feature-extraction"),  # the bare encoder / decoder: BertModel, LlamaModel
)


class TaskInferenceError(ValueError):
    """`task: auto` cannot decide: the message names the architectures and the candidates."""

    def __init__(self, message: str, candidates: tuple[str, ...] = ()):
        super().__init__(message)
        self.candidates = candidates


def task_of_architecture(name: str) -> str | None:
    """The task a transformers architecture class serves, by its name; None when unknown
    (ForPreTraining, ForConditionalGeneration, ... : heads this pipeline does not compile)."""
    for suffix, task in ARCHITECTURE_SUFFIXES:
        if name.endswith(suffix):  # a "...For<Head>" class is its head's task, never "...Model"'s
            return task if "For" not in name or suffix.startswith("For") else None
    return None


def infer_task(config: dict | None) -> str:
    """The one task config.json's `architectures` points at; TaskInferenceError naming the
    architectures and the candidate tasks when there is none or more than one."""
    archs = (config or {}).get("architectures") if isinstance(config, dict) else None
    if config is None:
        raise TaskInferenceError("config.json is not readable, so the task cannot be inferred")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise TaskInferenceError("config.json has no `architectures` list to infer the task from")
    found = {a: task_of_architecture(a) for a in archs}
    candidates = tuple(sorted({t for t in found.values() if t is not None}))
    shown = ", ".join(f"{a} -> {t or 'no supported task'}" for a, t in found.items())
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise TaskInferenceError(f"architectures {shown}; candidates: none (known: {', '.join(TASKS)})")
    raise TaskInferenceError(f"ambiguous: architectures {shown}; candidates: {', '.join(candidates)}", candidates)


def get_mandatory_axes_for_task(task: str) -> tuple[str, ...]:
    """The input shape axes a compiled model of this task must be given (optimum's analogue)."""
    canonical = canonical_task(task)
    if canonical is None:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[canonical].axes


def input_names(model_config: dict) -> tuple[str, ...]:
    """Encoder inputs the compiled graph takes; token_type_ids only where the model has them."""
    names = ["input_ids", "attention_mask"]
    if model_config.get("type_vocab_size", 0) and model_config.get("model_type") not in (
        "roberta",
        "xlm-roberta",
        "camembert",
    ):
        names.append("token_type_ids")
    return tuple(names)


SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Compiled models should give the same answers as the original ones.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "I really enjoyed this film; the acting was superb!",
)


def example_inputs(
    model_config: dict, batch_size: int, sequence_length: int, seed: int = 0, tokenizer: Any = None
) -> dict:
    """Deterministic encoder inputs: tokenized sample text when a tokenizer is given, else
    seeded token ids inside the vocab; the attention mask has realistic padding (row i keeps
    a different number of tokens), but row 0 is always full length."""
    import torch

    g = torch.Generator().manual_seed(seed)
    names = input_names(model_config)
    if tokenizer is not None:
        texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] * (1 + i % 3) for i in range(batch_size)]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=sequence_length, return_tensors="pt")
        enc["attention_mask"][0, :] = 1  # one row at full length so every position is exercised
        out = {
            n: enc[n].to(torch.int64) if n in enc else torch.zeros(batch_size, sequence_length, dtype=torch.int64)
            for n in names
        }
        return out
    vocab = int(model_config.get("vocab_size", 1000))
    low = min(5, vocab - 1)  # skip the usual special ids
    ids = torch.randint(low, vocab, (batch_size, sequence_length), generator=g, dtype=torch.int64)
    mask = torch.ones(batch_size, sequence_length, dtype=torch.int64)
    for i in range(1, batch_size):
        keep = max(1, sequence_length - (i * sequence_length) // (batch_size + 1))
        mask[i, keep:] = 0
    pad = int(model_config.get("pad_token_id") or 0)
    ids = ids.masked_fill(mask == 0, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        out["token_type_ids"] = torch.zeros(batch_size, sequence_length, dtype=torch.int64)
    return out


def output_class(task: str) -> type:
    """The ModelOutput class the runtime returns for a task."""
    if task == "sentence-embeddings":
        from pipeline import sentence_embeddings  # lazy: transformers' ModelOutput is made on first use

        return sentence_embeddings.output_class()
    import transformers.modeling_outputs as mo

    return getattr(mo, TASKS[task].output_class)


def load_eager_model(task: str, path: str, revision: str | None = None):
    """The original model on CPU in fp32, eval mode, safetensors only, no remote code."""
    import transformers

    if task == "sentence-embeddings":
        from pipeline import sentence_embeddings  # lazy: keeps the registry free of torch at import

        return sentence_embeddings.load_eager_model(path, revision)

    auto = getattr(transformers, TASKS[task].auto_class)
    model = auto.from_pretrained(
        path, revision=revision, use_safetensors=True, trust_remote_code=False, dtype="float32"
    )
    return model.eval()
