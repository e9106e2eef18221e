"""The dependency rules of the design: tokenizers_vq never imports argen; models never import Lightning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(*parts: str) -> list[Path]:
    return sorted((REPO.joinpath(*parts)).rglob("*.py"))


@pytest.mark.parametrize("path", files("tokenizers_vq"), ids=lambda p: str(p.relative_to(REPO)))
def test_tokenizers_vq_is_the_lower_layer(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m == "argen" or m.startswith(("argen.", "lightning", "pytorch_lightning"))}
    assert not bad, f"{path} imports {bad}: tokenizers_vq must not depend on argen or Lightning"


def test_no_print_in_library_code() -> None:
    offenders = []
    for path in files("argen") + files("tokenizers_vq"):
        if "cli" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"bare print in library code: {offenders}"
