"""Tiny random models built from transformers configs, for the smoke sweep, demo and tests.

    python -m pipeline.tiny artifacts/models [name ...]

Deterministic (seeded), saved as safetensors with a small WordPiece tokenizer, offline.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

COMMON = dict(
    vocab_size=1000,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
)

# name -> (config class, auto class, config kwargs)
TINY = {
    "tiny-bert": ("BertConfig", "AutoModel", dict(COMMON)),
    "tiny-distilbert": (
        "DistilBertConfig",
        "AutoModelForSequenceClassification",
        dict(vocab_size=1000, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, num_labels=3),
    ),
    "tiny-roberta": (
        "RobertaConfig",
        "AutoModelForTokenClassification",
        dict(COMMON, max_position_embeddings=130, pad_token_id=1, num_labels=5),
    ),
    "tiny-bert-qa": ("BertConfig", "AutoModelForQuestionAnswering", dict(COMMON)),
    "tiny-bert-mlm": ("BertConfig", "AutoModelForMaskedLM", dict(COMMON)),
    "tiny-llama": (
        "LlamaConfig",
        "AutoModelForCausalLM",
        dict(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
    "tiny-gpt2": (
        "GPT2Config",
        "AutoModelForCausalLM",
        dict(
            vocab_size=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
}


def _vocab(size: int) -> list[str]:
    words = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + list(string.ascii_lowercase)
        + list(string.digits)
        + list(".,;:!?'\"-()")
    )
    words += [f"##{c}" for c in string.ascii_lowercase]
    common = (
        "the quick brown fox jumps over lazy dog compiled models should give same answers as original ones paris is "
        "capital of france and berlin germany i really enjoyed this film acting was superb"
    ).split()
    words += [w for w in dict.fromkeys(common) if w not in words]
    words += [f"tok{i}" for i in range(size - len(words))]
    return words[:size]


def build(name: str, out: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    config_cls, auto_cls, kwargs = TINY[name]
    folder = out / name
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, auto_cls).from_config(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    if config_cls != "GPT2Config" and config_cls != "LlamaConfig":
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(_vocab(config.vocab_size)) + "\n")
        transformers.BertTokenizerFast(vocab_file=str(vocab), model_max_length=128).save_pretrained(folder)
    return folder


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out, names = Path(argv[0]), argv[1:] or list(TINY)
    for name in names:
        if name not in TINY:
            print(f"unknown tiny model {name!r}; known: {', '.join(TINY)}", file=sys.stderr)
            return 2
        if (out / name / "config.json").is_file():
            continue
        print(f"built {build(name, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
