"""Convert official NAR checkpoints (ThisisBillhe/NAR, ``NAR-images``) to argen export folders and back.

NAR's ``Transformer`` is LlamaGen's plus, for the vertical head, ``medusa_attention_num`` (1) more blocks
stored after the trunk as ``layers.{n_layer}``, ``medusa_norm`` and ``medusa_output``. argen's
:class:`~argen.generators.nar.NARGenerator` keeps these names, so the table is LlamaGen's
(:data:`argen.io.llamagen.GPT_KEY_MAP`, whose ``layers.{i}`` covers the extra block) plus the two head
entries, and the conversion is LlamaGen's path (:func:`argen.io.llamagen._gpt_conversion`) run with the
:data:`NAR` family. What the weights do not say: how many of the blocks belong to head B (1 in every
official model: ``medusa_layers``), the grid (unless ``freqs_cis`` is stored) and the head count of a
model off the presets. The presets are LlamaGen's and NAR's ``GPT-M`` (18 layers, dim 1024, 16 heads).

    from argen.io.nar import convert_nar, nar_from_state_dict
    convert_nar("nar_l.pt", "weights/nar_l", grid_size=16)    # -> argen.load("weights/nar_l")

or ``python scripts/convert_nar.py --ckpt nar_l.pt --out weights/nar_l --image-size 256``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from argen.io.keymap import KeyReport, unwrap_state_dict
from argen.io.llamagen import (
    GPT_KEY_MAP,
    GPT_PRESETS,
    GPTFamily,
    _gpt_conversion,
    argen_to_gpt,
    convert_gpt,
    gpt_to_argen,
    infer_gpt_config,
)

if TYPE_CHECKING:
    from argen.generators.nar import NARGenerator

NAR_KEY_MAP = {
    **GPT_KEY_MAP,
    # Head B ("below"): its blocks are layers.{n_layer} .. (covered by layers.{i} above), then its own
    # RMSNorm (eps 1e-5) and output (V, dim), no bias, not tied.
    "medusa_norm.weight": "medusa_norm.weight",
    "medusa_output.weight": "medusa_output.weight",
}
NAR_PRESETS = {**GPT_PRESETS, (18, 1024): ("GPT-M", 16)}  # NAR adds GPT-M to LlamaGen's presets


def nar_family(medusa_layers: int = 1) -> GPTFamily:
    """The NAR checkpoint family with ``medusa_layers`` blocks in head B (official: 1)."""
    return GPTFamily("NAR", NAR_KEY_MAP, "argen.generators.nar.NARGenerator", NAR_PRESETS,
                     extra_blocks=medusa_layers, defaults={"medusa_layers": medusa_layers},
                     required=("medusa_norm.weight", "medusa_output.weight"),
                     other="a LlamaGen GPT converts with argen.io.llamagen.convert_gpt / scripts/convert_llamagen.py")


NAR = nar_family()


def nar_to_argen(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None,
                 medusa_layers: int = 1) -> dict[str, Tensor]:
    """Official NAR state dict -> NARGenerator state dict (``freqs_cis`` and inference caches dropped)."""
    return gpt_to_argen(state, reports=reports, family=nar_family(medusa_layers))


def argen_to_nar(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None,
                 medusa_layers: int = 1) -> dict[str, Tensor]:
    """NARGenerator state dict -> official NAR ``Transformer`` state dict (a jointly trained argen text
    encoder is dropped with a warning: NAR reads T5 features)."""
    return argen_to_gpt(state, reports=reports, family=nar_family(medusa_layers))


def infer_nar_config(state: Mapping[str, Tensor], *, grid_size: int | None = None, n_head: int | None = None,
                     multiple_of: int = 256, text_encoder: str | None = None, medusa_layers: int = 1) -> dict[str, Any]:
    """The NARGenerator config node for ``state`` (official or argen names); see
    :func:`argen.io.llamagen.infer_gpt_config`. The trunk is every block of ``layers`` but the last
    ``medusa_layers``."""
    return infer_gpt_config(state, grid_size=grid_size, n_head=n_head, multiple_of=multiple_of,
                            text_encoder=text_encoder, family=nar_family(medusa_layers))


def nar_from_state_dict(state: Mapping[str, Any], *, grid_size: int | None = None, n_head: int | None = None,
                        multiple_of: int = 256, text_encoder: str | nn.Module | None = None, entry: str | None = None,
                        medusa_layers: int = 1) -> NARGenerator:
    """An official NAR state dict in memory -> a ready :class:`~argen.generators.nar.NARGenerator`
    (strict load, eval mode, CPU); arguments as :func:`convert_nar`."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    conversion = _gpt_conversion(raw, grid_size=grid_size, n_head=n_head, multiple_of=multiple_of,
                                 text_encoder=text_encoder, stand_in=False, source="the state dict",
                                 family=nar_family(medusa_layers))
    return cast("NARGenerator", conversion.module)


def convert_nar(path: str | Path, out_dir: str | Path, *, grid_size: int | None = None, n_head: int | None = None,
                multiple_of: int = 256, text_encoder: str | None = None, entry: str | None = None,
                overwrite: bool = False, medusa_layers: int = 1) -> Path:
    """Official NAR checkpoint -> argen export folder (``argen.load(out_dir)``). grid_size: image size / 16
    for LlamaGen's VQ-16 (16 at 256 px); t2i models need ``text_encoder`` (the local FLAN-T5-XL folder)."""
    return convert_gpt(path, out_dir, grid_size=grid_size, n_head=n_head, multiple_of=multiple_of,
                       text_encoder=text_encoder, entry=entry, overwrite=overwrite, family=nar_family(medusa_layers))
