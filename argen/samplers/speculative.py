"""Speculative decoding with an EAGLE-style drafter (:class:`~argen.generators.drafter.EagleDrafter`),
verified exactly (plain speculative sampling, lossless) or with LANTERN's relaxed rule
(algorithms.md section 8).

Each round the drafter catches up on the target features of the tokens decided last round, then
proposes a chain of ``draft_len`` tokens from its own features (guided and processed like the
target's logits, so classifier-free guidance runs on the drafter's doubled batch as in LANTERN).
One target pass feeds the last decided token and the chain and returns the target distributions
of the chain's positions and the one after; :class:`~argen.samplers.verify.Verifier` keeps the
leading accepted drafts and one more token (resampled at the first rejection, or the bonus).
The target's features of the kept positions feed the drafter next round; both states roll back.

draft: ``sample`` draws each draft from the drafter's distribution q and verifies with
min(1, p/q) (Leviathan et al.); ``greedy`` takes q's most likely token with q = one-hot, so a
draft is accepted with probability p(x) as in EAGLE's and LANTERN's tree code (a chain here; trees
are not built).

Batches: the KV cache keeps one length per batch, so the state advances by the shortest accepted
prefix of the batch. Rows that got further keep their extra tokens (accepted drafts and the token
after them, all decided) and feed them again at the start of the next round's chain, where target
and proposal are one-hot on them: they are accepted by construction, the drafter continues from
the target's true features there, and nothing a row decided is thrown away. Lossless: every kept
token was decided by the exact (or LANTERN) rule once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from argen.core import Condition, Requirements, SampleResult, SamplingStats
from argen.samplers.acceptance import one_hot_probs
from argen.samplers.common import begin, finish, guided_probs, processing_settings
from argen.samplers.guidance import Guidance
from argen.samplers.logits import LogitsProcessor
from argen.samplers.verify import Verifier


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
    if not hasattr(drafter, "attach_target"):
        raise TypeError(f"{folder} holds a {type(drafter).__name__}, not a drafter")
    drafter.target_sha256 = (meta.get("target") or {}).get("sha256")
    return drafter


class SpeculativeSampler:
    """drafter: an :class:`~argen.generators.drafter.EagleDrafter` or the folder of an exported one;
    draft_len: drafts per target pass (the chain length); draft: ``sample`` | ``greedy``;
    temperature / top_k / top_p / cfg_scale / cfg_schedule: as
    :class:`~argen.samplers.ancestral.AncestralSampler` (applied to target and drafter alike);
    acceptance / lantern_k / lantern_delta / neighbours_cache: see :class:`Verifier`."""

    requires = Requirements(discrete=True, causal_window=True, rollback=True)

    def __init__(self, *, drafter: Any, draft_len: int = 4, draft: str = "sample", temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
                 acceptance: str = "exact", lantern_k: int = 1000, lantern_delta: float = 0.1,
                 neighbours_cache: str | None = None) -> None:
        if draft_len < 0:
            raise ValueError(f"draft_len must be >= 0 (0 = ancestral sampling), got {draft_len}")
        if draft not in ("sample", "greedy"):
            raise ValueError(f"draft must be 'sample' or 'greedy', got {draft!r}")
        self.drafter = load_drafter(drafter) if isinstance(drafter, (str, Path)) else drafter
        self.draft_len, self.draft = draft_len, draft
        self.verifier = Verifier(acceptance=acceptance, lantern_k=lantern_k, lantern_delta=lantern_delta,
                                 neighbours_cache=neighbours_cache)
        self.processor = LogitsProcessor(temperature=temperature, top_k=top_k, top_p=top_p)
        self.guidance = Guidance(scale=cfg_scale, schedule=cfg_schedule)

    @property
    def name(self) -> str:
        return "speculative_lantern" if self.verifier.relaxed else "speculative"

    @property
    def target_sha256(self) -> str | None:
        """sha256 of the exported generator the drafter was trained on (argen-sample checks it)."""
        return getattr(self.drafter, "target_sha256", None)

    def settings(self) -> dict[str, object]:
        return {"sampler": self.name, "window": self.draft_len + 1, "draft_len": self.draft_len, "draft": self.draft,
                **processing_settings(self), **self.verifier.settings()}

    def attach_tokenizer(self, tokenizer: object) -> None:
        self.verifier.attach_tokenizer(tokenizer)

    @torch.no_grad()
    def sample(self, generator: Any, cond: Condition, *, seeds: Tensor) -> SampleResult:
        start_time = time.perf_counter()
        rng, device, state = begin(self, generator, cond, seeds)
        drafter = self.drafter
        param = next(generator.parameters())
        drafter.to(device=param.device, dtype=param.dtype).eval()
        drafter.attach_target(generator)
        length, vocab = generator.layout.length, int(generator.layout.vocab_size)
        b = len(cond)
        double = self.guidance.active

        def rows2(x: Tensor) -> Tensor:  # the tokens of the guided rows and of their null twins
            return torch.cat([x, x]) if double else x

        self.verifier.begin(vocab)
        stats = SamplingStats()
        tokens = torch.zeros(b, length, dtype=torch.long, device=device)
        dstate = drafter.start(state.batch_size)
        none = torch.zeros(0, dtype=torch.long)
        out = generator.step(state, tokens[:, :0].repeat(2 if double else 1, 1), none, torch.tensor([0]))
        stats.forward_passes += 1
        tokens[:, 0] = rng.categorical(guided_probs(self, out.logits, torch.tensor([0]), length))[:, 0]
        feats = out.hidden  # target features of positions n_prev .. n - 1 (here: position 0)
        n, drafted = 1, 0
        # Rows that accepted more than the batch advanced keep those tokens, decided, "ahead" of n: they
        # are fed again next round and accepted by construction (target and proposal one-hot on them).
        ahead = torch.zeros(b, dtype=torch.long, device=device)
        ahead_feats = feats[:, :0]  # target features of positions n .. n + max(ahead) - 1
        while n < length:
            d = min(self.draft_len, length - n - 1)  # drafts; the target pass also scores the position after
            qs = []
            if d:  # the drafter catches up on the tokens decided last round and their target features
                if feats.shape[1] != n - dstate.uniform_fed():
                    raise RuntimeError(f"drafter out of step: it has read {dstate.uniform_fed()} positions, {n} are decided "
                                       f"and {feats.shape[1]} new features are at hand")
                g = drafter.step(dstate, rows2(tokens[:, dstate.uniform_fed():n]), feats)[:, -1:]
            for i in range(d):
                q = guided_probs(self, drafter.head(g), torch.tensor([n + i]), length)  # (B, 1, V)
                if self.draft == "greedy":
                    x = q.argmax(-1)
                    q = one_hot_probs(x, vocab)
                else:
                    x = rng.categorical(q)
                forced = (ahead > i)[:, None]  # (B, 1): the row decided this position already
                x = torch.where(forced, tokens[:, n + i:n + i + 1], x)
                q = torch.where(forced[..., None], one_hot_probs(x, vocab), q)
                tokens[:, n + i] = x[:, 0]
                qs.append(q)
                if i < d - 1:
                    if i < ahead_feats.shape[1]:  # decided positions continue from the target's own feature
                        g = torch.where(rows2(forced)[..., None], ahead_feats[:, i:i + 1], g)
                    g = drafter.step(dstate, rows2(x), g)
            drafted += d
            fed = torch.arange(n - 1, n + d)
            out = generator.step(state, rows2(tokens[:, n - 1:n + d]), fed, torch.arange(n, n + d + 1))
            stats.forward_passes += 1
            p = guided_probs(self, out.logits, torch.arange(n, n + d + 1), length)  # (B, d + 1, V)
            decided = torch.arange(d + 1, device=device)[None] < ahead[:, None]  # (B, d + 1)
            if bool(decided.any()):
                p = torch.where(decided[..., None], one_hot_probs(tokens[:, n:n + d + 1], vocab), p)
            q_all = torch.cat(qs, dim=1) if qs else p[:, :0]
            verdict = self.verifier(p, tokens[:, n:n + d], q_all, rng)
            rows = torch.arange(b, device=device)
            tokens[rows, n + verdict.accepted] = verdict.token  # every row's next token (decided)
            advance = int(verdict.accepted.min()) + 1  # the KV cache keeps one length for the batch
            ahead = verdict.accepted + 1 - advance
            # target features of positions n .. n + advance - 1 (their inputs are all decided tokens)
            feats = torch.cat([feats, out.hidden[:, :advance]], dim=1) if not d else out.hidden[:, :advance]
            ahead_feats = out.hidden[:, advance:advance + int(ahead.max())]
            if d:
                dstate.truncate(n)  # drop the drafter's own chain; it re-reads the target's features
            n += advance
            stats.tokens += advance
            if n < length:
                state.truncate(n - 1)
        stats.tokens += 1  # token 0
        stats.extra.update(self.verifier.stats(), drafted_per_pass=drafted / max(stats.forward_passes - 1, 1))
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
