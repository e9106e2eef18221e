"""Fill a generator stage's config from its inputs before anything is built.

The generator's vocabulary and grid come from the code cache's layout (never repeated by hand),
the cache must come from the configured tokenizer (sha256), and a word-level text encoder gets
its vocabulary from the training captions. Values already set in the config are checked, not
overwritten, so a mismatch fails early with a message naming both sides.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from argen.core.errors import ConfigError
from argen.core.protocols import bind, needs
from argen.data.codes import CodeDataset, check_manifest, read_manifest
from argen.nn.text import build_vocab
from tokenizers_vq.io import read_meta
from tokenizers_vq.layout import TokenLayout

log = logging.getLogger(__name__)


def _fill(node: DictConfig, key: str, value: Any, what: str) -> None:
    current = node.get(key)
    if current is None:
        node[key] = value
    elif current != value:
        raise ConfigError(f"{what}: generator.{key}={current} but {value} is required; remove the override "
                          f"(it is filled in from the code cache) or re-tokenize with a matching tokenizer")


def tokenizer_sha256(path: str | Path) -> str:
    folder = Path(str(path)).expanduser()
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"tokenizer_path '{folder}' is not an exported tokenizer (no meta.json); train and "
                                f"export one first (argen-train experiment=shapes_vq) or fix tokenizer_path=...")
    return str(read_meta(folder)["sha256"])


def export_config(path: str | Path) -> dict[str, Any]:
    """An export's resolved config (config.yaml): a tokenizer's, or the target generator of a drafter."""
    import yaml

    return yaml.safe_load((Path(str(path)).expanduser() / "config.yaml").read_text()) or {}


def attach_tokenizer(generator: Any, tokenizer_path: str | Path) -> None:
    """Give a generator that needs its tokenizer's steps (VAR's scale accumulation) the exported
    tokenizer at ``tokenizer_path``; other generators are left alone."""
    if "tokenizer" in needs(generator):
        import torch

        from tokenizers_vq.io import load_pretrained

        with torch.device("cpu"):  # real weights even when the generator is built on the meta device
            bind(generator, tokenizer=load_pretrained(tokenizer_path))


def prepare_generator_config(cfg: DictConfig) -> None:
    """Check tokenizer/cache/generator agreement and fill the generator's data-dependent sizes."""
    if not cfg.get("tokenizer_path") or not cfg.get("codes_dir"):
        raise ConfigError("stage=generator needs tokenizer_path=<exported tokenizer> and codes_dir=<code cache "
                          "made by argen-tokenize with that tokenizer>")
    sha = tokenizer_sha256(cfg.tokenizer_path)
    manifest = read_manifest(cfg.codes_dir)
    check_manifest(manifest, root=cfg.codes_dir, tokenizer_sha256=sha)
    layout = TokenLayout.from_dict(manifest["layout"])
    gen = cfg.generator
    with open_dict(cfg):
        cfg.tokenizer_sha256 = sha
        for split in ("train", "val", "test"):
            node = cfg.data.get(split)
            if node is not None and "tokenizer_sha256" in node:
                node.tokenizer_sha256 = sha
        for key, value in layout_sizes(gen, layout, cfg).items():
            what = SIZE_WORDS.get(key, key)
            _fill(gen, key, value, f"{what} mismatch with the code cache {cfg.codes_dir} and its tokenizer ({value})")
        _prepare_condition(gen.condition, cfg.codes_dir)


SIZE_WORDS = {"vocab_size": "vocabulary", "grid_size": "token grid", "sequence_length": "sequence length",
              "scales": "scale", "input_dim": "code width"}


def layout_sizes(gen: DictConfig, layout: TokenLayout, cfg: DictConfig) -> dict[str, Any]:
    """What the generator's class says a token layout fixes (``sizes_from_layout``: one hook per
    generator, no per-generator branches here); a layout it cannot model is a ConfigError."""
    from hydra.utils import get_class

    target = get_class(str(gen._target_))
    hook = getattr(target, "sizes_from_layout", None)
    if hook is None:
        raise ConfigError(f"{target.__name__} does not say which sizes a token layout fixes (sizes_from_layout); "
                          f"it cannot be trained on a code cache")
    try:
        return dict(hook(layout, export_config(cfg.tokenizer_path)))
    except ValueError as e:
        raise ConfigError(f"{e} ({cfg.codes_dir})") from e


def _prepare_condition(cond: DictConfig, codes_dir: str) -> None:
    encoder = cond.get("encoder")
    target = str(cond.get("_target_", ""))
    if encoder is not None and str(encoder.get("_target_", "")).endswith("WordTextEncoder") and not encoder.vocab:
        captions = CodeDataset(root=codes_dir, split="train").extras
        vocab = build_vocab(e.get("caption", "") for e in captions)
        if not vocab:
            raise ConfigError(f"the code cache {codes_dir} has no captions: use a class-conditional generator "
                              f"(generator/condition=class) or tokenize a captioned dataset")
        encoder.vocab = vocab
        log.info("word-level text encoder: %d words from %d training captions", len(vocab), len(captions))
    elif target.endswith("ClassEmbedder"):
        labels = CodeDataset(root=codes_dir, split="train").labels
        if int(labels.max()) >= int(cond.num_classes):
            raise ConfigError(f"the code cache has class ids up to {int(labels.max())} but "
                              f"generator.condition.num_classes={cond.num_classes}")
        if int(labels.min()) < 0:
            raise ConfigError(f"the code cache {codes_dir} has no class labels (ids < 0): use a text-conditional "
                              f"generator (generator/condition=words)")


# the target's settings an EAGLE drafter must share (its layer, rotary table and head are the target's)
DRAFTER_SHARED_KEYS = ("vocab_size", "dim", "n_head", "grid_size", "sequence_length", "multiple_of",
                       "ffn_dim_multiplier", "norm_eps", "rope_base")


def prepare_drafter_config(cfg: DictConfig) -> None:
    """A drafter stage (``target_path`` set): the drafter's sizes come from the exported target, the
    code cache must hold the target's tokenizer's codes, and the tokenizer is the target's."""
    target_dir = Path(str(cfg.target_path)).expanduser()
    if not (target_dir / "meta.json").is_file():
        raise ConfigError(f"target_path '{target_dir}' is not an exported generator (no meta.json); train and "
                          f"export the target first (argen-train experiment=shapes_raster)")
    meta = read_meta(target_dir)
    if meta.get("kind") != "generator":
        raise ConfigError(f"target_path '{target_dir}' is an exported {meta.get('kind')}, not a generator")
    recorded = meta.get("tokenizer") or {}
    if not cfg.get("codes_dir"):
        raise ConfigError("a drafter trains on a code cache: set codes_dir=<self-distilled codes from argen-distill>")
    manifest = read_manifest(cfg.codes_dir)
    check_manifest(manifest, root=cfg.codes_dir, tokenizer_sha256=recorded.get("sha256"))
    target_cfg = export_config(target_dir)  # the export's resolved config.yaml
    gen = cfg.generator
    with open_dict(cfg):
        cfg.tokenizer_path = cfg.get("tokenizer_path") or recorded.get("path")
        cfg.tokenizer_sha256 = recorded.get("sha256")
        cfg.target_sha256 = meta.get("sha256")
        for split in ("train", "val", "test"):
            node = cfg.data.get(split)
            if node is not None and "tokenizer_sha256" in node:
                node.tokenizer_sha256 = recorded.get("sha256")
        for key in DRAFTER_SHARED_KEYS:
            if target_cfg.get(key) is not None:
                _fill(gen, key, target_cfg[key], f"the drafter must match its target {target_dir}")
        if gen.get("condition_dropout") is None:  # train the null-condition features CFG needs as often
            dropout = (target_cfg.get("condition") or {}).get("dropout")
            gen.condition_dropout = 0.1 if dropout is None else dropout


def attach_target(drafter: Any, target_path: str | Path) -> None:
    """Load the exported target generator and attach it (frozen) to the drafter."""
    import torch

    from tokenizers_vq.io import load_pretrained

    with torch.device("cpu"):
        bind(drafter, target=load_pretrained(target_path))
