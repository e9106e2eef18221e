"""Convert a released FlexTok checkpoint (apple/ml-flextok, e.g. EPFL-VILAB/flextok_d12_d12_in1k's
model.safetensors, downloaded by you) into an argen tokenizer export, loadable with ``argen.load`` and usable by
``argen-tokenize`` / the generator stage like any tokenizer.

    python scripts/convert_flextok.py --ckpt flextok_d12_d12_in1k/model.safetensors --out weights/flextok_d12_d12
    python scripts/convert_flextok.py ... --steps 20 --guidance-scale 7.5 --guidance apg   # the README's decode

The config comes from the checkpoint's safetensors metadata (read, never instantiated); an unknown layout is
refused naming the module. The weights stay under the Apple ML Research Model license.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers_vq.flextok.official import load_official  # noqa: E402
from tokenizers_vq.io import save_pretrained  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="the official model.safetensors (or its folder)")
    p.add_argument("--out", type=Path, required=True, help="argen export folder to write")
    p.add_argument("--steps", type=int, default=25, help="default decoder Euler steps of the export")
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--guidance", choices=["cfg", "apg"], default="cfg")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    model = load_official(args.ckpt, decode_steps=args.steps, guidance_scale=args.guidance_scale,
                          guidance=args.guidance)
    out = save_pretrained(model, args.out, config=model.config_node(), overwrite=args.overwrite,
                          meta={"kind": "tokenizer", "image_size": model.image_size, "layout": model.layout.to_dict(),
                                "source": str(args.ckpt), "converted_from": "apple/ml-flextok"})
    print(json.dumps({"export": str(out), "registers": model.num_registers, "codebook": model.fsq.codebook_size,  # noqa: T201
                      "image_size": model.image_size}))
    return out


if __name__ == "__main__":
    main()
