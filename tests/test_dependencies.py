"""Every third-party module the package imports is a declared dependency or a documented extra."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
# Imported only where the named extra is installed; not on PyPI (AWS's index) or optional.
EXTRAS_NOT_ON_PYPI = {
    "torch_neuronx": "neuron",
    "neuronx_distributed": "neuron",
    "neuronx_distributed_inference": "neuron",
    "optimum": "neuron",
    "transformers_neuronx": "neuron",
    "libneuronxla": "neuron",
}


def _imports() -> dict[str, str]:
    """top-level module -> a file importing it, for every import in pipeline/ (lazy ones too)."""
    out = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                out.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return out


def _declared() -> dict[str, set[str]]:
    """normalised distribution name -> where it is declared ("dependencies" and/or extra names)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out: dict[str, set[str]] = {}
    for req in project["dependencies"]:
        out.setdefault(re.split(r"[<>=!\[; ]", req)[0].lower().replace("_", "-"), set()).add("dependencies")
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            out.setdefault(re.split(r"[<>=!\[; ]", req)[0].lower().replace("_", "-"), set()).add(extra)
    return out


def test_every_imported_module_is_declared():
    stdlib = set(sys.stdlib_module_names)
    dists = metadata.packages_distributions()
    declared = _declared()
    readme = (REPO / "README.md").read_text()
    missing = []
    for module, where in sorted(_imports().items()):
        if module in stdlib or module == "pipeline" or module in EXTRAS_NOT_ON_PYPI:
            continue
        names = [d.lower().replace("_", "-") for d in dists.get(module, [])]
        if not names:
            missing.append(f"{module} (imported in {where}) is not installed, so not declared")
        elif not any(n in declared for n in names):
            missing.append(f"{module} (imported in {where}) comes from {names} which pyproject does not declare")
        else:
            where_declared = set().union(*(declared.get(n, set()) for n in names))
            extras = where_declared - {"test"}
            if not extras:  # the package's own code must not need what only the tests install
                missing.append(f"{module} (imported in {where}) is declared only in the test extra")
            elif "dependencies" not in extras and not any(f"[{e}]" in readme for e in extras):
                missing.append(f"{module} (imported in {where}) needs extra {sorted(extras)}, which README never names")
    assert not missing, "\n".join(missing)


def test_the_neuron_extra_names_no_pypi_placeholder():
    """torch-neuronx / neuronx-cc on PyPI are placeholders: the extra must not pull them."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(name in req for req in extras.get("neuron", []) for name in ("torch-neuronx", "neuronx-cc"))


def test_the_distribution_name_is_not_the_taken_one():
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"] != "pipeline"
