"""House rules read from the source. The dependency rules (layers, tokenizers_vq below argen, models
without Lightning) are in test_layering.py."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def files(*parts: str) -> list[Path]:
    return sorted((REPO.joinpath(*parts)).rglob("*.py"))


def test_no_print_in_library_code() -> None:
    offenders = []
    for path in files("argen") + files("tokenizers_vq"):
        if "cli" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"bare print in library code: {offenders}"
