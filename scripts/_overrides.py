"""Command lines of the scripts that run argen-train configurations: ``script.py [options] -- overrides``."""

from __future__ import annotations

import argparse
import sys


def split(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the Hydra overrides after ``--``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc`` and whose epilog shows the rest."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                   usage="%(prog)s [options] -- argen-train overrides")
