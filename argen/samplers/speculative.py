"""The speculative loop: a draft source x one :class:`~argen.samplers.verify.Verifier`, for any generator
whose pass scores a causal window (``chain``), whose state rolls back and whose rows advance on their own
(``ragged``). Jacobi re-drafts (SJD, algorithms.md section 7) and an EAGLE-style drafter (section 8)
are draft sources (:mod:`argen.samplers.drafts`); acceptance is exact (lossless) or LANTERN's.

Positions here are indices along the generator's chain (:func:`~argen.core.protocols.chain_order`: the
layout order for raster, window after window for Token-Shuffle); the flight keeps its tokens in that order
and maps to layout positions when it calls the generator and when a sample is handed over.

Each round, for every row in flight: the source drafts up to D tokens after the row's decided ones; one
target pass feeds the row's last decided token and its drafts and scores those positions and the one
after; the verifier keeps the leading accepted drafts and one more token (resampled at the first
rejection, or the bonus); the row's state rolls back to its decided tokens. Rows advance by their own
accepted prefixes (Protocol 2: per-row lengths), and a row that finishes takes the next sample of the
request into its slot (continuous batching), so a batch does not wait for its slowest row. Sample i is
drawn from its own seed whatever shares its batch (per-row streams, fixed draws per round), so images
equal those drawn one at a time.

Deliberate differences: the residual is resampled exactly, without re-applying top-k/top-p to it (SJD
re-applies the warper, which is not lossless with top-p); drafter chains, not EAGLE's trees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from argen.core import (Condition, Generator, Requirements, SampleResult, StepOutput, chain_order, check_compatible,
                        needs)
from argen.samplers.batch import Flight, OnFinish, compact, finished_rows
from argen.samplers.common import check_request, finish
from argen.samplers.drafts import DrafterDrafts, Drafts
from argen.samplers.policy import DecodingPolicy
from argen.samplers.random import RowRandom
from argen.samplers.verify import Verifier


class DraftSource(Protocol):
    width: int

    def settings(self) -> dict[str, object]: ...

    def begin(self, flight: Flight, generator: Generator, policy: DecodingPolicy) -> None: ...

    def restart(self, flight: Flight, rows: Tensor) -> None: ...

    def select(self, keep: Tensor, both: Tensor) -> None: ...

    def propose(self, flight: Flight) -> Drafts: ...

    def update(self, flight: Flight, out: StepOutput, p: Tensor, accepted: Tensor, counts: Tensor) -> None: ...


def load_drafter(path: str | Path) -> nn.Module:
    """An exported drafter (``argen-train experiment=shapes_raster_drafter``), with the sha256 of the
    target it was trained on in ``drafter.target_sha256`` (from its meta.json; None if unknown)."""
    from tokenizers_vq.io import load_pretrained, read_meta

    folder = Path(str(path)).expanduser()
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"drafter '{folder}' is not an exported drafter (no meta.json); train one with "
                                f"argen-train experiment=shapes_raster_drafter, or fix sampler.drafter=...")
    meta = read_meta(folder)
    drafter = load_pretrained(folder)
    if "target" not in needs(drafter):
        raise TypeError(f"{folder} holds a {type(drafter).__name__}, not a drafter")
    drafter.target_sha256 = (meta.get("target") or {}).get("sha256")
    return drafter


class SpeculativeLoop:
    """source: the draft source; temperature / top_k / top_p / cfg_scale / cfg_schedule: the decoding
    policy (applied to targets and drafts alike); acceptance / lantern_k / lantern_delta /
    neighbours_cache: see :class:`Verifier`."""

    requires = Requirements(output="logits", chain=True, rollback=True, ragged=True)
    names = ("speculative", "speculative_lantern")  # the settings' name under exact / LANTERN acceptance

    def __init__(self, *, source: DraftSource, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 cfg_scale: float = 1.0, cfg_schedule: str = "constant", acceptance: str = "exact",
                 lantern_k: int = 1000, lantern_delta: float = 0.1, neighbours_cache: str | None = None) -> None:
        self.source = source
        self.policy = DecodingPolicy(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                                     cfg_schedule=cfg_schedule)
        self.verifier = Verifier(acceptance=acceptance, lantern_k=lantern_k, lantern_delta=lantern_delta,
                                 neighbours_cache=neighbours_cache)

    @property
    def name(self) -> str:
        return self.names[self.verifier.relaxed]

    def settings(self) -> dict[str, object]:
        return {"sampler": self.name, **self.source.settings(), **self.policy.settings(), **self.verifier.settings()}

    @property
    def binds(self) -> tuple[str, ...]:
        """LANTERN's latent proximity comes from the tokenizer's codebook (see :class:`Verifier`)."""
        return ("tokenizer",) if self.verifier.relaxed else ()

    def bind(self, *, tokenizer: object) -> None:
        self.verifier.attach_tokenizer(tokenizer)

    def attach_tokenizer(self, tokenizer: object) -> None:
        self.bind(tokenizer=tokenizer)

    @torch.no_grad()
    def sample(self, generator: Generator, cond: Condition, *, seeds: Tensor, batch_size: int | None = None,
               on_finish: OnFinish | None = None) -> SampleResult:
        """cond: N conditions, seeds: (N,) per-sample seeds; at most ``batch_size`` rows in flight (default
        N); ``on_finish(indices, tokens)`` is called as samples complete."""
        start_time = time.perf_counter()
        flight = self._begin(generator, cond, seeds, batch_size, on_finish)
        while flight.rows:
            self._round(generator, flight)
            self._refill(generator, flight)
        flight.stats.extra.update(self.verifier.stats(), row_passes=float(flight.stats.extra.get("row_passes", 0)))
        return SampleResult(tokens=flight.out, stats=finish(flight.stats, start_time, flight.out.device))

    def _begin(self, generator: Generator, cond: Condition, seeds: Tensor, batch_size: int | None,
               on_finish: OnFinish | None) -> Flight:
        check_compatible(self, generator)
        check_request(cond, seeds, batch_size)
        device = generator.device
        cond = cond.to(device)
        self.policy.begin(generator)
        self.verifier.begin(int(generator.layout.vocab_size))
        n_rows = min(batch_size or len(cond), len(cond))
        first = torch.arange(n_rows)
        state = generator.start(self.policy.conditions(generator, cond.index(first.to(device))))
        flight = Flight(cond=cond, seeds=seeds, index=first.clone(), n=torch.zeros(n_rows, dtype=torch.long),
                        tokens=generator.layout.empty(n_rows, device), out=generator.layout.empty(len(cond), device),
                        state=state,
                        rng=RowRandom(seeds[first].to(device)), doubled=self.policy.doubled, queued=n_rows,
                        on_finish=on_finish, order=chain_order(generator.plan()))
        self.source.begin(flight, generator, self.policy)
        return flight

    def _round(self, generator: Generator, flight: Flight) -> None:
        """One target pass: draft, feed and score every row's window, verify, commit, roll back."""
        drafts = self.source.propose(flight)
        counts, width = drafts.counts, drafts.tokens.shape[1]
        fed = flight.state.fed[: flight.rows]
        feed_counts = torch.where(flight.index >= 0, flight.n + counts - fed, 0)
        j = torch.arange(int(feed_counts.max()) if flight.rows else 0)[None]
        positions = torch.where(j < feed_counts[:, None], fed[:, None] + j, -1)
        j = torch.arange(width + 1)[None]
        query = torch.where((j <= counts[:, None]) & (flight.index >= 0)[:, None], flight.n[:, None] + j, -1)
        device = flight.tokens.device
        feed = flight.tokens.gather(1, positions.clamp(0, flight.length - 1).to(device))
        rows = self.policy.rows
        out = generator.step(flight.state, rows(feed), rows(flight.layout(positions)), rows(flight.layout(query)))
        assert out.logits is not None  # output="logits" was checked
        p = self.policy.probs(out.logits, flight.layout(query))  # (B, D + 1, V)
        verdict = self.verifier(p, drafts.tokens, drafts.q, flight.rng, counts=counts)
        accepted = verdict.accepted.cpu()
        live = flight.index >= 0
        at = (flight.n + accepted).clamp_max(flight.length - 1)
        keep = live.to(device)
        flight.tokens[torch.arange(flight.rows, device=device)[keep], at.to(device)[keep]] = verdict.token[keep]
        self.source.update(flight, out, p, accepted, counts)
        flight.n = torch.where(live, flight.n + accepted + 1, flight.n)
        stats = flight.stats
        stats.forward_passes += 1
        stats.tokens += int((accepted + 1)[live].sum())
        stats.extra["row_passes"] = stats.extra.get("row_passes", 0.0) + float(live.sum())
        done = flight.n >= flight.length
        flight.state.truncate(rows(torch.where(live & ~done, flight.n - 1, flight.state.fed[: flight.rows])))

    def _refill(self, generator: Generator, flight: Flight) -> None:
        """Finished rows hand their samples over and take the next ones; rows left without one leave."""
        done = finished_rows(flight)
        if not len(done):
            return
        new = flight.take(len(done))
        rows, idle = done[: len(new)], done[len(new):]
        if len(rows):
            device = flight.tokens.device
            generator.restart(flight.state, flight.both(rows),
                              self.policy.conditions(generator, flight.cond.index(new.to(device))))
            flight.rng.reset(rows.to(flight.rng.seeds.device), flight.seeds[new].to(flight.rng.seeds.device))
            flight.index[rows], flight.n[rows] = new, 0
            flight.tokens[rows.to(device)] = 0
            self.source.restart(flight, rows)
        flight.index[idle] = -1
        if len(idle):
            compact(flight, (flight.index >= 0).nonzero()[:, 0], self.source.select)


class SpeculativeSampler(SpeculativeLoop):
    """The speculative loop with an EAGLE-style drafter (:class:`~argen.generators.drafter.EagleDrafter`,
    or the folder of an exported one) as its draft source; draft_len: drafts per target pass; draft:
    ``sample`` | ``greedy`` (see :class:`~argen.samplers.drafts.DrafterDrafts`); the rest as
    :class:`SpeculativeLoop`."""

    requires = Requirements(output="logits", chain=True, rollback=True, ragged=True, features=True)

    def __init__(self, *, drafter: Any, draft_len: int = 4, draft: str = "sample", **policy_and_acceptance: Any):
        drafter = load_drafter(drafter) if isinstance(drafter, (str, Path)) else drafter
        super().__init__(source=DrafterDrafts(drafter=drafter, draft_len=draft_len, draft=draft),
                         **policy_and_acceptance)

    @property
    def drafter(self) -> Any:
        return self.source.drafter  # type: ignore[attr-defined]

    @property
    def target_sha256(self) -> str | None:
        """sha256 of the exported generator the drafter was trained on (argen-sample checks it)."""
        return getattr(self.drafter, "target_sha256", None)
