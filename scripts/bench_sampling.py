"""Sampling speed benchmark: images/s, tokens/s, KV-cache step cost and FLOP utilisation.

    python scripts/bench_sampling.py --out DIR [--device cpu|cuda] [--dtype fp32|bf16] [--quick]
                                     [--generators tiny,gpt_b,var] [--batches 1,8,64] [--threads N]

Writes ``DIR/sampling.json`` and ``DIR/sampling.png`` (and ``DIR/token_shuffle.png`` with Token-Shuffle runs). Models are randomly initialised from the
YAML presets in ``argen/configs/generator`` (weights do not change the speed; the zero-initialised
raster output head is re-drawn from N(0, 0.02) so sampling is not degenerate) and run in eval mode
under ``torch.inference_mode``. Generators (``--generators``):

- raster (next-token, :class:`RasterGenerator`): ``tiny`` = ``raster_tiny`` at 8x8 and 16x16
  tokens (``tiny8`` / ``tiny16`` pick one), vocabulary 1024, 10 classes; ``gpt_b`` = the LlamaGen
  GPT-B dimensions, 16x16 tokens, vocabulary 16384, 1000 classes.
- VAR (next-scale, :class:`VARGenerator`): ``var`` = ``var_tiny`` with scales 1,2,3,4,6,8
  (``var8``: 8x8 final map, 130 tokens in 6 scales) and with VAR's scales 1,2,3,4,5,6,8,10,13,16
  (``var16``: 16x16 final map, 680 tokens in 10 scales), vocabulary 1024, 10 classes;
  ``var_d16`` = the VAR-d16 dimensions (~310M parameters), VAR's 10 scales, 4096 codes, 1000
  classes (a GPU size: in the default set on CUDA only). VAR's accumulate step needs the
  tokenizer's scale-residual quantizer: a randomly initialised
  :class:`~tokenizers_vq.msvq.MultiScaleQuantizer` (code width 32) is attached.

- NAR (next-neighbour, :class:`NARGenerator`): ``nar`` = ``nar_tiny`` (raster_tiny's trunk plus head B)
  at 8x8 (``nar8``, 15 passes) and 16x16 (``nar16``, 31 passes), vocabulary 1024, 10 classes; ``nar_b`` =
  the NAR-B dimensions (GPT-B trunk + head B, ~131M parameters), 16x16, 16384 codes, 1000 classes. Records:
  ``generator: nar``, ``family: nar``, ``preset``, ``grid``; ``forward_passes_per_image`` = 2n - 1 (one pass
  decides an anti-diagonal) and ``speedup_vs_raster`` against ``raster_tiny`` / ``gpt_b`` at the same grid,
  exactly as for VAR.

- Token-Shuffle (:class:`TokenShuffleGenerator`): ``ts`` = ``token_shuffle_nano`` (raster_nano's trunk, s x s
  windows) with s = 1, 2, 4 at 16x16 tokens (``ts64``: 64 px images at f = 4) and 32x32 (``ts128``: 128 px),
  vocabulary 1024, 10 classes, against ``raster_nano`` at the same grids (``nano64``, ``nano128``, in the
  set). Records: ``generator: token_shuffle``, ``family: token_shuffle``, ``preset``, ``grid``, ``px``, the
  window ``s``, ``trunk_positions_per_image`` = L / s^2 (= ``forward_passes_per_image``: one pass decides a
  window) and ``speedup_vs_raster`` against ``raster_nano`` at the same grid. Token-Shuffle and its raster
  counterparts also get ``train_step_s``: the median seconds of one training step (forward, backward, AdamW)
  at batch ``--train-batch`` on random codes.

- xAR (next-X with flow matching, :class:`XARGenerator`): ``xar`` = ``xar_nano`` on an 8x8 latent grid with 4
  channels (the shapes_kl tokenizer's) for each entity: ``xar8_cell`` (2x2 cells of 4x4: 4 AR steps),
  ``xar8_subsample`` (stride 2: 4), ``xar8_scale`` (scales 1, 2, 4, 8: 4), ``xar8_image`` (1) and ``xar8_token``
  (64; not in ``xar``: slow); ``xar_b`` = the xAR-B dimensions (172M) at the official 16x16x16 latents, 2x2
  cells (a step-time record; batches 1 and 8 only on the CPU). Sampling is :class:`FlowSampler` (SDE,
  ``--flow-steps`` per entity, default 25). Records: ``generator: xar``, ``family: xar``, ``preset``,
  ``entity``, ``grid``, ``ar_steps``, ``flow_steps``, ``forward_passes_per_image`` = ar_steps x (flow_steps + 1)
  (each entity's integration plus the pass that commits it to the KV cache), ``step_ms`` (median wall time of
  one velocity pass of the first entity at that batch) and ``flops_per_image`` (model FLOPs of every pass:
  the entity's tokens through both stacks, attending over the condition and the entities up to it).

Default set: ``tiny,gpt_b,var,nar,nar_b`` (plus ``var_d16`` on CUDA); ``--quick``: ``tiny8,var8,nar8``.

Measures
- ``runs``: one record per (generator, sampler, batch, cfg_scale, device, dtype) with
  ``images_per_s`` and ``tokens_per_s`` of :class:`AncestralSampler` (median wall time of a few
  repeats after a warm-up), ``forward_passes_per_image`` (generator steps; one pass serves the
  whole batch), ``flops_per_image`` (sum over the decoding steps of ``flops_per_token(context)``,
  doubled under CFG) and ``achieved_gflops`` for that run. CFG (batch doubling) is also measured at
  one batch size. Raster records carry ``generator`` = the preset name and ``family: raster``.
- VAR ``runs`` records: ``generator: var``, ``family: var``, ``preset`` (``var_tiny``,
  ``var_d16``), ``grid`` (the final token map, e.g. ``8x8``) and ``scales``; the same throughput
  fields as raster, where ``forward_passes_per_image`` is the number of scales (one pass decides a
  whole scale), ``tokens_per_image`` / ``tokens_per_s`` count every token of the pyramid (130 for
  8x8, 680 for 16x16; the raster image of the same grid has 64 / 256) and ``flops_per_image`` =
  ``flops_per_token()`` x tokens (doubled under CFG); ``speedup_vs_raster`` = images/s of this
  run / images/s of the raster counterpart with the same final grid (``raster_tiny`` for
  ``var_tiny``, ``gpt_b`` for ``var_d16``) at the same sampler, batch, cfg, device, dtype and CPU
  threads (``raster_images_per_s`` keeps that figure). It is computed after the runs over the
  merged records, so a raster run from an earlier invocation in the same ``sampling.json``
  counts; without one it is null and ``notes`` says so. CFG runs use the constant schedule for
  both families (VAR's linear ramp costs the same).
- ``kv_step_cost_ratio``: median time of the last decoding step / median time of step 16 of a
  manual ``start``/``step`` loop of the largest raster generator (GPT-B dimensions, batch 8;
  not measured, and kept from a merged file, when no raster generator is selected); the KV cache
  is preallocated, so this stays near 1 (requirement: <= 1.5). ``kv_step_probe`` keeps the whole per-step time curve.
- ``matmul_peak_gflops``: best dense square-matmul throughput measured here in the chosen dtype;
  ``achieved_gflops``: model FLOPs x images / wall time of batch-64 GPT-B sampling (else the
  largest raster run, said in ``notes``); ``flop_utilization`` = achieved / peak (target >= 0.4).

On a CPU shared with other busy processes, pass ``--threads 1``: multi-threaded kernels stall on
their thread barriers there (GPT-B steps ran ~14x slower with 2 threads than with 1 on a loaded
2-core machine). A high load average before the run is written to ``notes``.

An existing ``sampling.json`` is merged: records with the same identity (:data:`IDENTITY_KEYS`,
sampler-specific keys included; ``preset`` and ``scales`` keep VAR shapes apart) are replaced, other
records are kept, top-level figures updated; ``speedup_vs_raster`` is then recomputed for every VAR
record.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from argen.cli.common import CONFIG_DIR, build  # noqa: E402
from argen.core import Condition  # noqa: E402
from argen.generators.nar import NARGenerator  # noqa: E402
from argen.generators.xar import XARGenerator  # noqa: E402
from argen.generators.token_shuffle import TokenShuffleGenerator  # noqa: E402
from argen.generators.raster import RasterGenerator  # noqa: E402
from argen.samplers.ancestral import AncestralSampler  # noqa: E402
from argen.samplers.flow import FlowSampler  # noqa: E402
from argen.samplers.random import RowRandom, sample_seeds  # noqa: E402
from tokenizers_vq.msvq import MultiScaleQuantizer  # noqa: E402

log = logging.getLogger("argen.bench")

# A record's identity for merging: records agreeing on all of these (missing = None) replace each
# other. Later samplers add their own knobs here (window, k, delta, ...).
IDENTITY_KEYS = ("generator", "family", "preset", "scales", "tokens_per_image", "sampler", "batch", "device",
                 "dtype", "cfg_scale", "window", "k", "delta", "draft", "num_steps", "drafter", "s", "entity",
                 "flow_steps")
# A VAR run and its raster counterpart agree on these (besides the final grid) for speedup_vs_raster.
MATCH_KEYS = ("sampler", "batch", "device", "dtype", "cfg_scale", "cfg_schedule", "window", "k", "delta", "draft",
              "num_steps", "threads")
# VAR preset -> the raster preset of the same model class it is compared with (same final grid).
RASTER_COUNTERPART = {"var_tiny": "raster_tiny", "var_d16": "gpt_b", "nar_tiny": "raster_tiny", "nar_b": "gpt_b",
                      "token_shuffle_nano": "raster_nano"}
PARALLEL = ("var", "nar", "token_shuffle")  # the families compared with their raster counterpart
VAR_SCALES = {8: (1, 2, 3, 4, 6, 8), 16: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}  # 16: VAR's 256 px scales
VAR_CODE_DIM = 32  # VAR's Cvae: width of the quantizer's codes fed to word_embed
REF_STEP = 16  # kv_step_cost_ratio = t(last step) / t(step REF_STEP)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Spec:
    """One benchmarked generator: a YAML preset with its layout and condition sizes. grid: side of
    the (final) token map; family: raster | var; scales: VAR's token-map sides, coarse to fine."""

    name: str
    preset: str
    grid: int
    vocab: int
    classes: int
    family: str = "raster"
    scales: tuple[int, ...] = ()
    window: int = 0  # Token-Shuffle's s
    entity: str = ""  # xAR's entity kind
    channels: int = 0  # xAR's latent channels

    @property
    def trains(self) -> bool:
        """Whether the run also times a training step (Token-Shuffle and its raster counterparts)."""
        return self.family == "token_shuffle" or self.preset == "raster_nano"


SPECS: dict[str, tuple[Spec, ...]] = {
    "tiny8": (Spec("tiny8", "raster_tiny", 8, 1024, 10),),
    "tiny16": (Spec("tiny16", "raster_tiny", 16, 1024, 10),),
    "gpt_b": (Spec("gpt_b", "gpt_b", 16, 16384, 1000),),
    "var8": (Spec("var8", "var_tiny", 8, 1024, 10, "var", VAR_SCALES[8]),),
    "var16": (Spec("var16", "var_tiny", 16, 1024, 10, "var", VAR_SCALES[16]),),
    "var_d16": (Spec("var_d16", "var_d16", 16, 4096, 1000, "var", VAR_SCALES[16]),),
    "nar8": (Spec("nar8", "nar_tiny", 8, 1024, 10, "nar"),),
    "nar16": (Spec("nar16", "nar_tiny", 16, 1024, 10, "nar"),),
    "nar_b": (Spec("nar_b", "nar_b", 16, 16384, 1000, "nar"),),
    "xar_b": (Spec("xar_b", "xar_b", 16, 0, 1000, "xar", entity="cell", channels=16),),
}
for _entity in ("cell", "subsample", "scale", "image", "token"):
    SPECS[f"xar8_{_entity}"] = (Spec(f"xar8_{_entity}", "xar_nano", 8, 0, 10, "xar", entity=_entity, channels=4),)
SPECS["xar"] = tuple(SPECS[f"xar8_{e}"][0] for e in ("cell", "subsample", "scale", "image"))
for _grid, _px in ((16, 64), (32, 128)):
    SPECS[f"nano{_px}"] = (Spec(f"nano{_px}", "raster_nano", _grid, 1024, 10),)
    for _s in (1, 2, 4):
        SPECS[f"ts{_px}_s{_s}"] = (Spec(f"ts{_px}_s{_s}", "token_shuffle_nano", _grid, 1024, 10, "token_shuffle",
                                        window=_s),)
    SPECS[f"ts{_px}"] = SPECS[f"nano{_px}"] + tuple(SPECS[f"ts{_px}_s{_s}"][0] for _s in (1, 2, 4))
SPECS["ts"] = SPECS["ts64"] + SPECS["ts128"]
SPECS["tiny"] = SPECS["tiny8"] + SPECS["tiny16"]
SPECS["var"] = SPECS["var8"] + SPECS["var16"]
SPECS["nar"] = SPECS["nar8"] + SPECS["nar16"]


@dataclass(frozen=True)
class Settings:
    """How hard to measure: repeats and per-run time budget (seconds), probe sizes."""

    device: torch.device
    dtype_name: str
    repeats: int
    run_budget_s: float
    kv_repeats: int
    kv_batch: int
    matmul_sizes: tuple[int, ...]
    matmul_budget_s: float
    cfg_scale: float
    cfg_batch: int
    train_batch: int = 32
    flow_steps: int = 25

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]


# ---- building --------------------------------------------------------------------------------
def compose_generator(preset: str, overrides: Sequence[str]) -> Any:
    """The ``generator`` node of ``argen/configs/generator/<preset>.yaml`` (defaults resolved) with overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=f"generator/{preset}", overrides=[f"generator.{o}" for o in overrides])
    return cfg.generator


def build_generator(spec: Spec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A randomly initialised generator in eval mode. Raster: output head re-drawn from N(0, 0.02).
    VAR: its own (non-zero) init, with a random scale-residual quantizer attached (fp32, as the
    tokenizer's accumulate step runs in fp32 whatever the generator's dtype)."""
    if spec.family == "xar":  # its own init (xavier linears, N(0, 0.02) positions): not degenerate
        node = compose_generator(spec.preset, [f"grid_size={spec.grid}", f"channels={spec.channels}",
                                               f"entity={spec.entity}", f"condition.num_classes={spec.classes}"])
        return build(node, "generator").to(device=device, dtype=dtype).eval()
    if spec.family == "var":
        scales = ",".join(str(s) for s in spec.scales)
        node = compose_generator(spec.preset, [f"vocab_size={spec.vocab}", f"scales=[{scales}]",
                                               f"input_dim={VAR_CODE_DIM}", f"condition.num_classes={spec.classes}"])
        gen = build(node, "generator")
        quantizer = MultiScaleQuantizer(codebook_size=spec.vocab, embed_dim=VAR_CODE_DIM, scales=spec.scales)
        gen.attach_tokenizer(quantizer.to(device).eval())
        return gen.to(device=device, dtype=dtype).eval()
    extra = [f"window={spec.window}"] if spec.family == "token_shuffle" else []
    node = compose_generator(spec.preset, [f"vocab_size={spec.vocab}", f"grid_size={spec.grid}",
                                           f"condition.num_classes={spec.classes}", *extra])
    gen = build(node, "generator")
    nn.init.normal_(gen.output.weight, std=0.02)  # NAR's medusa_output is drawn from N(0, 0.02) already
    return gen.to(device=device, dtype=dtype).eval()


def flops_per_image(gen: nn.Module) -> float:
    """Model FLOPs to decode one image. Raster: step k attends over prefix + k slots. VAR: its
    average per-token FLOPs (block-causal attention over the visible scales) x pyramid tokens. NAR: each
    position attends over the condition and every position of its and earlier anti-diagonals."""
    if isinstance(gen, RasterGenerator):
        return sum(gen.flops_per_token(context=gen.prefix_len + k) for k in range(gen.seq_len))
    if isinstance(gen, TokenShuffleGenerator):  # window k attends over prefix + k slots, shared by its s^2 tokens
        return sum(gen.flops_per_token(context=gen.prefix_len + k) * gen.tokens_per_slot
                   for k in range(gen.num_windows))
    if isinstance(gen, NARGenerator):
        levels = gen.levels[gen.prefix_len:]
        return sum(gen.flops_per_token(context=gen.prefix_len + int((levels <= lv).sum())) for lv in levels)
    return gen.flops_per_token() * gen.layout.length  # type: ignore[operator]


def xar_flops_per_image(gen: XARGenerator, passes_per_entity: int) -> float:
    """Model FLOPs of ``passes_per_entity`` passes per entity: each of the entity's tokens through both stacks
    (2 x the block weights, the input and output projections) plus attention over the condition prefix and
    every token up to its entity (QK^T and AV: 4 x width x context per layer)."""
    def weights(blocks: nn.ModuleList) -> int:
        return sum(p.numel() for b in blocks for n, p in b.named_parameters() if "ada_lin" not in n and p.dim() > 1)

    enc, dec = gen.encoder_blocks, gen.decoder_blocks
    per_token = 2 * (weights(enc) + weights(dec) + gen.z_proj.weight.numel() + gen.decoder_embed.weight.numel()
                     + gen.pred.weight.numel())
    entity = gen.partition.entity
    total = 0.0
    for e in range(gen.num_entities):
        n, context = int((entity == e).sum()), gen.prefix_len + int((entity <= e).sum())
        attention = 4 * context * (gen.dim * len(enc) + gen.decoder_dim * len(dec))
        total += passes_per_entity * n * (per_token + attention)
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(spec: Spec, batch: int, device: torch.device) -> tuple[Condition, Tensor]:
    """Class labels cycling over the classes, and the per-row seeds argen-sample would use."""
    labels = torch.arange(batch, device=device) % spec.classes
    return Condition(labels=labels), sample_seeds(0, range(batch))


# ---- sampling runs -------------------------------------------------------------------------------
def warm_up(gen: nn.Module, sampler: AncestralSampler, cond: Condition, seeds: Tensor, steps: int = 8) -> None:
    """A few decoding steps with the sampler's guidance and logits processing, at the run's shapes
    (for VAR: the first ``steps`` scales, fed zero codes)."""
    device = next(gen.parameters()).device
    policy = sampler.policy
    policy.begin(gen)
    state = gen.start(policy.conditions(gen, cond))
    rng, plan, prev = RowRandom(seeds), gen.plan(), torch.zeros(0, dtype=torch.long)
    for group in plan[:steps]:
        feed = torch.zeros(state.batch_size, len(prev), dtype=torch.long, device=device)
        out = gen.step(state, feed, prev, group)
        rng.categorical(policy.probs(out.logits, group))
        prev = group
    sync(device)


def time_sampling(gen: nn.Module, sampler: AncestralSampler, cond: Condition, seeds: Tensor,
                  settings: Settings) -> tuple[list[float], int, Tensor]:
    """Wall times of repeated full sampling runs (at least one; stop at the repeat count or budget),
    forward passes per run and the last run's tokens."""
    walls: list[float] = []
    passes = 0
    tokens = torch.zeros(0, dtype=torch.long)
    t_end = time.perf_counter() + settings.run_budget_s
    while len(walls) < settings.repeats and (not walls or time.perf_counter() < t_end):
        sync(settings.device)
        t0 = time.perf_counter()
        result = sampler.sample(gen, cond, seeds=seeds)
        sync(settings.device)
        walls.append(time.perf_counter() - t0)
        passes, tokens = result.stats.forward_passes, result.tokens
    return walls, passes, tokens


def check_not_degenerate(spec: Spec, tokens: Tensor) -> None:
    """Warn when a sampled image uses a single code (a degenerate head would make timings moot)."""
    distinct = min(len(row.unique()) for row in tokens) if len(tokens) else 0
    if distinct < 2:
        log.warning("%s sampled an image with %d distinct token(s): degenerate sampling", spec.name, distinct)


def xar_step_ms(gen: XARGenerator, sampler: FlowSampler, cond: Condition, repeats: int = 5) -> float:
    """Median ms of one velocity pass of the first entity (the sampler's rows: doubled under CFG)."""
    policy = sampler.policy
    policy.begin(gen)
    state = gen.start(policy.conditions(gen, cond))
    query = gen.plan()[0]
    x = torch.randn(state.batch_size, len(query), gen.channels, device=query.device)
    t = torch.ones(state.batch_size, len(query), device=query.device)
    walls = []
    for _ in range(repeats + 1):
        sync(x.device)
        t0 = time.perf_counter()
        gen.velocity(state, x, t, query)
        sync(x.device)
        walls.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(walls[1:])


def measure_run(gen: nn.Module, spec: Spec, batch: int, cfg_scale: float, settings: Settings) -> dict[str, Any]:
    """One run record: throughput of ancestral sampling of ``batch`` images; xAR: :class:`FlowSampler` (SDE,
    ``settings.flow_steps`` per entity, CFG ramped over the AR steps as the paper)."""
    xar = spec.family == "xar"
    cond, seeds = make_batch(spec, batch, settings.device)
    if xar:
        sampler: Any = FlowSampler(method="sde", steps=settings.flow_steps, cfg_scale=cfg_scale, cfg_schedule="linear")
        FlowSampler(method="sde", steps=2, cfg_scale=cfg_scale).sample(gen, cond, seeds=seeds)  # warm-up
    else:
        sampler = AncestralSampler(cfg_scale=cfg_scale)
        warm_up(gen, sampler, cond, seeds)
    walls, passes, tokens = time_sampling(gen, sampler, cond, seeds, settings)
    if not xar:
        check_not_degenerate(spec, tokens)
    wall = statistics.median(walls)
    rows = 2 if sampler.policy.doubled else 1
    per_image = xar_flops_per_image(gen, passes_per_entity=settings.flow_steps + 1) if xar else flops_per_image(gen)
    flops = per_image * rows
    length = gen.layout.length
    grid = f"{spec.grid}x{spec.grid}"
    if spec.family == "var":
        head: dict[str, Any] = {"generator": "var", "family": "var", "preset": spec.preset, "grid": grid,
                                "scales": list(spec.scales)}
    elif spec.family == "nar":
        head = {"generator": "nar", "family": "nar", "preset": spec.preset, "grid": grid}
    elif spec.family == "token_shuffle":
        head = {"generator": "token_shuffle", "family": "token_shuffle", "preset": spec.preset, "grid": grid,
                "px": spec.grid * 4, "s": spec.window, "trunk_positions_per_image": length // (spec.window * spec.window)}
    elif xar:
        head = {"generator": "xar", "family": "xar", "preset": spec.preset, "entity": spec.entity, "grid": grid,
                "channels": spec.channels, "ar_steps": gen.num_entities, "flow_steps": settings.flow_steps}
    else:
        head = {"generator": spec.preset, "family": "raster", "grid": grid}
    record = {
        **head, **sampler.settings(),
        "batch": batch, "tokens_per_image": length, "forward_passes_per_image": passes,
        "rows_per_pass": batch * rows, "images_per_s": batch / wall, "tokens_per_s": batch * length / wall,
        "seconds_per_image": wall / batch, "wall_s": wall, "wall_s_best": min(walls), "wall_s_all": walls,
        "repeats": len(walls), "images_per_s_best": batch / min(walls), "device": str(settings.device),
        "dtype": settings.dtype_name, "threads": torch.get_num_threads() if settings.device.type == "cpu" else None,
        "parameters": sum(p.numel() for p in gen.parameters()),
        "vocab_size": getattr(gen, "vocab_size", None), "num_classes": spec.classes, "flops_per_image": flops,
        "achieved_gflops": flops * batch / wall / 1e9,
    }
    if xar:
        record["step_ms"] = xar_step_ms(gen, sampler, cond)
    if spec.family in PARALLEL:  # filled by fill_speedups once the raster runs are in
        record.update(speedup_vs_raster=None, raster_images_per_s=None, raster_counterpart=None)
    return record


def train_step_seconds(spec: Spec, batch: int, settings: Settings, steps: int = 3) -> float:
    """Median seconds of a training step (loss forward, backward, AdamW step) of a fresh copy of ``spec``'s
    generator in train mode at ``batch`` random codes (after one warm-up step)."""
    gen = build_generator(spec, settings.device, settings.dtype).train()
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-4)
    cond, _ = make_batch(spec, batch, settings.device)
    tokens = torch.randint(0, spec.vocab, (batch, gen.layout.length), device=settings.device)
    times = []
    for i in range(steps + 1):
        sync(settings.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        gen.loss(tokens, cond).loss.backward()
        opt.step()
        sync(settings.device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- KV step cost ------------------------------------------------------------------------------
def step_times(gen: RasterGenerator, spec: Spec, batch: int, device: torch.device) -> list[float]:
    """Seconds of every ``generator.step`` of one manual raster decode (random tokens fed back)."""
    cond, _ = make_batch(spec, batch, device)
    state = gen.start(cond)
    prev = torch.zeros(0, dtype=torch.long)
    times: list[float] = []
    for group in gen.plan():
        feed = torch.randint(0, gen.vocab_size, (batch, len(prev)), device=device)
        sync(device)
        t0 = time.perf_counter()
        gen.step(state, feed, prev, group)
        sync(device)
        times.append(time.perf_counter() - t0)
        prev = group
    return times


def kv_step_probe(gen: RasterGenerator, spec: Spec, settings: Settings) -> dict[str, Any]:
    """Median per-step decode time over repeats, and last-step / step-16 ratio."""
    step_times(gen, spec, settings.kv_batch, settings.device)  # warm-up
    runs = [step_times(gen, spec, settings.kv_batch, settings.device) for _ in range(settings.kv_repeats)]
    curve = [statistics.median(r[k] for r in runs) for k in range(len(runs[0]))]
    ratio = curve[-1] / curve[REF_STEP]
    smooth = statistics.median(curve[-5:]) / statistics.median(curve[REF_STEP - 2:REF_STEP + 3])
    return {"generator": spec.preset, "grid": f"{spec.grid}x{spec.grid}", "batch": settings.kv_batch,
            "repeats": len(runs), "ref_step": REF_STEP, "last_step": len(curve) - 1,
            "ref_step_ms": curve[REF_STEP] * 1e3, "last_step_ms": curve[-1] * 1e3,
            "step_ms": [round(t * 1e3, 4) for t in curve], "kv_step_cost_ratio": ratio,
            # Less sensitive to one noisy step: last 5 steps over steps 14..18.
            "kv_step_cost_ratio_smoothed": smooth}


# ---- matmul peak -------------------------------------------------------------------------------
def matmul_gflops(n: int, device: torch.device, dtype: torch.dtype, budget_s: float) -> float:
    """Best GFLOP/s of an (n, n) @ (n, n) product over a few timed repeats within ``budget_s``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    inner = max(1, int(2e12 // (2 * n**3))) if device.type == "cuda" else 1  # amortise launches on GPUs
    a @ b  # warm-up
    sync(device)
    best, reps, t_end = 0.0, 0, time.perf_counter() + budget_s
    while reps < 2 or (reps < 50 and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = max(best, inner * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        reps += 1
    return best


def matmul_peak(settings: Settings) -> dict[str, Any]:
    """Best dense square-matmul throughput over ``matmul_sizes`` in the run's dtype (time-boxed)."""
    per_size = settings.matmul_budget_s / len(settings.matmul_sizes)
    by_size = {n: matmul_gflops(n, settings.device, settings.dtype, per_size) for n in settings.matmul_sizes}
    return {"matmul_peak_gflops": max(by_size.values()),
            "matmul_gflops_by_size": {str(n): round(g, 2) for n, g in by_size.items()}}


# ---- output ------------------------------------------------------------------------------------
def identity(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in (record.get(k) for k in IDENTITY_KEYS))


def raster_counterpart(var: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The raster run with the VAR run's final grid and counterpart preset, measured under the same
    sampler, batch, cfg, device, dtype and threads (the last such record, if several)."""
    preset = RASTER_COUNTERPART.get(var.get("preset", ""))
    side = var["scales"][-1] if var.get("scales") else int(str(var.get("grid", "0x0")).split("x")[0]) or None
    found = None
    for r in runs:
        if r.get("family", "raster") != "raster" or r.get("generator") != preset or side is None:
            continue
        if r.get("tokens_per_image") == side * side and all(r.get(k) == var.get(k) for k in MATCH_KEYS):
            found = r
    return found


def fill_speedups(runs: list[dict[str, Any]]) -> list[str]:
    """Set ``speedup_vs_raster`` (and ``raster_images_per_s``, ``raster_counterpart``) of every VAR and NAR
    record in place; returns notes for the records left without a raster counterpart."""
    missing: list[str] = []
    for r in runs:
        if r.get("family") not in PARALLEL:
            continue
        ref = raster_counterpart(r, runs)
        if ref is None:
            r.update(speedup_vs_raster=None, raster_images_per_s=None, raster_counterpart=None)
            missing.append(f"{r.get('preset')} {r.get('grid')} batch {r.get('batch')} cfg {r.get('cfg_scale')}")
            continue
        r.update(speedup_vs_raster=r["images_per_s"] / ref["images_per_s"],
                 raster_images_per_s=ref["images_per_s"],
                 raster_counterpart=f"{ref['generator']} {ref.get('grid', '')}".strip())
    if not missing:
        return []
    note = (f"speedup_vs_raster is null for VAR / NAR runs without a raster counterpart measured at the same grid, "
            f"sampler, batch, cfg, device, dtype and threads ({', '.join(RASTER_COUNTERPART.values())} for "
            f"{', '.join(RASTER_COUNTERPART)}): {'; '.join(missing)}")
    return [note]


def merge_runs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Old records whose identity is not re-measured, then the new records (in measurement order)."""
    fresh = {identity(r) for r in new}
    return [r for r in old if identity(r) not in fresh] + list(new)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge_report(path: Path, top: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The report after merging ``top`` and ``runs`` into the one already at ``path`` (if any)."""
    old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old, **top}
    merged["runs"] = merge_runs(old.get("runs", []), runs)
    return merged


def run_label(r: dict[str, Any]) -> str:
    """Plot label: VAR runs by preset, grid and scale count; raster runs by preset and token count;
    trained-model sweep runs by generator and sampler setting."""
    if r.get("setting"):
        label = f"{r['generator']} (trained) {r['setting']}"
    elif r.get("family") == "var":
        label = f"VAR {r.get('preset')} {r.get('grid')} ({len(r.get('scales') or ())} scales), {r['sampler']}"
    elif r.get("family") == "xar":
        label = f"xAR {r.get('preset')} {r.get('entity')} {r.get('grid')} ({r.get('ar_steps')} x {r.get('flow_steps')} " \
                f"steps), {r['sampler']}"
    elif r.get("family") == "nar":
        label = f"NAR {r.get('preset')} {r.get('grid')} ({r.get('forward_passes_per_image')} passes), {r['sampler']}"
    elif r.get("family") == "token_shuffle":
        label = f"Token-Shuffle s={r.get('s')} {r.get('grid')} ({r.get('trunk_positions_per_image')} positions), " \
                f"{r['sampler']}"
    else:
        grid = f"{r['grid']} " if r.get("grid") else ""
        label = f"{r['generator']} {grid}({r.get('tokens_per_image')} tok), {r['sampler']}"
    label += f", cfg {r['cfg_scale']}" if r.get("cfg_scale", 1.0) != 1.0 else ""
    return label + f" ({r.get('device')}, {r.get('dtype')})"


def run_pair(r: dict[str, Any]) -> tuple[str, str]:
    """Colour key shared by a VAR run and its raster counterpart: (raster preset, final grid)."""
    if r.get("family") in PARALLEL:
        return RASTER_COUNTERPART.get(r.get("preset", ""), str(r.get("preset"))), str(r.get("grid"))
    return str(r["generator"]), str(r.get("grid") or r.get("tokens_per_image"))


def log_axes(ax: Any, batches: list[int]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xticks(batches)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def plot(report: dict[str, Any], path: Path) -> None:
    """Left: images/s vs batch per generator (log-log; a VAR run and its raster counterpart share a
    colour, VAR dashed); middle (when there are VAR runs with a counterpart): speedup_vs_raster vs
    batch; right: per-step raster decode time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    with_speedup = [r for r in runs if r.get("family") in PARALLEL and r.get("speedup_vs_raster")]
    fig, axes = plt.subplots(1, 3 if with_speedup else 2, figsize=(16 if with_speedup else 11, 4.4))
    left, right = axes[0], axes[-1]
    colours = {pair: f"C{i % 10}" for i, pair in enumerate(sorted({run_pair(r) for r in runs}))}
    series: dict[str, tuple[dict[str, Any], list[tuple[int, float]]]] = {}
    for r in runs:
        series.setdefault(run_label(r), (r, []))[1].append((r["batch"], r["images_per_s"]))
    for label, (r, points) in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        family, cfg = r.get("family"), r.get("cfg_scale", 1.0) != 1.0
        left.plot(xs, ys, marker={"var": "s", "nar": "^", "token_shuffle": "D", "xar": "v"}.get(family, "o"),
                  ls={"var": "--", "nar": ":", "token_shuffle": "-.", "xar": (0, (1, 3))}.get(family, "-"), color=colours[run_pair(r)],
                  fillstyle="none" if cfg else "full", label=label)
    left.set(xscale="log", yscale="log", xlabel="batch", ylabel="images / s", title="sampling throughput")
    log_axes(left, sorted({r["batch"] for r in runs}))
    left.legend(fontsize=6)
    if with_speedup:
        middle = axes[1]
        ratios: dict[str, tuple[dict[str, Any], list[tuple[int, float]]]] = {}
        for r in with_speedup:
            label = run_label(r) + f" vs {r.get('raster_counterpart')}"
            ratios.setdefault(label, (r, []))[1].append((r["batch"], r["speedup_vs_raster"]))
        for label, (r, points) in sorted(ratios.items()):
            xs, ys = zip(*sorted(points))
            family = r.get("family")
            middle.plot(xs, ys, marker={"var": "s", "nar": "^", "token_shuffle": "D", "xar": "v"}.get(family, "o"),
                        ls={"var": "--", "nar": ":", "token_shuffle": "-.", "xar": (0, (1, 3))}.get(family, "-"), color=colours[run_pair(r)],
                        fillstyle="none" if r.get("cfg_scale", 1.0) != 1.0 else "full", label=label)
        middle.axhline(1.0, color="grey", lw=0.8)
        middle.set(xscale="log", yscale="log", xlabel="batch", ylabel="images/s / raster images/s",
                   title="speedup vs raster (same final grid)")
        log_axes(middle, sorted({r["batch"] for r in with_speedup}))
        middle.legend(fontsize=6)
    probe = report.get("kv_step_probe")
    if probe and report.get("kv_step_cost_ratio") is not None:
        right.plot(range(len(probe["step_ms"])), probe["step_ms"])
        right.axvline(probe["ref_step"], color="grey", ls="--", lw=0.8)
        right.set(xlabel="decoding step", ylabel="ms", ylim=(0, None),
                  title=f"{probe['generator']} {probe['grid']} batch {probe['batch']}: "
                        f"last/step16 = {report['kv_step_cost_ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- driver ------------------------------------------------------------------------------------
def plot_token_shuffle(runs: list[dict[str, Any]], path: Path) -> bool:
    """``token_shuffle.png``: per grid, the sampling speed-up of Token-Shuffle over raster_nano against s (each
    batch, without CFG) and the training-step speed-up; False (nothing written) without Token-Shuffle runs."""
    ts = [r for r in runs if r.get("family") == "token_shuffle" and r.get("speedup_vs_raster")]
    if not ts:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    grids = sorted({r["grid"] for r in ts}, key=lambda g: int(g.split("x")[0]))
    for i, grid in enumerate(grids):
        mine = [r for r in ts if r["grid"] == grid]
        px = mine[0].get("px")
        for batch, ls in zip(sorted({r["batch"] for r in mine}), ("-", "--", ":", "-.")):
            pts = sorted((r["s"], r["speedup_vs_raster"]) for r in mine if r["batch"] == batch and r["cfg_scale"] == 1.0)
            if pts:
                left.plot(*zip(*pts), marker="D", ls=ls, color=f"C{i}", label=f"{grid} ({px} px), batch {batch}")
        raster = next((r for r in runs if r.get("family") == "raster" and r.get("grid") == grid
                       and r.get("train_step_s")), None)
        if raster is not None:
            pts = sorted({(r["s"], raster["train_step_s"] / r["train_step_s"]) for r in mine if r.get("train_step_s")})
            right.plot(*zip(*pts), marker="D", color=f"C{i}",
                       label=f"{grid} ({px} px), batch {mine[0].get('train_batch')}")
    for ax, what in ((left, "sampling images/s"), (right, "training steps/s")):
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="window s (trunk positions = L / s^2)",
               ylabel=f"{what} / raster_nano's", xticks=[1, 2, 4])
        ax.set_xticklabels(["1", "2", "4"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_title("Token-Shuffle sampling speed-up over raster")
    right.set_title("training-step speed-up over raster")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for sampling.json and sampling.png")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny8 and var8 (8x8) only, batches 1,8, few repeats")
    p.add_argument("--generators", default=None,
                   help=f"comma list of {sorted(SPECS)} (default tiny,gpt_b,var,nar,nar_b; on CUDA also var_d16)")
    p.add_argument("--batches", default=None, help="comma list (default 1,8,64)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per run (default 3; quick 2)")
    p.add_argument("--run-budget", type=float, default=None, help="stop repeating a run after this many seconds")
    p.add_argument("--kv-batch", type=int, default=8, help="batch of the per-step decode-time probe")
    p.add_argument("--kv-repeats", type=int, default=None, help="repeats of the per-step probe (default 3)")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale of the extra CFG run (1 = none)")
    p.add_argument("--cfg-batch", type=int, default=8, help="batch of the extra CFG run (0 = skip it)")
    p.add_argument("--train-batch", type=int, default=32,
                   help="batch of the training-step timing (Token-Shuffle and raster_nano runs)")
    p.add_argument("--flow-steps", type=int, default=25, help="xAR: flow (SDE) steps per entity")
    p.add_argument("--matmul-budget", type=float, default=None, help="seconds for the matmul peak probe")
    t = p.add_argument_group("trained-model sampler sweep (scripts/bench_speculative.py): replaces the runs above")
    t.add_argument("--trained", default=None, help="exported shapes generator: sweep samplers on it (speed + quality)")
    t.add_argument("--drafter", default=None, help="exported drafter for the speculative settings")
    t.add_argument("--sweep", default=None, help="';'-separated settings, e.g. 'ancestral; sjd:window=17; "
                                                  "speculative_lantern:draft_len=4,k=50,delta=0.1' (default: the "
                                                  "issue-6 sweep)")
    t.add_argument("--cfg-scale-trained", type=float, default=3.0, help="guidance scale of every sweep setting")
    t.add_argument("--suite-per-tag", type=int, default=20, help="ShapesEval prompts per task (suite_per_tag)")
    t.add_argument("--n-per-prompt", type=int, default=4, help="ShapesEval images per prompt")
    t.add_argument("--fd-prompts", type=int, default=1000, help="fd_shapes test captions (0 = skip fd_shapes)")
    t.add_argument("--fd-batch", type=int, default=8, help="batch of the fd_shapes runs (their speed figures too)")
    t.add_argument("--feature-net", default="outputs/feature_nets/shapes", help="shapes feature network export")
    t.add_argument("--seed", type=int, default=0, help="argen-sample seed of every sweep run")
    t.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help="re-sample settings whose samples (with the same config) are already in --out/samples")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default); 1 avoids the thread-barrier stalls that "
                        "multi-threaded kernels suffer when other processes load the CPUs")
    return p.parse_args(argv)


def make_settings(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but CUDA is not available")
    sizes = (2048, 4096, 8192) if device.type == "cuda" else (1024, 2048, 4096)
    return Settings(device=device, dtype_name=args.dtype,
                    repeats=args.repeats or (2 if args.quick else 3),
                    run_budget_s=args.run_budget if args.run_budget is not None else (1.0 if args.quick else 30.0),
                    kv_repeats=args.kv_repeats or (2 if args.quick else 3), kv_batch=args.kv_batch,
                    matmul_sizes=(256, 512) if args.quick else sizes,
                    matmul_budget_s=args.matmul_budget or (1.0 if args.quick else 12.0),
                    cfg_scale=args.cfg_scale, cfg_batch=args.cfg_batch, train_batch=args.train_batch,
                    flow_steps=args.flow_steps)


def select(args: argparse.Namespace) -> tuple[list[Spec], list[int]]:
    default = "tiny,gpt_b,var,nar,nar_b" + (",var_d16" if torch.device(args.device).type == "cuda" else "")
    names = args.generators or ("tiny8,var8,nar8" if args.quick else default)
    unknown = [n for n in names.split(",") if n not in SPECS]
    if unknown:
        raise SystemExit(f"unknown generator(s) {unknown}; choose from {sorted(SPECS)}")
    specs = list(dict.fromkeys(s for n in names.split(",") for s in SPECS[n]))
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,8,64")).split(",")]
    return specs, batches


def too_big(spec: Spec, batch: int, settings: Settings) -> bool:
    """xAR-B beyond batch 8 on a CPU: minutes per run (its step time at batch 1 and 8 is the record wanted)."""
    return spec.preset == "xar_b" and settings.device.type == "cpu" and batch > 8


def run_all(specs: list[Spec], batches: list[int], settings: Settings,
            on_record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every (generator, batch, cfg) run, then the KV step probe on the largest raster generator
    (empty when none is selected)."""
    from tqdm.auto import tqdm

    cfg = [(settings.cfg_batch, settings.cfg_scale)] if settings.cfg_batch and settings.cfg_scale != 1.0 else []
    raster = [s for s in specs if s.family == "raster"]
    probe_spec = max(raster, key=lambda s: (s.preset == "gpt_b", s.grid, s.vocab)) if raster else None
    bar = tqdm(total=len(specs) * (len(batches) + len(cfg)), desc="sampling runs", unit="run")
    probe: dict[str, Any] = {}
    for spec in specs:
        gen = build_generator(spec, settings.device, settings.dtype)
        train_s = train_step_seconds(spec, settings.train_batch, settings) if spec.trains else None
        with torch.inference_mode():
            for batch, scale in [(b, 1.0) for b in batches if not too_big(spec, b, settings)] + cfg:
                bar.set_postfix_str(f"{spec.name} b{batch} cfg{scale:g}")
                record = measure_run(gen, spec, batch, scale, settings)
                if train_s is not None:
                    record.update(train_step_s=train_s, train_batch=settings.train_batch)
                on_record(record)
                bar.update()
            if spec == probe_spec and isinstance(gen, RasterGenerator):
                probe = kv_step_probe(gen, spec, settings)
                log.info("kv step probe %s %s batch %d: step %d %.2f ms, last step %.2f ms, ratio %.3f",
                         spec.preset, probe["grid"], probe["batch"], REF_STEP, probe["ref_step_ms"],
                         probe["last_step_ms"], probe["kv_step_cost_ratio"])
        del gen
    bar.close()
    return probe


def utilisation(runs: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """achieved_gflops of batch-64 GPT-B sampling (else the largest raster run, else the largest run;
    noted) over the matmul peak."""
    pool = [r for r in runs if r.get("family") == "raster"] or runs
    plain = [r for r in pool if r.get("cfg_scale", 1.0) == 1.0] or pool
    ref = next((r for r in plain if r["generator"] == "gpt_b" and r["batch"] == 64), None)
    notes = []
    if ref is None:
        ref = max(plain, key=lambda r: (r["parameters"], r["batch"]))
        notes.append(f"achieved_gflops from {ref['generator']} ({ref['tokens_per_image']} tokens) at batch "
                     f"{ref['batch']}: no GPT-B batch-64 run was measured")
    achieved = ref["achieved_gflops"]
    return {"achieved_gflops": achieved, "flop_utilization": achieved / peak, "notes": notes,
            "achieved_from": {k: ref[k] for k in ("generator", "tokens_per_image", "batch", "cfg_scale")}}


def log_record(r: dict[str, Any]) -> None:
    name = f"{r['family']} {r['preset']}" if r.get("family") in PARALLEL else r["generator"]
    if r.get("family") == "xar":
        name = f"xar {r['entity']} {r['preset']}"
    log.info("%-15s %3d tok %2d passes batch %3d cfg %-3g: %8.3f images/s %9.1f tokens/s %7.3f s/image, "
             "%6.2f GFLOP/s (%d repeats)", name, r["tokens_per_image"], r["forward_passes_per_image"], r["batch"],
             r["cfg_scale"], r["images_per_s"], r["tokens_per_s"], r["seconds_per_image"], r["achieved_gflops"],
             r["repeats"])


def main_trained(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """--trained: the sampler sweep of scripts/bench_speculative.py, merged into sampling.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_speculative as spec

    started, load_before = time.time(), os.getloadavg()
    path = args.out / "sampling.json"

    def save(runs: list[dict[str, Any]]) -> dict[str, Any]:
        report = merge_report(path, {}, runs)
        spec.fill_ratios(report["runs"])
        report["trained_sweep"] = {
            "command": "python scripts/bench_sampling.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "elapsed_s": round(time.time() - started, 1),
            "machine": machine_info(make_settings(args), load_before)}
        write_json_atomic(path, report)
        return report

    report = save(spec.run_trained(args, lambda r: log.info("%s", r["setting"]), save))
    if any(not r.get("trained") for r in report["runs"]):
        plot(report, args.out / "sampling.png")
    spec.plot_quality(report["runs"], args.out / "speculative.png")
    for line in spec.summary_lines(report["runs"]):
        log.info("%s", line)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trained:
        return main_trained(args, argv)
    settings, (specs, batches) = make_settings(args), select(args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    started, load_before = time.time(), os.getloadavg()
    log.info("device %s, dtype %s, %d CPU threads, load average %.2f", settings.device, settings.dtype_name,
             torch.get_num_threads(), load_before[0])
    peak = matmul_peak(settings)
    log.info("matmul peak %.1f GFLOP/s (%s)", peak["matmul_peak_gflops"], peak["matmul_gflops_by_size"])
    runs: list[dict[str, Any]] = []
    with logging_redirect_tqdm():
        probe = run_all(specs, batches, settings, lambda r: (runs.append(r), log_record(r)))
    util = utilisation(runs, peak["matmul_peak_gflops"])
    if settings.device.type == "cpu" and load_before[0] > 0.5 * (os.cpu_count() or 1):  # "after" counts us
        util["notes"].append(f"CPU load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after on "
                             f"{os.cpu_count()} CPUs: other processes competed for the CPUs, timings are noisy")
    if not probe:
        util["notes"].append("no raster generator selected: kv_step_cost_ratio / kv_step_probe not measured "
                             "(kept from the merged sampling.json if it had them)")
    probe_top = {"kv_step_cost_ratio": probe["kv_step_cost_ratio"], "kv_step_probe": probe} if probe else {}
    top = {**probe_top, **peak, **util,
           "machine": machine_info(settings, load_before), "elapsed_s": round(time.time() - started, 1),
           "command": "python scripts/bench_sampling.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    path = args.out / "sampling.json"
    report = merge_report(path, top, runs)
    report["notes"] = list(report.get("notes", [])) + fill_speedups(report["runs"])
    for r in runs:
        if r.get("family") in PARALLEL:
            log.info("%s %s %s batch %d cfg %g: %d passes/image, speedup vs raster %s", r["family"], r["preset"],
                     r["grid"],
                     r["batch"], r["cfg_scale"], r["forward_passes_per_image"],
                     "n/a (no raster counterpart)" if r["speedup_vs_raster"] is None
                     else f"{r['speedup_vs_raster']:.2f}x ({r['raster_counterpart']})")
    write_json_atomic(path, report)
    plot(report, args.out / "sampling.png")
    plot_token_shuffle(report["runs"], args.out / "token_shuffle.png")
    ratio = report.get("kv_step_cost_ratio")
    log.info("kv_step_cost_ratio %s, matmul peak %.1f GFLOP/s, achieved %.1f GFLOP/s, utilisation %.3f -> %s",
             "n/a" if ratio is None else f"{ratio:.3f}", top["matmul_peak_gflops"], util["achieved_gflops"],
             util["flop_utilization"], path)
    return report


def machine_info(settings: Settings, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "float32_matmul_precision": torch.get_float32_matmul_precision(),
                            "load_average_before": [round(x, 2) for x in load_before],
                            "load_average_after": [round(x, 2) for x in os.getloadavg()],
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if settings.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(settings.device)
    return info


if __name__ == "__main__":
    main()
