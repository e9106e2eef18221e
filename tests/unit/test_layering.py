"""The dependency rules of DESIGN.md ("Layout"), read from the source with ``ast``: no module is imported.

Every module of ``argen/`` belongs to a unit (its subpackage, or its module directly under ``argen/``) and a
unit to a row. A module may import from its own unit and from the units of lower rows; an import from the
same row or a higher one fails, naming the file, the line and the rule. Imports inside functions count (a
lazy import is still a dependency), and so do those under ``if TYPE_CHECKING:``.

| row | units                    | what it is; why it sits here                                                  |
|-----|--------------------------|-------------------------------------------------------------------------------|
| 8   | cli                      | thin @hydra.main wrappers over all below                                      |
| 7   | the root, argen/__init__ | the facade ``argen.load`` (lazily imports io); no library module imports it:  |
|     |                          | importing any ``argen.x`` runs it, so it stays light                          |
| 6   | training, eval           | Lightning modules, callbacks; metrics, judges, evaluation runners             |
| 5   | pipeline                 | library API (load an export + its tokenizer, sample) over io and samplers;    |
|     |                          | below training and eval so that eval runners and training may sample with it |
| 4   | io, data                 | io: export/load, converters (they build generators from nn parts);            |
|     |                          | data: datasets and the DataModule, for training, eval and the CLIs            |
| 3   | samplers                 | drive generators through the protocol                                         |
| 2   | generators               | configurations of nn parts                                                    |
| 1   | nn                       | attention, trunk, blocks, conditioning                                        |
| 0   | core, _version           | protocols, decode state, shared errors (argen.core.errors); ``__version__``   |
| -   | tokenizers_vq            | a package of its own below all of argen: any unit may import it, it imports   |
|     |                          | no argen (PSNR/SSIM live there: tokenizer training and eval both use them)    |

Units of one row are peers and do not import each other (training and eval share what lies below them).
A unit found on disk but missing from the table fails too: place it before it grows dependencies.

Models never import Lightning: nothing in core, nn, generators, samplers, io, data or tokenizers_vq imports
``lightning`` or ``pytorch_lightning``, except the files of LIGHTNING_FILES (which these units may not import
either, so Lightning does not come in through them).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

ROOT = "argen/__init__"  # the unit of argen/__init__.py
ROWS: dict[str, int] = {
    "cli": 8,
    ROOT: 7,
    "training": 6, "eval": 6,
    "pipeline": 5,
    "io": 4, "data": 4,
    "samplers": 3,
    "generators": 2,
    "nn": 1,
    "core": 0, "_version": 0,
}
SEPARATE = "tokenizers_vq"  # below every row of argen; never imports argen

LIGHTNING = ("lightning", "pytorch_lightning")
LIGHTNING_FREE = ("core", "nn", "generators", "samplers", "io", "data", SEPARATE)
# file -> why it may import Lightning although its unit is Lightning-free
LIGHTNING_FILES: dict[str, str] = {
    "argen/data/module.py": "the LightningDataModule that training builds from configs/data (_target_)",
}


@dataclass(frozen=True)
class Import:
    """One imported module, absolute (``from argen import io`` is ``argen.io``), at ``path:line``."""

    path: Path
    line: int
    module: str

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of this repository (not a name defined in one)."""
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, text: str | None = None) -> list[Import]:
    """Every import statement of the file (or of ``text`` as if it were that file), at any depth: functions,
    classes, ``if TYPE_CHECKING``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from argen import io` depends on argen.io, not on the root
                sub = f"{source}.{alias.name}"
                found.append(Import(path, node.lineno, sub if is_module(sub) else source))
    return list(dict.fromkeys(found))  # `from m import a, b` is one dependency


def unit(module: str) -> str | None:
    """The unit of a module of this repository; None for a third-party one."""
    parts = module.split(".")
    if parts[0] == SEPARATE:
        return SEPARATE
    if parts[0] != "argen":
        return None
    return parts[1] if len(parts) > 1 else ROOT


def files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py"))


def all_imports() -> list[tuple[str, Import]]:
    return [(unit(module_name(p)) or "", imp) for p in files("argen", SEPARATE) for imp in imports(p)]


def test_every_unit_has_a_row() -> None:
    on_disk = {unit(module_name(p)) for p in files("argen")}
    missing = sorted(u for u in on_disk if u not in ROWS)
    assert not missing, f"units without a row in tests/unit/test_layering.py ROWS: {missing}; place each in the table"


def test_tokenizers_vq_never_imports_argen() -> None:
    bad = [f"{imp.where()}: imports {imp.module}: rule (a) tokenizers_vq never imports argen"
           for src, imp in all_imports() if src == SEPARATE and unit(imp.module) not in (None, SEPARATE)]
    assert not bad, "\n".join(bad)


def layer_violation(src: str, imp: Import) -> str | None:
    dst = unit(imp.module)
    if src == SEPARATE or dst in (None, SEPARATE, src):
        return None
    if src not in ROWS or dst not in ROWS:
        return f"{imp.where()}: {src} imports {imp.module}: {src if src not in ROWS else dst} has no row in ROWS"
    if ROWS[dst] < ROWS[src]:
        return None
    how = "a peer in the same row" if ROWS[dst] == ROWS[src] else "a higher row"
    return (f"{imp.where()}: {src} (row {ROWS[src]}) imports {imp.module} from {dst} (row {ROWS[dst]}), "
            f"{how}: rule (b) a unit imports only from lower rows; move the shared piece down")


def test_imports_point_down_the_layers() -> None:
    bad = [msg for src, imp in all_imports() if (msg := layer_violation(src, imp))]
    assert not bad, "\n".join(bad)


def test_models_never_import_lightning() -> None:
    lightning_modules = {name.removesuffix(".py").replace("/", ".") for name in LIGHTNING_FILES}
    bad = []
    for src, imp in all_imports():
        if src not in LIGHTNING_FREE or str(imp.path.relative_to(REPO)) in LIGHTNING_FILES:
            continue
        if imp.module.split(".")[0] in LIGHTNING:
            bad.append(f"{imp.where()}: {src} imports {imp.module}: rule (c) models never import Lightning")
        elif imp.module in lightning_modules:
            bad.append(f"{imp.where()}: {src} imports {imp.module}, which imports Lightning: rule (c)")
    assert not bad, "\n".join(bad)


def test_lightning_exceptions_are_current() -> None:
    """Each named exception exists, lies in a Lightning-free unit and does import Lightning."""
    for name, why in LIGHTNING_FILES.items():
        path = REPO / name
        assert path.is_file(), f"LIGHTNING_FILES names {name} ({why}), which does not exist"
        assert unit(module_name(path)) in LIGHTNING_FREE, f"{name} needs no exception: its unit may use Lightning"
        assert any(i.module.split(".")[0] in LIGHTNING for i in imports(path)), f"{name} no longer imports Lightning"


def test_the_checker_sees_what_it_must() -> None:
    """The resolution the rules rely on: relative, lazy and `from package import module` imports."""
    probe = REPO / "argen" / "samplers" / "_probe.py"  # never written: its text is parsed as if it were there
    source = ("from ..cli import common\nfrom . import policy\n"
              "def f():\n    from argen import io, __version__\n    import lightning.pytorch\n")
    got = [(i.line, i.module) for i in imports(probe, source)]
    assert got == [(1, "argen.cli.common"), (2, "argen.samplers.policy"), (4, "argen.io"), (4, "argen"),
                   (5, "lightning.pytorch")]
    msg = layer_violation("samplers", Import(probe, 1, "argen.cli.common"))
    assert msg and "argen/samplers/_probe.py:1" in msg and "rule (b)" in msg
    assert layer_violation("samplers", Import(probe, 2, "argen.samplers.policy")) is None
    assert layer_violation("samplers", Import(probe, 3, "argen.core.state")) is None
    assert "has no row" in (layer_violation("samplers", Import(probe, 3, "argen.newthing")) or "")
