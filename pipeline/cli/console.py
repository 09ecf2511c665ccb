"""All terminal output of the CLI: one console for results, one for errors (stderr)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from pipeline.backends import get_backend

# Wide enough for the plan table when piped (CI logs), the terminal's width otherwise.
_width = None if sys.stdout.isatty() else 160
console = Console(stderr=False, highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)


def print_advice(cfg: dict, jobs: list[dict]) -> None:
    """The backend's notes for the planned cast types (e.g. bf16 emulated on this CPU)."""
    for line in get_backend(cfg["backend"]["name"], cfg["backend"]).advice({j["cast_type"] for j in jobs}):
        console.print(f"[yellow]note[/]: {escape(line)}", soft_wrap=True)


def print_lines(lines: list[str]) -> None:
    """Plain lines (never read as rich markup: they hold user strings)."""
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
