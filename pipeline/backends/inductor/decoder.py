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
`pipeline.generation.generate()` therefore accepts equal-length prompts only: `attention_mask` may be omitted or
all ones; a mask with zeros (left- or right-padding) raises `PaddingNotSupported`.

The runner is stateful (it owns the cache): one generate() at a time per runner.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.generation import StaticShapeError, generate
from pipeline.model_entries import max_positions

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
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class DecoderExportError(RuntimeError):
    """The model cannot be compiled as a static-cache decoder; the message says why."""



# --------------------------------------------------------------------------- compile phases


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (g++, probes): wall clocks are noisy
    on a shared 2-core machine, this is not."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Span:
    """Wall and CPU time inside a hooked call, counted once when calls overlap (threads)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.calls = 0
        self._active = 0
        self._lock = threading.Lock()
        self._since = (0.0, 0.0)

    def wrap(self, fn):
        def timed(*args, **kwargs):
            with self._lock:
                self.calls += 1
                self._active += 1
                if self._active == 1:
                    self._since = (time.perf_counter(), cpu_seconds())
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._active -= 1
                    if self._active == 0:
                        self.wall += time.perf_counter() - self._since[0]
                        self.cpu += cpu_seconds() - self._since[1]

        return timed


@contextlib.contextmanager
def _hooked(owner: Any, name: str, span: _Span):
    original = getattr(owner, name, None)
    if original is None:  # an internal API that moved: no breakdown, but the compile still runs
        yield
        return
    setattr(owner, name, span.wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def compile_package(program: Any, package_path: Path | str, inductor_configs: dict) -> dict[str, float]:
    """`torch._inductor.aoti_compile_and_package(program)` into `package_path`, timed by phase.

    Returns wall seconds `lower_s` (Inductor: freezing, lowering, codegen, the ISA probe),
    `cxx_s` (every C++ compiler run: `CppBuilder.build`) and `package_s` (writing the .pt2,
    `package_aoti`), which add up to the call's wall time, and the same phases in CPU seconds
    (`*_cpu_s`, this process and its children). Wrapping the two internal functions costs
    nothing measurable; where a future torch moves them, that phase reads 0."""
    import torch
    import torch._inductor.cpp_builder as cpp_builder
    import torch._inductor.package as aoti_package

    cxx, package = _Span(), _Span()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with _hooked(cpp_builder.CppBuilder, "build", cxx), _hooked(aoti_package, "package_aoti", package):
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(package_path), inductor_configs=dict(inductor_configs)
        )
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    return {
        "lower_s": max(0.0, wall - cxx.wall - package.wall),
        "cxx_s": cxx.wall,
        "package_s": package.wall,
        "lower_cpu_s": max(0.0, cpu - cxx.cpu - package.cpu),
        "cxx_cpu_s": cxx.cpu,
        "package_cpu_s": package.cpu,
        "cxx_builds": cxx.calls,
    }


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}


# --------------------------------------------------------------------------- export


def _torch_dtype_name(dtype_name: str) -> str:
    try:
        return _DTYPES[str(dtype_name).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype_name!r} not supported; use one of {sorted(_DTYPES)}") from None


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
    max_pos = max_positions(text_config)
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
    phases: dict | None = None,
    speed_configs: dict | None = None,
) -> dict:
    """Export `model` (a transformers causal LM) with a static KV cache and AOT-compile it.

    Writes into `workdir`: model.pt2 (the AOTInductor package), generation_config.json (the
    model's defaults for generate()) and decoder.json (the returned dict). The returned dict
    is the artifact's section for config.json; `load_decoder` needs it (from decoder.json or
    passed explicitly).

    `sequence_length` is the total capacity: prompt + generated tokens. The caller's model is
    left unchanged (a copy is cast when `dtype_name` or `device` differ from the model's).
    `inductor_configs=None` uses DEFAULT_INDUCTOR_CONFIGS; pass {} for inductor's defaults.
    `speed_configs` are applied on top of them but not recorded (they change only how fast the
    compile runs). `phases`, when given, receives the phase timings (export_s, lower_s, cxx_s,
    package_s and their CPU seconds; see `compile_package`). Raises DecoderExportError with the
    reason when the model cannot be exported (encoder-decoder, no LM head, no cache, sliding
    window shorter than the sequence, a graph that does not export or cannot decode one token).
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
        started, cpu_started = time.perf_counter(), cpu_seconds()
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
        export_s, export_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_started

        started = time.perf_counter()
        package_path = workdir / ARTIFACT_FILE
        try:
            compiled = compile_package(ep, package_path, {**configs, **(speed_configs or {})})
        except Exception as exc:
            raise DecoderExportError(
                f"AOTInductor compile of {arch} failed: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        compile_s = time.perf_counter() - started
        if phases is not None:
            phases.update(rounded({"export_s": export_s, "export_cpu_s": export_cpu_s, **compiled}))
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
    """A loaded compiled decoder, a `DecoderRuntime`: forward(input_ids, cache_position) -> logits
    over every given position; calling it does the same after checking the shapes.

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
        return self.forward(input_ids, cache_position)

    def forward(self, input_ids: Any, cache_position: Any) -> Any:
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
