"""The import graph runs one way: ops and saes never import training or experiments, and the
two kNN search modules (brute force and low rank) do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "softsae_lib"


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", ["ops", "saes"])
def test_model_layers_do_not_import_training_or_experiments(layer):
    bad = {
        f"{path.relative_to(PKG)}: {name}"
        for path in sorted((PKG / layer).glob("*.py"))
        for name in _imports(path)
        if name.startswith(("softsae_lib.training", "softsae_lib.experiments"))
    }
    assert not bad, bad


def test_knn_modules_do_not_import_each_other():
    # neighbors owns the dispatch (it imports low_rank); both share lid/exact.py.
    low_rank = _imports(PKG / "lid" / "low_rank.py")
    assert not any(n.startswith("softsae_lib.lid.neighbors") for n in low_rank)
