"""The `sentence-embeddings` task: a sentence-transformers model compiled as ONE graph.

A sentence-transformers checkpoint is a transformer plus modules listed in `modules.json`
(Pooling, configured by `1_Pooling/config.json`, and often Normalize). The eager model built
here runs the transformer, the pooling and the normalisation in one forward, so the compiled
artifact returns the finished sentence embedding: nothing of sentence-transformers is needed at
run time, and the verify gate checks what users consume (the pooled vector), not just the
hidden states. The pooling settings travel in the artifact's config.json (`sentence_transformers`).

Light at import: torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens")
CONFIG_KEY = "sentence_transformers"  # where the pooling settings live in the artifact's config.json


class SentenceTransformersConfigError(ValueError):
    """The model's sentence-transformers files describe something this task cannot compile."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SentenceTransformersConfigError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None


def _pooling_mode(cfg: dict, path: Path) -> str:
    """The one pooling mode of a 1_Pooling/config.json (old boolean keys or the newer `pooling_mode`)."""
    if cfg.get("pooling_mode") is not None:  # sentence-transformers >= 6 writes the mode by name
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        flags = {
            "cls": "pooling_mode_cls_token",
            "mean": "pooling_mode_mean_tokens",
            "max": "pooling_mode_max_tokens",
            "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens",
            "lasttoken": "pooling_mode_lasttoken",
        }
        modes = [mode for mode, key in flags.items() if cfg.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise SentenceTransformersConfigError(
            f"{path}: pooling {modes or 'none'} is not supported; one of {', '.join(POOLING_MODES)} is"
        )
    return modes[0]


def read_config(folder: str | Path) -> dict:
    """{pooling, normalize, max_seq_length, dimension} from a sentence-transformers model folder.

    Only Transformer -> Pooling (-> Normalize) pipelines are compiled: a Dense or other module
    would be silently missing from the artifact, so it is refused by name."""
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        raise SentenceTransformersConfigError(
            f"{folder}: no modules.json; task sentence-embeddings needs a sentence-transformers model "
            "(use feature-extraction for a plain transformer)"
        )
    modules = _read_json(modules_path)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise SentenceTransformersConfigError(
            f"{modules_path}: modules {kinds} are not supported; Transformer, Pooling and optionally Normalize are"
        )
    pooling_path = folder / (modules[1].get("path") or "1_Pooling") / "config.json"
    pooling = _read_json(pooling_path)
    st_path = folder / "sentence_bert_config.json"
    max_len = _read_json(st_path).get("max_seq_length") if st_path.is_file() else None
    return {
        "pooling": _pooling_mode(pooling, pooling_path),
        "normalize": "Normalize" in kinds,
        "max_seq_length": int(max_len) if max_len else None,
        "dimension": pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension"),
    }


def pool(token_embeddings, attention_mask, mode: str, normalize: bool):
    """sentence-transformers' Pooling (+ Normalize), in plain torch ops that export cleanly."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode == "cls":
        out = token_embeddings[:, 0]
    elif mode == "max":
        out = token_embeddings.masked_fill(mask == 0, -1e9).max(dim=1).values
    else:
        summed = (token_embeddings * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        out = summed / (counts if mode == "mean" else counts.sqrt())
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out


def load_eager_model(path: str, revision: str | None = None):
    """The transformer + pooling (+ normalize) as one torch module in fp32 eval mode. Its
    `config` is the transformer's, with the pooling settings added (they are written to the
    artifact's config.json with it)."""
    import torch
    import transformers

    folder = Path(path)
    if not folder.is_dir():  # a Hub id: the worker passes local paths, runtime export may not
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path), revision=revision))
    settings = read_config(folder)
    transformer = transformers.AutoModel.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False, dtype="float32"
    )
    config = transformer.config
    setattr(config, CONFIG_KEY, settings)

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer
            self.config = config

        def forward(self, input_ids, attention_mask, token_type_ids=None, return_dict: bool = True):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            sentence = pool(hidden, attention_mask, settings["pooling"], settings["normalize"])
            return {"sentence_embedding": sentence, "token_embeddings": hidden}

    return SentenceEmbedding().eval()


@functools.cache
def output_class():
    """transformers.ModelOutput for the runtime class (made on first use: transformers is heavy)."""
    from dataclasses import dataclass

    import torch
    from transformers.utils import ModelOutput

    @dataclass
    class SentenceEmbeddingOutput(ModelOutput):
        sentence_embedding: torch.FloatTensor | None = None
        token_embeddings: torch.FloatTensor | None = None

    return SentenceEmbeddingOutput
