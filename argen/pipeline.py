"""Library use: load an exported generator with the tokenizer its codes came from, sample images.

    from argen.pipeline import Pipeline
    pipe = Pipeline.from_export("outputs/quickstart/runs/shapes_raster/export")
    pipe(["a photo of a red circle", "a photo of two blue squares"], n=4, seed=0).grid().save("grid.png")

A request is a list of conditions (prompts for a text-conditional generator, class ids for a
class-conditional one) and ``n`` samples per condition: sample ``i`` has condition ``i // n`` and its
own seed ``sample_seeds(seed, [i])``, so an image depends on (models, sampler, seed, i) only, never on
the batch size or on which other indices are drawn with it. It is the image ``argen-sample`` writes
as ``images/<i>.png`` for the same settings, bit for bit (argen-sample is a layer over this module).

Nothing here picks a device or a dtype: both are arguments (default cpu / float32; ``device="auto"``
asks for cuda when available), and randomness comes from the seeds alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from argen.core.config import CONFIG_DIR, build, compose_config, pick_device, pick_dtype, target_class
from argen.core.errors import ConfigError
from argen.core import Condition, SampleResult, SamplingStats, bind, check_compatible, needs
from argen.data.base import tensor_to_uint8
from argen.samplers.common import OnFinish
from argen.samplers.random import decoder_seeds, sample_seeds
from tokenizers_vq.io import load_pretrained, read_meta

log = logging.getLogger("argen")

# (sample indices (R,), their images (R, H, W, 3) uint8): called as samples finish.
OnImages = Callable[[list[int], np.ndarray], None]


# ---- models -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportInfo:
    """Where the models came from: folders (None for a tokenizer given as a module) and their meta.json."""

    generator_path: str
    generator_meta: dict[str, Any]
    tokenizer_path: str | None
    tokenizer_meta: dict[str, Any]

    @property
    def generator_sha256(self) -> str | None:
        return self.generator_meta.get("sha256")

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.tokenizer_meta.get("sha256")


@dataclass(frozen=True)
class LoadedModels:
    generator: nn.Module
    tokenizer: nn.Module
    info: ExportInfo


def as_device(device: str | torch.device) -> torch.device:
    """A device by name (``cpu``, ``cuda``, ``cuda:1``; ``auto``: cuda when available, else cpu)."""
    return device if isinstance(device, torch.device) else pick_device(str(device))


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else pick_dtype(str(dtype))


def load_models(path: str | Path, *, tokenizer: str | Path | nn.Module | None = None,
                device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
                option: str = "tokenizer") -> LoadedModels:
    """The exported generator at ``path`` and its tokenizer: the one its meta.json records, or
    ``tokenizer`` (a folder, checked against the recorded sha256, or a module, whose weights cannot be,
    so only its layout is checked). ``option``: how the caller spells the override in its errors
    (argen-sample: ``tokenizer_path``). The generator is moved to ``device`` in ``dtype``; the
    tokenizer to ``device`` (float32)."""
    gen_dir = Path(path).expanduser()
    meta = read_meta(gen_dir)
    if meta.get("kind") not in (None, "generator"):
        raise ConfigError(f"{gen_dir} is an exported {meta.get('kind')}, not a generator")
    device, recorded = as_device(device), meta.get("tokenizer") or {}
    if isinstance(tokenizer, nn.Module):
        given = f"{option}=<a {type(tokenizer).__name__} module>"
        log.warning("%s: a module's weights cannot be checked against the sha256 %s/meta.json records (only its "
                    "layout and vocabulary are); pass its exported folder to have them checked", given, gen_dir)
        tok_dir, tok_meta, tok = None, {}, tokenizer
    else:
        tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else recorded_tokenizer(gen_dir, recorded,
                                                                                                   option)
        given = f"{option}={tok_dir}" if tokenizer is not None else f"the recorded tokenizer {tok_dir}"
        tok_meta = _tokenizer_meta(tok_dir, recorded, given, option if tokenizer is not None else None)
        tok = load_pretrained(tok_dir)
    generator = load_pretrained(gen_dir).to(device=device, dtype=as_dtype(dtype)).eval()
    tok = tok.to(device).eval()
    try:
        check_vocabulary(tok, generator)
    except ValueError as e:
        raise ConfigError(f"{given}: {e}") from e
    return LoadedModels(generator, tok, ExportInfo(str(gen_dir), meta, None if tok_dir is None else str(tok_dir),
                                                   tok_meta))


def recorded_tokenizer(gen_dir: Path, recorded: dict[str, Any], option: str = "tokenizer") -> Path:
    """The tokenizer folder ``gen_dir/meta.json`` records (absolute path, else relative to the export)."""
    from argen.io.export import resolve_record

    if not recorded.get("path"):
        raise ConfigError(f"{gen_dir}/meta.json records no tokenizer; pass {option}=<exported tokenizer>")
    found = resolve_record(gen_dir, recorded)
    if found is None:
        sha = str(recorded.get("sha256") or "")[:12]
        raise ConfigError(f"the tokenizer recorded in {gen_dir}/meta.json ({recorded['path']}, sha256 {sha}…) is "
                          f"not there (no meta.json); pass {option}=<the exported tokenizer folder>")
    return found


def _tokenizer_meta(tok_dir: Path, recorded: dict[str, Any], named: str, option: str | None) -> dict[str, Any]:
    """meta.json of the tokenizer folder (``named`` so in errors), refused when it is not the tokenizer the
    generator recorded. ``option``: the override's name when the caller chose the folder (None: recorded)."""
    try:
        tok_meta = read_meta(tok_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{named} is not an exported tokenizer: {e}") from e
    if tok_meta.get("kind") not in (None, "tokenizer"):
        raise ConfigError(f"{named} is an exported {tok_meta.get('kind')}, not a tokenizer")
    want = recorded.get("sha256")
    if want and tok_meta.get("sha256") != want:
        fix = f"pass {option}=<the tokenizer it was trained with>" if option else "restore that folder"
        raise ConfigError(f"{named} (sha256 {str(tok_meta.get('sha256'))[:12]}…) is not the one the generator "
                          f"was trained with ({want[:12]}…, {recorded.get('path')}); its codes would decode to "
                          f"garbage: {fix}")
    return tok_meta


def check_vocabulary(tokenizer: Any, generator: Any) -> None:
    """The generator predicts codes of exactly this tokenizer's layout and vocabulary."""
    t, g = tokenizer.layout, generator.layout
    if t.vocab_size != g.vocab_size:
        raise ValueError(f"vocabulary mismatch: the tokenizer has {t.vocab_size} codes, the generator predicts "
                         f"{g.vocab_size}; use the tokenizer the generator was trained with")
    if t.channels != g.channels:
        raise ValueError(f"latent mismatch: the tokenizer's latents have {t.channels} channels, the generator "
                         f"predicts {g.channels}; use the tokenizer the generator was trained with")
    if not g.decodes_as(t):
        raise ValueError(f"layout mismatch: the tokenizer makes {t.kind} {list(t.shapes)} tokens, the generator "
                         f"{g.kind} {list(g.shapes)}")


def bind_tokenizer(generator: Any, tokenizer: Any) -> None:
    """Hand the tokenizer to a generator that declares it needs it (VAR's next-scale accumulate step)."""
    if "tokenizer" in needs(generator):
        bind(generator, tokenizer=tokenizer)


# ---- samplers ---------------------------------------------------------------------------------
SamplerSpec = str | Mapping[str, Any] | DictConfig | Any  # a name, a config node, or a sampler


def sampler_names() -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "sampler").glob("*.yaml"))


def sampler_config(name: str, **options: Any) -> DictConfig:
    """``configs/sampler/<name>.yaml`` as argen-sample composes it (defaults and interpolations
    resolved), with ``options`` (e.g. ``cfg_scale=3.0``) set over it."""
    if name not in sampler_names():
        raise ConfigError(f"unknown sampler {name!r} (available: {', '.join(sampler_names())})")
    cfg = compose_config("sample", [f"sampler={name}"])
    node = OmegaConf.create(OmegaConf.to_container(cfg.sampler, resolve=True))
    return OmegaConf.merge(node, options) if options else node


def build_sampler(spec: SamplerSpec, generator: Any, *, tokenizer: Any = None, info: ExportInfo | None = None,
                  **options: Any) -> Any:
    """A sampler for ``generator`` from a name (``configs/sampler/<name>.yaml`` + ``options``), a config
    node with ``_target_`` (+ ``options``) or a sampler object; checked against the generator (before
    it is built, so an illegal pair is named before a drafter is loaded), its drafter against the
    generator's sha256 (``info``), and bound to ``tokenizer`` (LANTERN's codebook proximity)."""
    if isinstance(spec, str):
        spec = sampler_config(spec, **options)
    elif isinstance(spec, (Mapping, DictConfig)):
        spec = OmegaConf.merge(spec, options) if options else spec
    elif options:
        raise TypeError(f"options {sorted(options)} go with a sampler name or config, not a built sampler")
    if isinstance(spec, (Mapping, DictConfig)):
        sampler_class = target_class(spec, "sampler")
        if hasattr(sampler_class, "requires"):  # before the sampler loads what it needs (a drafter)
            check_compatible(sampler_class, generator)
        spec = build(spec, "sampler")
    sampler = spec
    check_compatible(sampler, generator)
    _check_drafter(sampler, info)
    if "tokenizer" in needs(sampler):  # LANTERN's latent proximity comes from the codebook
        bind(sampler, tokenizer=tokenizer)
    return sampler


def _check_drafter(sampler: Any, info: ExportInfo | None) -> None:
    drafted_for = getattr(sampler, "target_sha256", None)  # a drafter is trained for one generator
    if info is None or not drafted_for or drafted_for == info.generator_sha256:
        return
    raise ConfigError(f"the sampler's drafter was trained for generator {drafted_for[:12]}…, not "
                      f"{info.generator_path} ({str(info.generator_sha256)[:12]}…); train a drafter for this "
                      f"generator (argen-train experiment=shapes_raster_drafter target_path=...)")


# ---- conditions -------------------------------------------------------------------------------
@dataclass
class Conditions:
    """One entry per condition: class id or prompt, and GenEval metadata when known."""

    labels: list[int] | None
    texts: list[str] | None
    metadata: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.labels if self.labels is not None else self.texts or [])

    def __getitem__(self, k: int) -> int | str:
        return self.labels[k] if self.labels is not None else (self.texts or [])[k]

    def batch(self, ids: list[int], device: torch.device) -> Condition:
        if self.labels is not None:
            return Condition(labels=torch.tensor([self.labels[i] for i in ids], device=device))
        assert self.texts is not None
        texts = [self.texts[i] for i in ids]
        empty = torch.tensor([not t.strip() for t in texts], device=device)  # the null condition
        return Condition(texts=texts, null=empty if bool(empty.any()) else None)

    def fingerprint(self) -> dict[str, Any]:
        """Kind, count and sha256 of the conditions (ids or prompts, with their metadata)."""
        data = json.dumps([self.labels, self.texts, self.metadata], sort_keys=True, default=str)
        return {"kind": "classes" if self.labels is not None else "prompts", "count": len(self),
                "sha256": hashlib.sha256(data.encode("utf-8")).hexdigest()}


ConditionsLike = Conditions | str | int | Sequence[str] | Sequence[int] | torch.Tensor | np.ndarray


def conditions_for(generator: Any, given: ConditionsLike) -> Conditions:
    """Prompts (str) for a text-conditional generator, class ids (int) for a class-conditional one;
    anything else is refused, naming what the generator takes."""
    if isinstance(given, Conditions):
        conds = given
    else:
        items = given.tolist() if isinstance(given, (torch.Tensor, np.ndarray)) else (
            [given] if isinstance(given, (str, Integral)) else list(given))
        if not items:
            raise ValueError("no conditions given: pass at least one prompt or class id")
        if all(isinstance(x, str) for x in items):
            conds = Conditions(labels=None, texts=[str(x) for x in items])
            warn_empty_prompts(conds.texts or [])
        elif all(isinstance(x, Integral) and not isinstance(x, bool) for x in items):
            conds = Conditions(labels=[int(x) for x in items], texts=None)
        else:
            raise TypeError(f"conditions are prompts (str) or class ids (int), one kind per request; got "
                            f"{[type(x).__name__ for x in items][:4]}")
    num_classes = getattr(generator, "num_classes", None)
    if conds.labels is not None and num_classes is None:
        raise ValueError("the generator is text-conditional: pass prompts (str), not class ids")
    if conds.texts is not None and num_classes is not None:
        raise ValueError(f"the generator is class-conditional ({num_classes} classes): pass class ids "
                         f"0..{num_classes - 1}, not prompts")
    if conds.labels is not None:
        check_class_ids(conds.labels, num_classes)
    return conds


def check_class_ids(ids: Sequence[int], num_classes: int) -> None:
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class id {bad[0]} is out of range: the generator has {num_classes} classes "
                         f"(ids 0..{num_classes - 1})")


def warn_empty_prompts(prompts: Sequence[str]) -> None:
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        log.warning("prompt(s) %s of %d are empty: an empty caption is the unconditional (null) condition, so "
                    "these samples ignore any prompt (and guidance has no effect on them)",
                    ", ".join(str(i) for i in empty), len(prompts))


# ---- images -----------------------------------------------------------------------------------
@torch.no_grad()
def decode(tokenizer: Any, tokens: torch.Tensor, chunk: int, seeds: torch.Tensor | None = None) -> np.ndarray:
    """Tokens -> uint8 images (B, H, W, 3), ``chunk`` at a time (1: bit-identical whatever the sampling
    batch, since convolution kernels may pick different algorithms for different batch sizes). ``seeds``
    (B,): per-sample seeds for a stochastic decoder (the protocol's ``decode(tokens, seeds)``)."""
    size = max(chunk, 1)
    rows = tokens.split(size)
    row_seeds = [None] * len(rows) if seeds is None else list(seeds.split(size))
    parts = [tokenizer.decode(t, seeds=s).float().cpu() for t, s in zip(rows, row_seeds)]
    return tensor_to_uint8(torch.cat(parts))


def grid_image(images: np.ndarray, per_row: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (H', W', 3) grid, ``per_row`` images a row when 2..16 (one condition's
    samples), else a square; 2 px white gaps (argen-sample's grid.png)."""
    from torchvision.utils import make_grid

    nrow = per_row if 1 < per_row <= 16 else int(np.ceil(np.sqrt(len(images))))
    grid = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


# ---- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleStats:
    """images drawn; sampling: the sampler's own counts (generator passes, tokens decided, row passes);
    sampler_seconds: time in the sampler, decoding and ``on_images`` excluded; seconds: the whole call."""

    images: int = 0
    sampling: SamplingStats = field(default_factory=SamplingStats)
    sampler_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def row_passes(self) -> float:
        """Generator passes summed over the rows they served (a pass serves every row in flight)."""
        return float(self.sampling.extra.get("row_passes", self.sampling.forward_passes))

    @property
    def forward_passes_per_image(self) -> float:
        return self.row_passes / max(self.images, 1)

    @property
    def bounds(self) -> dict[str, float]:
        """Sampler-specific bounds (``max_*``, e.g. LANTERN's ``max_tvd``)."""
        return {k: float(v) for k, v in self.sampling.extra.items() if k.startswith("max_")}


@dataclass(frozen=True)
class Samples:
    """images: (N, H, W, 3) uint8; indices: each image's sample index (its seed is
    ``sample_seeds(seed, [index])``); conditions: each image's prompt or class id."""

    images: np.ndarray
    indices: list[int]
    conditions: list[int] | list[str]
    n_per_condition: int
    seed: int
    stats: SampleStats

    def __len__(self) -> int:
        return len(self.images)

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]

    def grid(self, per_row: int | None = None) -> Image.Image:
        """The images in one grid, a condition's samples a row (argen-sample's grid.png)."""
        return Image.fromarray(grid_image(self.images, per_row or self.n_per_condition))


# ---- the pipeline -----------------------------------------------------------------------------
class Pipeline:
    """A generator, the tokenizer its codes came from (bound to it where the generator needs it) and a
    sampler (a name from ``configs/sampler/``, a config node or a sampler; ``sampler_options`` set over a
    name or node). ``info``: where the models came from (:meth:`from_export` fills it). ``num_tokens``: a 1D
    sequence generator stops after that many tokens and the tokenizer decodes the prefix
    (:class:`~argen.generators.prefix.PrefixGenerator`; FlexTok)."""

    def __init__(self, generator: nn.Module, tokenizer: nn.Module, *, sampler: SamplerSpec = "ancestral",
                 sampler_options: Mapping[str, Any] | None = None, info: ExportInfo | None = None,
                 num_tokens: int | None = None) -> None:
        check_vocabulary(tokenizer, generator)
        bind_tokenizer(generator, tokenizer)
        if num_tokens is not None:
            from argen.generators.prefix import PrefixGenerator

            generator = PrefixGenerator(generator, int(num_tokens))  # type: ignore[assignment]
            check_vocabulary(tokenizer, generator)
        self.generator, self.tokenizer, self.info = generator, tokenizer, info
        self.sampler = build_sampler(sampler, generator, tokenizer=tokenizer, info=info, **dict(sampler_options or {}))

    @classmethod
    def from_export(cls, path: str | Path, *, tokenizer: str | Path | nn.Module | None = None,
                    sampler: SamplerSpec = "ancestral", sampler_options: Mapping[str, Any] | None = None,
                    device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32,
                    num_tokens: int | None = None) -> Pipeline:
        """Load the exported generator at ``path`` and its tokenizer (``tokenizer=``: another folder or
        module; a folder must have the sha256 the generator recorded); see :func:`load_models`."""
        models = load_models(path, tokenizer=tokenizer, device=device, dtype=dtype)
        return cls(models.generator, models.tokenizer, sampler=sampler, sampler_options=sampler_options,
                   info=models.info, num_tokens=num_tokens)

    def with_sampler(self, sampler: SamplerSpec, **options: Any) -> Pipeline:
        """The same models with another sampler, e.g. ``pipe.with_sampler("sjd", window=8)``."""
        other = copy.copy(self)
        other.sampler = build_sampler(sampler, self.generator, tokenizer=self.tokenizer, info=self.info, **options)
        return other

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def sample_tokens(self, conditions: ConditionsLike, *, n: int = 1, seed: int = 0,
                      indices: Sequence[int] | None = None, batch_size: int = 64,
                      on_finish: OnFinish | None = None) -> SampleResult:
        """The tokens (R, L) of sample ``indices`` (default all ``len(conditions) * n``) of the request, in
        that order and not decoded (argen-distill's self-distilled codes): sample ``i`` has condition
        ``i // n`` and seed ``sample_seeds(seed, [i])``, the tokens of the image :meth:`__call__` draws for
        it. At most ``batch_size`` rows at a time; ``on_finish(rows, tokens)``: the sampler's, ``rows``
        indexing ``indices``."""
        conds = conditions_for(self.generator, conditions)
        todo = _request_indices(len(conds), n, indices)
        device = self.device
        if not todo:
            return SampleResult(tokens=self.generator.layout.empty(0, device), stats=SamplingStats())
        return self.sampler.sample(self.generator, conds.batch([i // n for i in todo], device),
                                   seeds=sample_seeds(int(seed), todo).to(device), batch_size=int(batch_size),
                                   on_finish=on_finish)

    def stream(self, conditions: ConditionsLike, *, on_images: OnImages, n: int = 1, seed: int = 0,
               indices: Sequence[int] | None = None, batch_size: int = 64, decode_batch_size: int = 1) -> SampleStats:
        """Draw sample ``indices`` (default all ``len(conditions) * n``) of the request, at most
        ``batch_size`` rows at a time, and hand each to ``on_images(indices, images)`` as it finishes."""
        conds = conditions_for(self.generator, conditions)
        todo = _request_indices(len(conds), n, indices)
        if not todo:
            return SampleStats()
        outside = [0.0]  # seconds decoding and in on_images (not sampler time)

        def finished(rows: list[int], tokens: torch.Tensor) -> None:
            t0 = time.perf_counter()
            done = [todo[r] for r in rows]
            tokens = self.generator.layout.for_decoder(tokens, self.tokenizer.layout)  # a pyramid: its finest scale
            on_images(done, decode(self.tokenizer, tokens, decode_batch_size, decoder_seeds(int(seed), done)))
            outside[0] += time.perf_counter() - t0

        start = time.perf_counter()
        result = self.sample_tokens(conds, n=n, seed=seed, indices=todo, batch_size=batch_size, on_finish=finished)
        seconds = time.perf_counter() - start
        return SampleStats(images=len(todo), sampling=result.stats, sampler_seconds=seconds - outside[0],
                           seconds=seconds)

    def __call__(self, conditions: ConditionsLike, *, n: int = 1, seed: int = 0,
                 indices: Sequence[int] | None = None, batch_size: int = 64, decode_batch_size: int = 1) -> Samples:
        """Images for ``conditions`` (prompts or class ids), ``n`` each, sample ``i`` from its own seed
        ``sample_seeds(seed, [i])``; ``indices``: only these samples of the request, in this order."""
        conds = conditions_for(self.generator, conditions)
        drawn: dict[int, np.ndarray] = {}
        stats = self.stream(conds, n=n, seed=seed, indices=indices, batch_size=batch_size,
                            decode_batch_size=decode_batch_size, on_images=lambda ids, ims: drawn.update(zip(ids, ims)))
        order = _request_indices(len(conds), n, indices)
        images = np.stack([drawn[i] for i in order]) if order else np.zeros((0, 0, 0, 3), np.uint8)
        return Samples(images=images, indices=order, conditions=[conds[i // n] for i in order],  # type: ignore[misc]
                       n_per_condition=n, seed=int(seed), stats=stats)


def _request_indices(count: int, n: int, indices: Sequence[int] | None) -> list[int]:
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n (samples per condition) must be an integer >= 1, got {n!r}")
    total = count * int(n)
    todo = list(range(total)) if indices is None else [int(i) for i in indices]
    bad = [i for i in todo if not 0 <= i < total]
    if bad:
        raise ValueError(f"sample index {bad[0]} is out of range: {count} conditions x n={n} make samples "
                         f"0..{total - 1}")
    return todo


__all__ = ["Conditions", "ExportInfo", "LoadedModels", "Pipeline", "SampleStats", "Samples", "build_sampler",
           "check_vocabulary", "conditions_for", "decode", "grid_image", "load_models", "sampler_config"]
