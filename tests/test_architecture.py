"""The shape of the package: no import cycles, no hidden ones, small files, ruff clean.

An AST walk over pipeline/: every `import pipeline.x` / `from pipeline.x import y` is an edge.
Top-level imports must form a DAG. A function-local import of a pipeline module is allowed
only with a comment on that line saying why (`# lazy: ...`): function-local imports are how
cycles hide. Heavy third-party imports (torch, transformers, SDKs) stay lazy on purpose and
are not checked here.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The pipeline modules an import statement loads (a `from pkg import name` that names a
    submodule counts as an edge to that submodule)."""
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names if a.name.split(".")[0] == "pipeline"]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        if src.split(".")[0] != "pipeline":
            return []
        out = [src] + [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in known]
    return [t for t in out if t in known]


def _graph():
    known = set(_modules())
    top: dict[str, set[str]] = {m: set() for m in known}
    local: list[tuple[str, int, str]] = []
    for module, path in _modules().items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in _targets(node, module, is_package, known) if t != module]
            if not targets:
                continue
            if node.col_offset == 0:
                top[module].update(targets)
            elif "# lazy:" not in lines[node.lineno - 1]:
                local.append((module, node.lineno, lines[node.lineno - 1].strip()))
    return top, local


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    top, _ = _graph()
    # a package's __init__ importing its own submodules is how a package re-exports: an edge
    # from a submodule back to its package then reads as a cycle that Python resolves fine only
    # while the submodule does not need names the __init__ defines after that import
    cycle = _cycle(top)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    """The check itself can fail: a two-module cycle is reported."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_local_import_of_a_pipeline_module_without_a_reason():
    _, local = _graph()
    assert not local, (
        "function-local imports of pipeline modules (add `# lazy: <why>` or move them to the top):\n"
        + "\n".join(f"  {m}:{line}: {text}" for m, line, text in local)
    )


def test_every_file_is_small():
    big = [
        (p.relative_to(PACKAGE.parent), n)
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not big, f"files over {MAX_LINES} lines: {big}"


def test_readme_module_table_lists_every_file():
    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [
        str(p.relative_to(PACKAGE.parent))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__init__.py" or p.parent != PACKAGE
        if f"`{p.relative_to(PACKAGE.parent).as_posix()}`" not in readme
    ]
    assert not missing, f"README's module table does not list: {missing}"


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    root = PACKAGE.parent
    proc = subprocess.run([ruff, "check", "pipeline", "tests", "bench"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
