"""Command lines of the scripts that run argen-train configurations: ``script.py [options] -- overrides``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def split(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the Hydra overrides after ``--``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser with ``--out`` (every such script's output folder), described by ``doc``'s first paragraph."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] -- argen-train overrides")
    p.add_argument("--out", type=Path, required=True, help="output folder (JSON + plot)")
    return p
