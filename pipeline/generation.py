"""generate() over a compiled decoder runtime: what `CompiledModelForCausalLM.generate` and
verification call, for every backend.

A backend's loaded decoder satisfies `pipeline.backends.base.DecoderRuntime`: a static batch
size and sequence length (prompt + generated tokens, KV cache included), and
`forward(input_ids, cache_position) -> logits` for a prefill or one decode step. Everything
about choosing tokens lives here, on transformers' own logits processors and stopping
criteria; everything about shapes is checked before the first forward call.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline.backends.base import DecoderRuntime

# What generate() implements. Everything else that changes the decoding is refused.
SUPPORTED_GENERATION_OPTIONS = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "generator",
)

# Generation options that change the decoding, with the values that mean "off".
_NEUTRAL = {
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None,),
    "diversity_penalty": (None, 0.0),
    "dola_layers": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "constraints": (None,),
    "sequence_bias": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "min_p": (None,),
    "top_h": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "stop_strings": (None,),
    "max_time": (None,),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "token_healing": (None, False),
    "output_scores": (None, False),
    "output_logits": (None, False),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
    "return_dict_in_generate": (None, False),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "use_mtp": (None, False),
    "prefill_chunk_size": (None,),
}


class StaticShapeError(ValueError):
    """A generate() request does not fit the compiled batch size or sequence length."""


class UnsupportedGenerationOption(ValueError):
    """A generation option generate() does not implement (beam search, penalties, ...)."""


class PaddingNotSupported(ValueError):
    """Padded prompts (attention_mask with zeros): the compiled graph has no mask input."""


def _as_id_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, int):
        return [value]
    ids = [int(v) for v in value]
    return ids or None


def _resolve_generation_config(runner_defaults: Any, generation_config: Any, kwargs: dict) -> tuple[Any, dict]:
    """transformers' precedence: call kwargs > `generation_config` argument > the folder's
    generation_config.json > transformers' global defaults. Returns the merged config and,
    for max_length / max_new_tokens, who set it: "call" (kwargs or the argument), "model"
    (generation_config.json) or None (global default)."""
    from transformers import GenerationConfig

    sources: dict[str, str | None] = {}
    for name in ("max_length", "max_new_tokens"):
        if kwargs.get(name) is not None or getattr(generation_config, name, None) is not None:
            sources[name] = "call"
        elif getattr(runner_defaults, name, None) is not None:
            sources[name] = "model"
        else:
            sources[name] = None
    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    if runner_defaults is not None:
        config.update(**runner_defaults.to_dict(), defaults_only=True)
    # A length the caller asked for beats a length from the folder's defaults, whichever of
    # the two names each used (transformers would let a default max_new_tokens win).
    if sources["max_length"] == "call" and sources["max_new_tokens"] == "model":
        config.max_new_tokens = None
        sources["max_new_tokens"] = None
    config.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    unknown = config.update(**kwargs)
    if unknown:
        raise UnsupportedGenerationOption(
            f"generate() does not support argument(s) {sorted(unknown)}; "
            f"supported: {', '.join(SUPPORTED_GENERATION_OPTIONS)}"
        )
    return config, sources


def _unsupported_options(config: Any) -> list[str]:
    problems = []
    for name, neutral in _NEUTRAL.items():
        value = getattr(config, name, None)
        try:
            if value in neutral:
                continue
        except Exception:  # values that do not compare (tensors, objects)
            pass
        problems.append(f"{name}={value!r}")
    return problems


def generate(
    runtime: DecoderRuntime, input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any
) -> Any:
    """A transformers-like generate() over a compiled static-cache decoder (any backend's
    runtime that satisfies `DecoderRuntime`).

    Greedy or sampling (do_sample, temperature, top_k, top_p), min_length / min_new_tokens,
    max_length / max_new_tokens, eos_token_id (int or list: a finished row is filled with
    pad_token_id while the others continue; generation ends when all rows are finished).
    The scores go through transformers' own logits processors and stopping criteria, built
    in the order transformers' generate() builds them, so the same seed gives the same tokens.
    Defaults come from the runtime's generation_config.json, then transformers' global
    defaults (20 new tokens, greedy, top_k=50); call kwargs take precedence over a
    `generation_config` argument, which takes precedence over the folder's defaults.
    Sampling draws with torch.multinomial: reproducible with `generator=torch.Generator()`
    or torch.manual_seed.

    Static shapes: the batch must equal the compiled batch_size, and prompt + new tokens must
    fit the compiled sequence_length. An explicit length request (kwargs or the
    `generation_config` argument) that does not fit raises StaticShapeError; a length that
    only comes from defaults is clamped to what fits (as transformers clamps its default to
    max_position_embeddings). All checks happen before the first model call.
    Returns a LongTensor (batch, prompt + generated) like transformers.
    """
    import torch
    from transformers.generation import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

    generator = kwargs.pop("generator", None)
    config, sources = _resolve_generation_config(runtime.generation_config, generation_config, kwargs)
    problems = _unsupported_options(config)
    if problems:
        raise UnsupportedGenerationOption(
            f"generate() on a compiled decoder does not support {', '.join(problems)}; "
            f"supported options: {', '.join(SUPPORTED_GENERATION_OPTIONS)} (greedy or multinomial sampling, batch as "
            "compiled)"
        )

    # ---- inputs
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2:
        raise StaticShapeError(f"input_ids must be 2-D (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    batch, prompt_len = input_ids.shape
    if batch != runtime.batch_size:
        raise StaticShapeError(
            f"input batch size {batch} != compiled batch_size {runtime.batch_size}: pass exactly "
            f"{runtime.batch_size} prompts (pad the batch with dummy rows and drop their outputs), "
            f"or compile a variant with batch_size={batch}"
        )
    if prompt_len < 1:
        raise StaticShapeError("input_ids has no tokens: the prompt needs at least one token")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if not bool((attention_mask != 0).all()):
            raise PaddingNotSupported(
                "attention_mask has padded positions (zeros): the compiled decoder has no attention-mask input, "
                "so padding would be attended to and change the results. Pass equal-length prompts (mask of ones), "
                "or run prompts of different lengths as separate batches"
            )
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= runtime.vocab_size:
        raise ValueError(
            f"input_ids must be token ids in [0, {runtime.vocab_size}), got min {int(input_ids.min())} max "
            f"{int(input_ids.max())}"
        )

    # ---- lengths
    capacity = runtime.sequence_length - prompt_len
    if capacity < 1:
        raise StaticShapeError(
            f"prompt length {prompt_len} leaves no room to generate in the compiled sequence_length "
            f"{runtime.sequence_length} (prompt + new tokens): shorten the prompt to < {runtime.sequence_length} "
            f"tokens or compile with a larger sequence_length"
        )
    if config.max_new_tokens is not None:
        source = "max_new_tokens"
        new_tokens = int(config.max_new_tokens)
    elif sources["max_length"] is not None:
        source = "max_length"
        new_tokens = int(config.max_length) - prompt_len
    else:
        source = None
        new_tokens = 20  # transformers: with no length anywhere, 20 new tokens
    requested_by_call = source is not None and sources[source] == "call"
    if new_tokens < 1:
        raise StaticShapeError(
            f"nothing to generate: {source}={getattr(config, source)} with a prompt of {prompt_len} tokens; "
            "pass max_new_tokens >= 1"
        )
    if new_tokens > capacity:
        if requested_by_call:
            requested = (
                f"max_new_tokens={new_tokens}" if source == "max_new_tokens" else f"max_length={config.max_length}"
            )
            raise StaticShapeError(
                f"prompt length {prompt_len} + {new_tokens} new tokens ({requested}) = {prompt_len + new_tokens} "
                f"> compiled sequence_length {runtime.sequence_length}: ask for at most {capacity} new tokens "
                f"(max_new_tokens={capacity}), shorten the prompt, or compile with sequence_length >= "
                f"{prompt_len + new_tokens}"
            )
        new_tokens = capacity  # a default length: clamp to what the compiled cache holds
    # ---- special tokens and sampling parameters
    eos_ids = _as_id_list(config.eos_token_id)
    pad_token_id = config.pad_token_id
    if eos_ids is not None:
        bad = [t for t in eos_ids if not 0 <= t < runtime.vocab_size]
        if bad:
            raise ValueError(f"eos_token_id {bad} outside the vocabulary [0, {runtime.vocab_size})")
        if pad_token_id is None:
            pad_token_id = eos_ids[0]  # what transformers does, with a warning
    if config.do_sample:
        if not (config.temperature if config.temperature is not None else 1.0) > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {config.temperature}")
        if config.top_p is not None and not 0 < config.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {config.top_p}")
        if config.top_k is not None and config.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {config.top_k}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    device = getattr(runtime, "device", torch.device("cpu"))
    eos_tensor = torch.tensor(eos_ids, device=device) if eos_ids is not None else None
    processors = logits_processors(config, prompt_len, eos_tensor)
    stopping = StoppingCriteriaList([MaxLengthCriteria(prompt_len + new_tokens)])
    if eos_tensor is not None:
        stopping.append(EosTokenCriteria(eos_token_id=eos_tensor))

    # ---- the loop (all checks done: from here on, work); the shape of transformers' _sample
    ids = input_ids.to(device=device, dtype=torch.long).contiguous()
    positions = torch.arange(runtime.sequence_length, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    with torch.no_grad():
        logits = runtime.forward(ids, positions[:prompt_len])
        while True:
            scores = processors(ids, logits[:, -1, :].to(dtype=torch.float32, copy=True))
            if config.do_sample:
                probs = torch.softmax(scores, dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)
            if eos_tensor is not None:
                next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
            unfinished = unfinished & ~stopping(ids, scores).to(torch.long)
            if not bool(unfinished.any()):
                break  # every row finished, or the length is reached: the last token is never fed back
            cur = ids.shape[1]
            logits = runtime.forward(next_tokens[:, None].contiguous(), positions[cur - 1 : cur])
    return ids


def logits_processors(config: Any, prompt_length: int, eos_tensor: Any) -> Any:
    """transformers' processors for the options generate() supports, in the order and with
    the conditions of transformers' GenerationMixin._get_logits_processor: min_length and
    min_new_tokens each apply when set (so the larger wins, as in transformers), then, when
    sampling, temperature, top-k and top-p."""
    from transformers.generation import (
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    device = eos_tensor.device if eos_tensor is not None else "cpu"
    if eos_tensor is not None and config.min_length is not None and config.min_length > 0:
        processors.append(MinLengthLogitsProcessor(config.min_length, eos_tensor, device=device))
    if eos_tensor is not None and config.min_new_tokens is not None and config.min_new_tokens > 0:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos_tensor, device=device)
        )
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return processors
