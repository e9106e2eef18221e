"""Convert official NAR checkpoints (ThisisBillhe/NAR) into argen export folders (load them with argen.load).

    python scripts/convert_nar.py --ckpt nar_l.pt --out weights/nar_l --image-size 256
    python scripts/convert_nar.py --ckpt t2i_nar_xl.pt --out weights/nar_t2i_xl --image-size 256 \\
        --text-encoder ~/models/flan-t5-xl

The same as ``python scripts/convert_llamagen.py nar ...`` (NAR is a LlamaGen fork: the same flags, plus
--medusa-layers for head B's block count, 1 in every released model). The key table is argen/io/nar.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("convert_llamagen", Path(__file__).with_name("convert_llamagen.py"))
assert _spec is not None and _spec.loader is not None
convert_llamagen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_llamagen)


def main(argv: list[str] | None = None) -> Path:
    return convert_llamagen.main(["nar", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
