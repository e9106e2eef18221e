"""Convert official LlamaGen checkpoints into argen export folders (load them with argen.load).

    python scripts/convert_llamagen.py gpt --ckpt c2i_B_256.pt --out weights/gpt_b --image-size 256
    python scripts/convert_llamagen.py gpt --ckpt c2i_L_384.pt --out weights/gpt_l_384 --image-size 384
    python scripts/convert_llamagen.py gpt --ckpt old_c2i_with_freqs_cis.pt --out weights/gpt   # grid stored
    python scripts/convert_llamagen.py gpt --ckpt t2i_XL_stage1_256.pt --out weights/t2i_xl \\
        --image-size 256 --text-encoder ~/models/flan-t5-xl
    python scripts/convert_llamagen.py vq --ckpt vq_ds16_c2i.pt --out weights/vq16
    python scripts/convert_llamagen.py nar --ckpt nar_l.pt --out weights/nar_l --image-size 256   # NAR (LlamaGen fork)

The GPT's token grid is --image-size / --downsample (16 for the VQ-16 tokenizer), or --grid-size
directly. Checkpoints that store their 2D RoPE table (freqs_cis) carry the grid: then --image-size is
optional, and a value that contradicts the table is refused. The VQ's --image-size defaults to 256.
The key table and every deliberate difference from LlamaGen are documented in argen/io/llamagen.py
(argen/io/nar.py for NAR's second head; scripts/convert_nar.py is this script's `nar` command).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from argen.io.llamagen import convert_gpt, convert_vq
from argen.io.nar import convert_nar

log = logging.getLogger("convert_llamagen")


def _grid_size(args: argparse.Namespace) -> int | None:
    """The grid the flags ask for; None (neither flag): read from the checkpoint's freqs_cis."""
    if args.grid_size is not None:
        return int(args.grid_size)
    if args.image_size is None:
        return None
    if args.image_size % args.downsample:
        raise SystemExit(f"--image-size {args.image_size} is not a multiple of --downsample {args.downsample}")
    return args.image_size // args.downsample


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    for name, helptext in (("gpt", "a c2i/t2i GPT (autoregressive/models/gpt.py)"),
                           ("vq", "a VQ tokenizer (tokenizer/tokenizer_image/vq_model.py)"),
                           ("nar", "a NAR c2i/t2i GPT (ThisisBillhe/NAR, NAR-images/autoregressive/models/gpt.py)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--ckpt", type=Path, required=True, help="official .pt file")
        s.add_argument("--out", type=Path, required=True, help="export folder to write")
        s.add_argument("--image-size", type=int, default=None,
                       help="image side in pixels (vq: default 256; gpt: needed unless the checkpoint stores "
                            "freqs_cis, which holds the grid)")
        s.add_argument("--entry", default=None,
                       help="checkpoint entry holding the weights (default: model, module, state_dict, ema "
                            "or the file itself for --from-fsdp checkpoints); e.g. --entry ema")
        s.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    for gpt in (sub.choices["gpt"], sub.choices["nar"]):
        gpt.add_argument("--grid-size", type=int, default=None, help="tokens per side (overrides --image-size)")
        gpt.add_argument("--downsample", type=int, default=16, help="tokenizer downsampling factor (default 16)")
        gpt.add_argument("--n-head", type=int, default=None, help="head count, needed only off the official presets")
        gpt.add_argument("--multiple-of", type=int, default=256, help="SwiGLU hidden rounding (LlamaGen: 256)")
        gpt.add_argument("--text-encoder", default=None, help="t2i only: local FLAN-T5-XL folder")
    sub.choices["nar"].add_argument("--medusa-layers", type=int, default=1,
                                    help="blocks of the vertical head after the trunk (NAR's medusa_attention_num: 1)")
    sub.choices["vq"].add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups (LlamaGen: 32)")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kind == "gpt":
        out = convert_gpt(args.ckpt, args.out, grid_size=_grid_size(args), n_head=args.n_head,
                          multiple_of=args.multiple_of, text_encoder=args.text_encoder, entry=args.entry,
                          overwrite=args.overwrite)
    elif args.kind == "nar":
        out = convert_nar(args.ckpt, args.out, grid_size=_grid_size(args), n_head=args.n_head,
                          multiple_of=args.multiple_of, text_encoder=args.text_encoder, entry=args.entry,
                          overwrite=args.overwrite, medusa_layers=args.medusa_layers)
    else:
        image_size = 256 if args.image_size is None else args.image_size
        out = convert_vq(args.ckpt, args.out, image_size=image_size, norm_groups=args.norm_groups,
                         entry=args.entry, overwrite=args.overwrite)
    log.info("done: argen.load(%r)", str(out))
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
