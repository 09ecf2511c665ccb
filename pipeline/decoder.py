"""Causal-LM (text-generation) compilation with AOTInductor over a static KV cache.

One exported graph serves both prefill (n prompt tokens) and one-token decode: its inputs are
`input_ids` (batch, n) and `cache_position` (n,), n in [1, sequence_length]; its output is
`logits` (batch, n, vocab). The KV cache is a buffer of the graph, of static shape
(batch_size, heads, sequence_length, head_dim), mutated in place by every call. So the batch
size and the total length (prompt + generated tokens) are fixed at compile time, and
`generate()` enforces both with clear errors before doing any work.

Why a new generate() call needs no cache reset: every call sets the cache's write offset from
`cache_position[0]` (transformers' export wrapper does that), a prefill at position 0
overwrites slots 0..n-1, and the causal mask built from the positions only lets a query at
position p see slots <= p, all of which were written by the current generation. Stale slots
beyond p (left by a longer earlier generation) are masked out. Tested: two different prompts
in a row give the same ids as each one in a fresh process.

Padding: the graph has no attention-mask input (the static-cache wrapper passes
`attention_mask=None`), so padded positions would be attended to and change the outputs.
`generate()` therefore accepts equal-length prompts only: `attention_mask` may be omitted or
all ones; a mask with zeros (left- or right-padding) raises `PaddingNotSupported`.

The runner is stateful (it owns the cache): one generate() at a time per runner.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

ARTIFACT_FILE = "model.pt2"
META_FILE = "decoder.json"
GENERATION_CONFIG_FILE = "generation_config.json"
FORMAT = "aoti-static-kv-decoder"
FORMAT_VERSION = 1
INPUT_NAMES = ("input_ids", "cache_position")
OUTPUT_NAMES = ("logits",)

# Measured on tiny Llama (CPU): freezing verifies (identical greedy ids) and makes a decode
# step ~25% faster (weights become constants that inductor can fold/prepack).
DEFAULT_INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True}

_DTYPES = {
    "fp32": "float32", "float32": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16",
}
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# What generate() implements. Everything else that changes the decoding is refused.
SUPPORTED_GENERATION_OPTIONS = (
    "max_length", "max_new_tokens", "min_length", "min_new_tokens",
    "do_sample", "temperature", "top_k", "top_p",
    "eos_token_id", "pad_token_id", "generator",
)

# Generation options that change the decoding, with the values that mean "off".
_NEUTRAL = {
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "num_return_sequences": (None, 1),
    "penalty_alpha": (None,), "diversity_penalty": (None, 0.0), "dola_layers": (None,),
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "force_words_ids": (None,), "constraints": (None,),
    "sequence_bias": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "min_p": (None,), "top_h": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0),
    "watermarking_config": (None,), "stop_strings": (None,), "max_time": (None,),
    "renormalize_logits": (None, False), "remove_invalid_values": (None, False),
    "token_healing": (None, False), "output_scores": (None, False), "output_logits": (None, False),
    "output_attentions": (None, False), "output_hidden_states": (None, False),
    "return_dict_in_generate": (None, False), "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,), "use_mtp": (None, False), "prefill_chunk_size": (None,),
}


class DecoderExportError(RuntimeError):
    """The model cannot be compiled as a static-cache decoder; the message says why."""


class StaticShapeError(ValueError):
    """A generate() request does not fit the compiled batch size or sequence length."""


class UnsupportedGenerationOption(ValueError):
    """A generation option generate() does not implement (beam search, penalties, ...)."""


class PaddingNotSupported(ValueError):
    """Padded prompts (attention_mask with zeros): the compiled graph has no mask input."""


# --------------------------------------------------------------------------- export


def _torch_dtype_name(dtype_name: str) -> str:
    try:
        return _DTYPES[str(dtype_name).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype_name!r} not supported; use one of {sorted(_DTYPES)}") from None


def _max_positions(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_exportable(model: Any, batch_size: int, sequence_length: int) -> None:
    """Refuse, with the reason, what the static-cache exporter cannot serve correctly."""
    arch = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        raise DecoderExportError(f"{arch} has no `config`: export_decoder needs a transformers PreTrainedModel")
    if getattr(config, "is_encoder_decoder", False):
        raise DecoderExportError(
            f"{arch} ({config.model_type}) is an encoder-decoder model; export_decoder compiles "
            "decoder-only causal LMs (AutoModelForCausalLM, task text-generation) only"
        )
    can_generate = getattr(model, "can_generate", None)
    if can_generate is None or not can_generate():
        raise DecoderExportError(
            f"{arch} ({config.model_type}) has no language-modeling head / cannot generate; "
            "load it with AutoModelForCausalLM for task text-generation"
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "use_cache", True) is False:
        raise DecoderExportError(
            f"{arch} ({config.model_type}) has use_cache=False in its config; the static-cache "
            "export needs a KV cache: set config.use_cache=True"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(sequence_length, int) or sequence_length < 2:
        raise ValueError(f"sequence_length must be an int >= 2 (prompt + generated tokens), got {sequence_length!r}")
    max_pos = _max_positions(text_config)
    if max_pos is not None and sequence_length > max_pos:
        raise DecoderExportError(
            f"sequence_length={sequence_length} exceeds {arch}'s max_position_embeddings={max_pos}; "
            f"compile with sequence_length <= {max_pos}"
        )
    # transformers' exporter replaces sliding-window layers by full static layers: results
    # differ from the model once the sequence is longer than the window.
    window = getattr(text_config, "sliding_window", None)
    layer_types = getattr(text_config, "layer_types", None)
    uses_window = (
        window is not None
        and getattr(text_config, "use_sliding_window", True) is not False
        and (layer_types is None or any("sliding" in str(t) for t in layer_types))
    )
    if uses_window and sequence_length > window:
        raise DecoderExportError(
            f"{arch} uses sliding-window attention (sliding_window={window}) and the static-cache export "
            f"only matches the model up to the window: compile with sequence_length <= {window} "
            f"(got {sequence_length})"
        )


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


def _smoke_test(ep: Any, batch_size: int, sequence_length: int, vocab_size: int, device: str, arch: str) -> None:
    """Run the exported graph for a 2-token prefill and a 1-token decode step.

    Some architectures export fine but specialize a shape on the example (OPT: decode of one
    token fails a runtime assertion); catch that here, with a clear error, instead of after
    a long compile. The cache buffers are restored afterwards."""
    import torch

    saved = [(buf, buf.detach().clone()) for _, buf in ep.named_buffers()]
    try:
        module = ep.module()
        ids = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
        steps = [("a 2-token prefill", ids, torch.arange(2, device=device))]
        if sequence_length > 2:
            steps.append(("a one-token decode step", ids[:, :1], torch.tensor([2], device=device)))
        for what, step_ids, positions in steps:
            try:
                logits = module(input_ids=step_ids, cache_position=positions)
            except Exception as exc:
                raise DecoderExportError(
                    f"{arch}: the exported graph cannot run {what} ({type(exc).__name__}: {_first_line(exc)}); "
                    "this architecture is not supported by the static-cache decoder export"
                ) from exc
            expected = (batch_size, step_ids.shape[1], vocab_size)
            if tuple(logits.shape) != expected:
                raise DecoderExportError(
                    f"{arch}: the exported graph returned logits of shape {tuple(logits.shape)} for {what}, "
                    f"expected {expected}"
                )
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _shutdown_compile_workers() -> None:
    """Stop inductor's compile worker pool. Left running, it slowed the compiled model 10x
    when loaded and verified in the same process (measured: 36 ms -> 2.5 ms per decode step,
    tiny Llama on 2 busy cores); the next compile restarts it."""
    try:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    except Exception:  # best effort: an internal API
        pass


def export_decoder(
    model: Any,
    batch_size: int,
    sequence_length: int,
    dtype_name: str,
    workdir: Path,
    inductor_configs: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Export `model` (a transformers causal LM) with a static KV cache and AOT-compile it.

    Writes into `workdir`: model.pt2 (the AOTInductor package), generation_config.json (the
    model's defaults for generate()) and decoder.json (the returned dict). The returned dict
    is the artifact's section for config.json; `load_decoder` needs it (from decoder.json or
    passed explicitly).

    `sequence_length` is the total capacity: prompt + generated tokens. The caller's model is
    left unchanged (a copy is cast when `dtype_name` or `device` differ from the model's).
    `inductor_configs=None` uses DEFAULT_INDUCTOR_CONFIGS ({"freezing": True}); pass {} for
    inductor's defaults. Raises DecoderExportError with the reason when the model cannot be
    exported (encoder-decoder, no LM head, no cache, sliding window shorter than the
    sequence, a graph that does not export or cannot decode one token).
    """
    import torch
    import transformers
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    workdir = Path(workdir)
    torch_dtype_name = _torch_dtype_name(dtype_name)
    dtype = getattr(torch, torch_dtype_name)
    _check_exportable(model, batch_size, sequence_length)
    arch = type(model).__name__
    configs = dict(DEFAULT_INDUCTOR_CONFIGS if inductor_configs is None else inductor_configs)

    original_generation_config = copy.deepcopy(model.generation_config)
    if model.dtype != dtype or torch.device(model.device) != torch.device(device):
        model = copy.deepcopy(model).to(device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output_embeddings is not None and getattr(output_embeddings, "weight", None) is not None:
        vocab_size = int(output_embeddings.weight.shape[0])
    else:
        vocab_size = int(model.config.get_text_config().vocab_size)

    # The exporter refuses anything but a static cache; use a temporary generation config so
    # the caller's model keeps its own.
    export_generation_config = copy.deepcopy(original_generation_config)
    export_generation_config.cache_implementation = "static"
    export_generation_config.use_cache = True
    model.generation_config = export_generation_config
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        try:
            wrapper = TorchExportableModuleForDecoderOnlyLM(
                model, batch_size=batch_size, max_cache_len=sequence_length, device=torch.device(device)
            )
            example_len = min(4, sequence_length)
            example_ids = (torch.arange(batch_size * example_len, device=device) % vocab_size).reshape(
                batch_size, example_len
            )
            seq = torch.export.Dim("seq", min=1, max=sequence_length)
            with torch.no_grad():
                ep = wrapper.export(
                    input_ids=example_ids,
                    cache_position=torch.arange(example_len, device=device),
                    dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}},
                    strict=True,
                )
        except DecoderExportError:
            raise
        except Exception as exc:
            raise DecoderExportError(
                f"torch.export of {arch} ({model.config.model_type}) with a static cache failed: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        with torch.no_grad():
            _smoke_test(ep, batch_size, sequence_length, vocab_size, device, arch)
        export_s = time.perf_counter() - started

        started = time.perf_counter()
        package_path = workdir / ARTIFACT_FILE
        try:
            torch._inductor.aoti_compile_and_package(
                ep, package_path=str(package_path), inductor_configs=dict(configs)
            )
        except Exception as exc:
            raise DecoderExportError(
                f"AOTInductor compile of {arch} failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        compile_s = time.perf_counter() - started
        _shutdown_compile_workers()
    finally:
        model.generation_config = original_generation_config
        if was_training:
            model.train()

    original_generation_config.save_pretrained(workdir)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": "text-generation",
        "file": ARTIFACT_FILE,
        "generation_config_file": GENERATION_CONFIG_FILE,
        "architecture": arch,
        "model_type": model.config.model_type,
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        "dtype": _SHORT_DTYPE[torch_dtype_name],
        "device": str(device),
        "vocab_size": vocab_size,
        "kv_cache": "static",
        "input_names": list(INPUT_NAMES),
        "output_names": list(OUTPUT_NAMES),
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": [batch_size, "seq"]},
            "cache_position": {"dtype": "int64", "shape": ["seq"]},
        },
        "outputs": {"logits": {"dtype": torch_dtype_name, "shape": [batch_size, "seq", vocab_size]}},
        "seq_range": [1, sequence_length],
        "inductor_configs": configs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "timings": {"export_s": round(export_s, 3), "compile_s": round(compile_s, 3)},
    }
    # decoder.json last and atomically: its presence marks a complete artifact folder
    tmp = workdir / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, workdir / META_FILE)
    return meta


# --------------------------------------------------------------------------- runtime


class DecoderRunner:
    """A loaded compiled decoder: runner(input_ids, cache_position) -> logits.

    Stateful: the KV cache lives inside the compiled package. Attributes batch_size,
    sequence_length, vocab_size, dtype, device and generation_config (the folder's
    generation_config.json, or None) describe what it accepts."""

    def __init__(self, package: Any, meta: dict, generation_config: Any | None, folder: Path | None = None):
        import torch

        self._package = package
        self.meta = dict(meta)
        self.folder = folder
        self.batch_size = int(meta["batch_size"])
        self.sequence_length = int(meta["sequence_length"])
        self.vocab_size = int(meta["vocab_size"])
        self.dtype = meta.get("dtype", "fp32")
        self.device = torch.device(meta.get("device", "cpu"))
        self.generation_config = generation_config
        self._positions = torch.arange(self.sequence_length, dtype=torch.long, device=self.device)

    def __call__(self, input_ids: Any, cache_position: Any) -> Any:
        import torch

        input_ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        cache_position = torch.as_tensor(cache_position, dtype=torch.long, device=self.device)
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch_size:
            raise StaticShapeError(
                f"input_ids must have shape (batch_size={self.batch_size}, n), got {tuple(input_ids.shape)}"
            )
        n = input_ids.shape[1]
        if not 1 <= n <= self.sequence_length:
            raise StaticShapeError(f"input_ids length must be in [1, {self.sequence_length}], got {n}")
        if tuple(cache_position.shape) != (n,):
            raise StaticShapeError(f"cache_position must have shape ({n},), got {tuple(cache_position.shape)}")
        start = int(cache_position[0])
        if start < 0 or start + n > self.sequence_length:
            raise StaticShapeError(
                f"cache_position {start}..{start + n - 1} is outside the compiled cache 0..{self.sequence_length - 1}"
            )
        return self._forward(input_ids, cache_position)

    def _forward(self, input_ids: Any, cache_position: Any) -> Any:
        # Only cache_position[0] matters to the graph: positions are contiguous from there.
        # The compiled kernels assume contiguous inputs: a strided view (prompt[:, :1]) would
        # be read as if it were dense, silently giving other rows' tokens.
        return self._package(input_ids=input_ids.contiguous(), cache_position=cache_position.contiguous())

    def generate(self, input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any) -> Any:
        return generate(self, input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs)

    def __repr__(self) -> str:
        return (
            f"DecoderRunner({self.meta.get('architecture')}, batch_size={self.batch_size}, "
            f"sequence_length={self.sequence_length}, dtype={self.dtype}, device={self.device})"
        )


def load_decoder(folder: Path | str, compile_config: dict | None = None) -> DecoderRunner:
    """Load an artifact folder written by export_decoder.

    `compile_config` is export_decoder's returned dict; when None it is read from
    decoder.json in the folder. generation_config.json, when present, gives generate()'s
    defaults."""
    import torch

    folder = Path(folder)
    if compile_config is None:
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a decoder artifact folder (or pass compile_config)")
        compile_config = json.loads(meta_path.read_text())
    if compile_config.get("format") != FORMAT:
        raise ValueError(f"{folder}: format {compile_config.get('format')!r} is not {FORMAT!r}")
    if int(compile_config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{folder}: format_version {compile_config.get('format_version')} is newer than this "
            f"pipeline's ({FORMAT_VERSION}); upgrade pipeline"
        )
    package_path = folder / compile_config.get("file", ARTIFACT_FILE)
    if not package_path.is_file():
        raise FileNotFoundError(f"{package_path} not found")
    device = torch.device(compile_config.get("device", "cpu"))
    device_index = device.index if device.index is not None else -1
    package = torch._inductor.aoti_load_package(str(package_path), device_index=device_index)

    generation_config = None
    gen_file = folder / compile_config.get("generation_config_file", GENERATION_CONFIG_FILE)
    if gen_file.is_file():
        from transformers import GenerationConfig

        generation_config = GenerationConfig.from_pretrained(folder, config_file_name=gen_file.name)
    return DecoderRunner(package, compile_config, generation_config, folder=folder)


# --------------------------------------------------------------------------- generate


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


def _warp_for_sampling(scores: Any, temperature: float, top_k: int, top_p: float) -> Any:
    """Temperature, top-k, top-p: same order and semantics as transformers' logits warpers."""
    import torch

    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        k = min(max(int(top_k), 1), scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - top_p)
        sorted_remove[..., -1:] = False
        remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


def generate(runner: DecoderRunner, input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any) -> Any:
    """A transformers-like generate() over a compiled static-cache decoder.

    Greedy or sampling (do_sample, temperature, top_k, top_p), min_length / min_new_tokens,
    max_length / max_new_tokens, eos_token_id (int or list: a finished row is filled with
    pad_token_id while the others continue; generation ends when all rows are finished).
    Defaults come from the runner's generation_config.json, then transformers' global
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

    generator = kwargs.pop("generator", None)
    config, sources = _resolve_generation_config(runner.generation_config, generation_config, kwargs)
    problems = _unsupported_options(config)
    if problems:
        raise UnsupportedGenerationOption(
            f"generate() on a compiled decoder does not support {', '.join(problems)}; "
            f"supported options: {', '.join(SUPPORTED_GENERATION_OPTIONS)} (greedy or multinomial sampling, batch as compiled)"
        )

    # ---- inputs
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() != 2:
        raise StaticShapeError(f"input_ids must be 2-D (batch, prompt_length), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    batch, prompt_len = input_ids.shape
    if batch != runner.batch_size:
        raise StaticShapeError(
            f"input batch size {batch} != compiled batch_size {runner.batch_size}: pass exactly "
            f"{runner.batch_size} prompts (pad the batch with dummy rows and drop their outputs), "
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
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= runner.vocab_size:
        raise ValueError(f"input_ids must be token ids in [0, {runner.vocab_size}), got min {int(input_ids.min())} max {int(input_ids.max())}")

    # ---- lengths
    capacity = runner.sequence_length - prompt_len
    if capacity < 1:
        raise StaticShapeError(
            f"prompt length {prompt_len} leaves no room to generate in the compiled sequence_length "
            f"{runner.sequence_length} (prompt + new tokens): shorten the prompt to < {runner.sequence_length} "
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
            requested = f"max_new_tokens={new_tokens}" if source == "max_new_tokens" else f"max_length={config.max_length}"
            raise StaticShapeError(
                f"prompt length {prompt_len} + {new_tokens} new tokens ({requested}) = {prompt_len + new_tokens} "
                f"> compiled sequence_length {runner.sequence_length}: ask for at most {capacity} new tokens "
                f"(max_new_tokens={capacity}), shorten the prompt, or compile with sequence_length >= "
                f"{prompt_len + new_tokens}"
            )
        new_tokens = capacity  # a default length: clamp to what the compiled cache holds
    min_length = int(config.min_length or 0)
    if config.min_new_tokens is not None:
        min_length = prompt_len + int(config.min_new_tokens)

    # ---- special tokens and sampling parameters
    eos_ids = _as_id_list(config.eos_token_id)
    pad_token_id = config.pad_token_id
    if eos_ids is not None:
        bad = [t for t in eos_ids if not 0 <= t < runner.vocab_size]
        if bad:
            raise ValueError(f"eos_token_id {bad} outside the vocabulary [0, {runner.vocab_size})")
        if pad_token_id is None:
            pad_token_id = eos_ids[0]  # what transformers does, with a warning
    do_sample = bool(config.do_sample)
    temperature = float(config.temperature if config.temperature is not None else 1.0)
    top_k = int(config.top_k or 0)
    top_p = float(config.top_p if config.top_p is not None else 1.0)
    if do_sample:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    # ---- the loop (all checks done: from here on, work)
    device = runner.device
    ids = input_ids.to(device=device, dtype=torch.long).contiguous()
    positions = runner._positions
    eos_tensor = torch.tensor(eos_ids, device=device) if eos_ids is not None else None
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    new: list[Any] = []
    with torch.no_grad():
        logits = runner._forward(ids, positions[:prompt_len])
        cur_len = prompt_len
        for step in range(new_tokens):
            scores = logits[:, -1, :].to(dtype=torch.float32, copy=True)
            if eos_tensor is not None and cur_len < min_length:
                scores[:, eos_tensor] = -float("inf")
            if do_sample:
                scores = _warp_for_sampling(scores, temperature, top_k, top_p)
                probs = torch.softmax(scores, dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)
            if eos_tensor is not None:
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
            new.append(next_tokens)
            cur_len += 1
            if eos_tensor is not None:
                unfinished &= ~torch.isin(next_tokens, eos_tensor)
                if not bool(unfinished.any()):
                    break
            if step + 1 == new_tokens:
                break  # the last token is never fed back
            logits = runner._forward(next_tokens[:, None], positions[cur_len - 1 : cur_len])
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1)


# --------------------------------------------------------------------------- verification


def greedy_agreement(ref_ids: Any, got_ids: Any, prompt_length: int = 0) -> dict:
    """How far two batches of generated ids agree, for the verify gate.

    Compares tokens from `prompt_length` on, over the shorter of the two lengths.
    agreement_length: tokens equal before the first mismatch, min over the batch;
    agreement_rate: mean over rows of (matching prefix / compared tokens);
    token_match_rate: fraction of equal tokens at equal positions;
    exact: same shape and every token equal."""
    import torch

    ref = torch.as_tensor(ref_ids).long().cpu()
    got = torch.as_tensor(got_ids).long().cpu()
    if ref.dim() == 1:
        ref = ref[None]
    if got.dim() == 1:
        got = got[None]
    if ref.shape[0] != got.shape[0]:
        raise ValueError(f"batch sizes differ: ref {ref.shape[0]} vs got {got.shape[0]}")
    end = min(ref.shape[1], got.shape[1])
    compared = max(end - prompt_length, 0)
    a = ref[:, prompt_length:end]
    b = got[:, prompt_length:end]
    equal = a == b
    if compared == 0:
        prefix = [0] * ref.shape[0]
    else:
        mismatch = ~equal
        first = torch.where(mismatch.any(dim=1), mismatch.int().argmax(dim=1), torch.full((ref.shape[0],), compared))
        prefix = [int(v) for v in first]
    return {
        "agreement_length": min(prefix) if prefix else 0,
        "agreement_length_per_row": prefix,
        "compared_tokens": compared,
        "agreement_rate": (sum(prefix) / (compared * len(prefix))) if compared and prefix else 1.0,
        "token_match_rate": float(equal.float().mean()) if compared else 1.0,
        "exact": bool(ref.shape == got.shape and torch.equal(ref, got)),
    }
