"""Convert an official xAR checkpoint (OliverRensu/xAR: xAR-B.pth, xAR-L.pth, xAR-H.pth) into an argen export
folder (load it with argen.load; sample with argen-sample ... sampler=flow).

    python scripts/convert_xar.py --ckpt xAR-B.pth --out weights/xar_b [--tokenizer weights/kl16]
    python scripts/convert_xar.py --to-official weights/xar_b --out xar_b_back.pth   # the way back

The checkpoint is read with torch.load(weights_only=True); the width, depths, heads, grid, cells and classes
are inferred from the weights and the official buffers (mask, RoPE tables) are checked against argen's
(argen/io/xar.py). --tokenizer records the argen export of MAR's KL-16 tokenizer (scale factor 0.2325) in
meta.json, so argen-sample finds it. --to-official writes an argen export (cell entity, class-conditional)
as the official module's state dict (its keys, cell-order positions and recomputed buffers).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from argen.io.xar import convert_xar, export_to_xar


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="the official .pth (a raw state dict)")
    source.add_argument("--to-official", metavar="EXPORT", help="an argen xAR export to write in the official format")
    parser.add_argument("--out", required=True, help="the export folder (or, with --to-official, the .pth) to write")
    parser.add_argument("--tokenizer", default=None, help="argen export of the KL-16 tokenizer (recorded in meta.json)")
    parser.add_argument("--entry", default=None, help="the state dict's entry in the file, if nested")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.to_official:
        return export_to_xar(args.to_official, args.out, overwrite=args.overwrite)
    return convert_xar(args.ckpt, args.out, entry=args.entry, overwrite=args.overwrite, tokenizer=args.tokenizer)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
