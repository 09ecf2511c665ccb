"""Backend registry. Modules are imported lazily by name; each is light at import."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from pipeline.backends.base import Backend, BackendUnavailable

MODULES = {"inductor": "pipeline.backends.inductor", "neuron": "pipeline.backends.neuron"}


def backend_class(name: str) -> type[Backend]:
    if name not in MODULES:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(MODULES)}")
    module = importlib.import_module(MODULES[name])
    return next(
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, Backend) and v is not Backend and getattr(v, "name", None) == name
    )


def options_class(name: str) -> type:
    return importlib.import_module(MODULES[name]).Options


def BACKEND_OPTIONS() -> dict[str, type]:
    return {name: options_class(name) for name in MODULES}


def get_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """The backend `name` with its options: defaults from its Options dataclass, then `options`."""
    defaults = dataclasses.asdict(options_class(name)())
    merged = {**defaults, **{k: v for k, v in (options or {}).items() if k != "name"}}
    return backend_class(name)(merged)


__all__ = ["Backend", "BackendUnavailable", "get_backend", "backend_class", "options_class", "BACKEND_OPTIONS"]
