"""A compiled sentence-embedding artifact as a sentence-transformers module.

    from sentence_transformers import SentenceTransformer
    from pipeline.st_module import CompiledSentenceTransformer

    model = SentenceTransformer(modules=[CompiledSentenceTransformer("path/to/artifact")], device="cpu")
    embeddings = model.encode(texts, batch_size=32)

The artifact already holds the transformer, the pooling and the normalisation, so it is the
only module: it tokenizes (truncating to the compiled sequence_length, or the model's own
max_seq_length when shorter), pads each batch to the compiled shape, runs in chunks of the
compiled batch size, and returns `sentence_embedding` and `token_embeddings` the way
sentence-transformers' Transformer + Pooling (+ Normalize) would. Needs the
`sentence-transformers` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.modeling import CompiledModelForSentenceTransformers


def _module_base() -> type:
    try:
        from sentence_transformers.base.modules import InputModule
    except ImportError as e:
        raise ImportError(
            "pipeline.st_module needs sentence-transformers>=6.2: "
            "pip install 'pipeline-compiler[sentence-transformers]'"
        ) from e
    return InputModule


class _Loader:
    """Builds the module class on first use: sentence-transformers (and torch) load only when needed."""

    cls: type | None = None

    @classmethod
    def get(cls) -> type:
        if cls.cls is None:
            cls.cls = _make_class(_module_base())
        return cls.cls


def CompiledSentenceTransformer(artifact: str | Path, **from_pretrained: Any):  # noqa: N802 (a class to its users)
    """The sentence-transformers module for a compiled `sentence-embeddings` artifact (a folder,
    a cache key prefix or a Hub repo; keyword arguments go to from_pretrained)."""
    model = CompiledModelForSentenceTransformers.from_pretrained(str(artifact), **from_pretrained)
    return _Loader.get()(model)


def _make_class(base: type) -> type:
    import torch
    from transformers import AutoTokenizer

    class CompiledSentenceTransformerModule(base):
        save_in_root = True
        config_keys = ["max_seq_length"]

        def __init__(self, model: CompiledModelForSentenceTransformers):
            super().__init__()
            self.model = model
            model.allow_other_batch = True  # SentenceTransformer's batches run in compiled-size chunks
            self.tokenizer = AutoTokenizer.from_pretrained(model.folder)
            compiled = int(model.shapes["sequence_length"])
            own = model.st_config.get("max_seq_length")
            self._compiled_seq = compiled
            self.max_seq_length = min(compiled, int(own)) if own else compiled

        @property
        def max_seq_length(self) -> int:
            return self._max_seq_length

        @max_seq_length.setter
        def max_seq_length(self, value: int) -> None:
            if int(value) > self._compiled_seq:
                raise ValueError(
                    f"max_seq_length {value} exceeds the compiled sequence_length {self._compiled_seq}; "
                    "compile for a longer one"
                )
            self._max_seq_length = int(value)

        def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict:
            texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in inputs]
            if prompt:
                texts = [prompt + t for t in texts]
            enc = self.tokenizer(
                texts, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt"
            )
            return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

        def forward(self, features: dict, **kwargs) -> dict:
            out = self.model(
                **{k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
            )
            features.update({"sentence_embedding": out.sentence_embedding, "token_embeddings": out.token_embeddings})
            return features

        def get_embedding_dimension(self) -> int:
            return int(self.model.st_config.get("dimension") or self.model.config.hidden_size)

        def save(self, output_path: str, *args, **kwargs) -> None:
            self.model.save_pretrained(output_path)

        @classmethod
        def load(cls, model_name_or_path: str, **kwargs):
            return cls(CompiledModelForSentenceTransformers.from_pretrained(model_name_or_path))

        # sentence-transformers reads the device from the first parameter; the artifact has none
        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

    return CompiledSentenceTransformerModule
