"""The backend plugin contract.

A backend is light to import: heavy imports (torch, torch_neuronx, ...) happen inside
`compile` and `load`, so planning and validation stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable


class BackendUnavailable(RuntimeError):
    """Raised by a worker when a backend cannot run here; the message says what is missing."""


class Backend:
    name: ClassVar[str]
    cast_types: ClassVar[tuple[str, ...]]
    tasks: ClassVar[tuple[str, ...]]

    def __init__(self, options: dict[str, Any]):
        # options: the backend's config node minus `name`, as plain data (JSON-able).
        self.options = dict(options)

    def spec_options(self) -> dict[str, Any]:
        """The options as they belong in a spec (and key): those that change the compiled bytes."""
        return {k: v for k, v in self.options.items() if k != "name"}

    def quantization(self, cast_type: str) -> dict[str, Any] | None:
        """The quantization recipe (and its library's version) that decides the bytes of
        `cast_type`, for the spec; None when the cast type is not quantized."""
        return None

    def warm_up(self) -> None:
        """Import what compile and load need (torch, the compiler): a standby process calls it
        before its job is known, so the job does not wait for the imports."""

    def available(self) -> str | None:
        """None when this backend can compile here, else a one-line reason."""
        raise NotImplementedError

    def toolchain(self) -> dict[str, Any]:
        """Versions and platform facts that change the compiled bytes (they go in the key)."""
        raise NotImplementedError

    def validate(self, job: dict[str, Any]) -> list[str]:
        """Backend-specific problems with one job's fields (task, shapes, cast_type, ...)."""
        return []

    def advice(self, cast_types: set[str]) -> list[str]:
        """Not errors: what a user should know before compiling these cast types here (e.g. a
        cast type this machine can only emulate). Shown by plan and run, kept in the report."""
        return []

    def compile(
        self, model: Any, example_inputs: dict[str, Any], spec: dict[str, Any], workdir: Path
    ) -> dict[str, Any]:
        """Compile `model` for `example_inputs` and write the artifact files into `workdir`.

        Returns the backend's section for the artifact's config.json (what `load` needs)."""
        raise NotImplementedError

    def refit(
        self, model: Any, example_inputs: dict[str, Any], spec: dict[str, Any], workdir: Path, program: Path
    ) -> dict[str, Any]:
        """What `compile` returns, without compiling: the weight-free program in the artifact
        folder `program` (same graph key) plus `model`'s weights, written into `workdir`.
        Raises ValueError, having written nothing, when the weights do not fit the program."""
        raise ValueError(f"backend {self.name} has no weight-free programs to refit")

    def load(self, folder: Path, compile_config: dict[str, Any]) -> Callable[..., Any]:
        """Load an artifact folder written by `compile`; returns a callable taking the
        model's input tensors as keyword arguments and returning a dict of output tensors."""
        raise NotImplementedError


@runtime_checkable
class DecoderRuntime(Protocol):
    """What a backend's `load` returns for text-generation, whatever the engine underneath:
    `pipeline.generation.generate()` and verification drive every backend through it.

    A static-shape causal LM with its KV cache inside: `forward(input_ids, cache_position)`
    runs `input_ids` (batch_size, n) at positions `cache_position` (n,), contiguous from
    cache_position[0] (a prefill from 0, or one decode step), and returns logits
    (batch_size, n, vocab_size), or (batch_size, 1, vocab_size) for engines that compute the
    last position only. `generation_config`: the artifact's generation defaults or None."""

    batch_size: int
    sequence_length: int
    vocab_size: int
    device: Any
    generation_config: Any

    def forward(self, input_ids: Any, cache_position: Any) -> Any: ...
