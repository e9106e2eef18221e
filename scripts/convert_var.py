"""Convert official VAR checkpoints into argen export folders (load them with argen.load).

    python scripts/convert_var.py --kind vae --checkpoint vae_ch160v4096z32.pth --out weights/var_vae
    python scripts/convert_var.py --kind var --checkpoint var_d16.pth --out weights/var_d16 \\
        --tokenizer weights/var_vae --depth 16

The scales (VAR's patch_nums) are not stored in the weights: --scales defaults to VAR's 256 px
1,2,3,4,5,6,8,10,13,16 (or, for --kind var, the --tokenizer export's) and is checked against the
position table. --tokenizer records the converted VAE in the generator's meta.json, so argen-sample
attaches it. Shared-adaLN checkpoints (VAR-d36-s) are refused. The key table and every deliberate
difference from VAR are documented in argen/io/var.py.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from argen.io.var import VAR_SCALES, convert_vae, convert_var

log = logging.getLogger("convert_var")


def _scales(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--scales takes comma-separated integers, got {text!r}") from e
    if len(scales) < 2:
        raise argparse.ArgumentTypeError(f"--scales needs at least 2 sides, got {text!r}")
    return scales


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("vae", "var"), required=True,
                   help="vae: the VQVAE (models/vqvae.py); var: a VAR transformer (models/var.py)")
    p.add_argument("--checkpoint", type=Path, required=True, help="official .pth file")
    p.add_argument("--out", type=Path, required=True, help="export folder to write")
    p.add_argument("--scales", type=_scales, default=None,
                   help=f"token-map sides, coarse to fine (default {','.join(map(str, VAR_SCALES))}; "
                        f"--kind var: the --tokenizer's if given)")
    p.add_argument("--entry", default=None, help="checkpoint entry holding the weights (released files: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    var = p.add_argument_group("--kind var")
    var.add_argument("--depth", type=int, default=None, help="expected depth (16, 20, 24, 30), checked")
    var.add_argument("--n-head", type=int, default=None,
                     help="head count; stored in l2-norm checkpoints, else VAR's rule heads = depth")
    var.add_argument("--tokenizer", type=Path, default=None, help="the converted VAE export, recorded in meta.json")
    vae = p.add_argument_group("--kind vae")
    vae.add_argument("--image-size", type=int, default=None, help="default: last scale x 16")
    vae.add_argument("--phi-ratio", type=float, default=0.5, help="VAR's quant_resi (default 0.5)")
    vae.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups (VAR: 32)")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kind == "var":
        out = convert_var(args.checkpoint, args.out, scales=args.scales, n_head=args.n_head, depth=args.depth,
                          tokenizer=args.tokenizer, entry=args.entry, overwrite=args.overwrite)
    else:
        out = convert_vae(args.checkpoint, args.out, scales=args.scales or VAR_SCALES, image_size=args.image_size,
                          phi_ratio=args.phi_ratio, norm_groups=args.norm_groups, entry=args.entry,
                          overwrite=args.overwrite)
    log.info("done: argen.load(%r)", str(out))
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
