"""The backend plugin contract.

A backend is light to import: heavy imports (torch, torch_neuronx, ...) happen inside
`compile` and `load`, so planning and validation stay fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar


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

    def compile(self, model: Any, example_inputs: dict[str, Any], spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
        """Compile `model` for `example_inputs` and write the artifact files into `workdir`.

        Returns the backend's section for the artifact's config.json (what `load` needs)."""
        raise NotImplementedError

    def load(self, folder: Path, compile_config: dict[str, Any]) -> Callable[..., Any]:
        """Load an artifact folder written by `compile`; returns a callable taking the
        model's input tensors as keyword arguments and returning a dict of output tensors."""
        raise NotImplementedError
