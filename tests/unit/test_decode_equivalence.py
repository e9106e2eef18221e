"""Cached decoding equals the full causal forward pass (fp32, atol 1e-4) for several plans, for
truncate-then-continue (speculative rollback), for text prefixes with left padding, for the 1D
layout and for a CFG-doubled batch; and ``step`` rejects malformed calls."""

from __future__ import annotations

import functools

import pytest
import torch

from argen.core import Condition, DecodeState
from argen.generators.raster import RasterGenerator
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.text import WordTextEncoder, build_vocab

V = 32
ATOL = 1e-4
CAPTIONS = ["a red circle", "two small blue squares next to a big green triangle", "yellow"]


def fed(state: DecodeState) -> int:
    """Fed positions of a state whose rows advanced together (asserts they did)."""
    assert bool((state.fed == state.fed[0]).all()), state.fed
    return int(state.fed[0])


def slots_used(state: DecodeState) -> int:
    assert bool((state.lengths == state.lengths[0]).all()), state.lengths
    return int(state.lengths[0])


def make_generator(*, text: bool = False, sequence_length: int | None = None, seed: int = 0) -> RasterGenerator:
    torch.manual_seed(seed)
    if text:
        encoder = WordTextEncoder(vocab=build_vocab(CAPTIONS), max_length=8, dim=32, n_layer=1, n_head=2)
        condition = functools.partial(TextConditioner, encoder=encoder)
    else:
        condition = functools.partial(ClassEmbedder, num_classes=5)
    size = {"grid_size": 4} if sequence_length is None else {"sequence_length": sequence_length}
    g = RasterGenerator(vocab_size=V, dim=32, n_layer=2, n_head=2, multiple_of=16, condition=condition, **size)
    torch.nn.init.normal_(g.output.weight, std=1.0)  # the head is zero-initialised
    return g.eval()


def class_cond() -> Condition:
    return Condition(labels=torch.tensor([0, 3, 4]))


def text_cond() -> Condition:
    # Captions of different lengths: 4, 8 (cut to 7 words + <eos>) and 2 slots, so rows are left-padded differently.
    return Condition(texts=list(CAPTIONS))


def random_tokens(g: RasterGenerator, batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, g.seq_len), generator=torch.Generator().manual_seed(seed))


def full_pass(g: RasterGenerator, tokens: torch.Tensor, cond: Condition) -> torch.Tensor:
    with torch.no_grad():
        return g.logits(tokens, cond)


class Recorder:
    """Collects step logits into a (B, L, V) tensor, position by position."""

    def __init__(self, g: RasterGenerator, batch: int) -> None:
        self.out = torch.full((batch, g.seq_len, V), float("nan"))
        self.seen = torch.zeros(g.seq_len, dtype=torch.bool)

    def step(self, g: RasterGenerator, state, tokens: torch.Tensor, positions, query, *, record: bool = True):  # noqa: ANN001, ANN201
        positions = torch.as_tensor(list(positions), dtype=torch.long)
        query = torch.as_tensor(list(query), dtype=torch.long)
        with torch.no_grad():
            out = g.step(state, tokens[:, positions], positions, query)
        assert out.logits.shape == (tokens.shape[0], len(query), V)
        assert out.hidden is not None and out.hidden.shape == (tokens.shape[0], len(query), g.dim)
        if record:
            self.out[:, query] = out.logits
            self.seen[query] = True
        return out

    def check(self, reference: torch.Tensor) -> None:
        assert bool(self.seen.all()), f"positions never queried: {(~self.seen).nonzero().flatten().tolist()}"
        torch.testing.assert_close(self.out, reference, atol=ATOL, rtol=0)


def run_one_per_step(g: RasterGenerator, tokens: torch.Tensor, cond: Condition) -> torch.Tensor:
    """The generator's own plan: feed the previous group, query the next."""
    rec = Recorder(g, len(tokens))
    state = g.start(cond)
    prev: list[int] = []
    for group in g.plan():
        rec.step(g, state, tokens, prev, group.tolist())
        prev = group.tolist()
    assert fed(state) == g.seq_len - 1 and slots_used(state) == g.prefix_len + g.seq_len - 1
    return rec.out


def run_windows(g: RasterGenerator, tokens: torch.Tensor, cond: Condition, window: int = 3) -> Recorder:
    length = g.seq_len
    rec = Recorder(g, len(tokens))
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    for i in range(0, length, window):
        feed = range(i, min(i + window, length))
        query = range(i + 1, min(i + window + 1, length))
        rec.step(g, state, tokens, feed, query)
    return rec


def run_truncate_then_continue(g: RasterGenerator, tokens: torch.Tensor, cond: Condition, window: int = 3) -> Recorder:
    """Every window first goes in as wrong drafts (then rolled back), then as the true tokens."""
    length = g.seq_len
    wrong = (tokens + 1) % V
    rec = Recorder(g, len(tokens))
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    for i in range(0, length, window):
        feed = range(i, min(i + window, length))
        query = range(i + 1, min(i + window + 1, length))
        rec.step(g, state, wrong, feed, query, record=False)
        assert fed(state) == feed[-1] + 1
        state.truncate(i)
        assert fed(state) == i and slots_used(state) == g.prefix_len + i
        rec.step(g, state, tokens, feed, query)
    return rec


# ---- (a) one token per step ---------------------------------------------------------------------
def test_one_token_per_step_matches_full_pass() -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    ref = full_pass(g, tokens, cond)
    assert ref.shape == (3, 16, V)
    torch.testing.assert_close(run_one_per_step(g, tokens, cond), ref, atol=ATOL, rtol=0)


def test_reference_logits_are_not_degenerate() -> None:
    """Guards the comparisons: different conditions and different prefixes give different logits."""
    g = make_generator()
    tokens = random_tokens(g, 3)
    a = full_pass(g, tokens, class_cond())
    b = full_pass(g, tokens, Condition(labels=torch.tensor([1, 2, 0])))
    assert (a - b).abs().max() > 1e-2
    other = tokens.clone()
    other[:, 5] = (other[:, 5] + 1) % V
    c = full_pass(g, other, class_cond())
    torch.testing.assert_close(c[:, :6], a[:, :6], atol=ATOL, rtol=0)  # causal: positions <= 5 unchanged
    assert (c[:, 6:] - a[:, 6:]).abs().max() > 1e-3


# ---- (b) windows of 3 (speculative verification) -------------------------------------------------
@pytest.mark.parametrize("window", [2, 3, 5])
def test_windows_match_full_pass(window: int) -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    run_windows(g, tokens, cond, window).check(full_pass(g, tokens, cond))


# ---- (c) everything in one call --------------------------------------------------------------
def test_single_call_with_all_tokens_matches_full_pass() -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    length = g.seq_len
    rec = Recorder(g, 3)
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    rec.step(g, state, tokens, range(length - 1), range(1, length))
    rec.check(full_pass(g, tokens, cond))


def test_prefix_and_all_tokens_in_the_first_call_match_full_pass() -> None:
    """The first step may feed tokens together with the pending condition prefix."""
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    n = g.seq_len
    rec = Recorder(g, 3)
    state = g.start(cond)
    rec.step(g, state, tokens, range(n - 1), range(n))
    assert state.pending is None and slots_used(state) == g.prefix_len + n - 1
    rec.check(full_pass(g, tokens, cond))


# ---- (d) truncate then continue --------------------------------------------------------------
def test_truncate_then_continue_matches_full_pass() -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    run_truncate_then_continue(g, tokens, cond).check(full_pass(g, tokens, cond))


def test_partial_acceptance_like_speculative_decoding() -> None:
    """Windows whose first ``a`` drafts are right: the logits of queries that only see right tokens
    are already exact; the state rolls back to the accepted length and decoding continues."""
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    ref = full_pass(g, tokens, cond)
    length, window = g.seq_len, 3
    rng = torch.Generator().manual_seed(7)
    rec = Recorder(g, 3)
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    i = 0
    while i < length:
        feed = list(range(i, min(i + window, length)))
        query = list(range(i + 1, min(i + window + 1, length)))
        accept = int(torch.randint(1, len(feed) + 1, (1,), generator=rng))
        drafts = tokens.clone()
        drafts[:, i + accept:] = (drafts[:, i + accept:] + 1) % V
        out = rec.step(g, state, drafts, feed, query, record=False)
        exact = [k for k, t in enumerate(query) if t <= i + accept]  # query t sees positions < t
        torch.testing.assert_close(out.logits[:, exact], ref[:, [query[k] for k in exact]], atol=ATOL, rtol=0)
        rec.out[:, [query[k] for k in exact]] = out.logits[:, exact]
        rec.seen[[query[k] for k in exact]] = True
        state.truncate(i + accept)
        i += accept
    rec.check(ref)


def test_truncate_several_times_in_a_row() -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    length = g.seq_len
    wrong = (tokens * 7 + 3) % V
    rec = Recorder(g, 3)
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    rec.step(g, state, tokens, range(0, 4), range(1, 5))  # true 0..3
    rec.step(g, state, wrong, range(4, 9), range(5, 10), record=False)  # wrong 4..8
    state.truncate(7)
    state.truncate(6)
    state.truncate(4)
    state.truncate(4)  # idempotent
    assert fed(state) == 4 and slots_used(state) == g.prefix_len + 4
    rec.step(g, state, wrong, range(4, 6), range(5, 7), record=False)  # wrong again, from the rolled-back point
    state.truncate(2)  # back into the accepted part
    rec.step(g, state, tokens, range(2, 10), range(3, 11))
    state.truncate(10)  # a no-op truncate to the current length
    rec.step(g, state, tokens, range(10, length), range(11, length))
    rec.check(full_pass(g, tokens, cond))


def test_truncate_to_zero_then_continue() -> None:
    g = make_generator()
    tokens, cond = random_tokens(g, 3), class_cond()
    length = g.seq_len
    rec = Recorder(g, 3)
    state = g.start(cond)
    rec.step(g, state, tokens, [], [0])
    rec.step(g, state, (tokens + 5) % V, range(0, 6), range(1, 7), record=False)
    state.truncate(0)
    assert fed(state) == 0 and slots_used(state) == g.prefix_len
    rec.step(g, state, tokens, range(length - 1), range(1, length))
    rec.check(full_pass(g, tokens, cond))


# ---- (e) text conditioning, left-padded captions -------------------------------------------------
def test_text_prefix_is_left_padded_differently_per_row() -> None:
    g = make_generator(text=True)
    state = g.start(text_cond())
    assert g.prefix_len == 8 and state.key_valid is not None
    valid = state.key_valid[:, : g.prefix_len]
    assert valid.sum(1).tolist() == [4, 8, 2]
    assert bool(valid[:, -1].all())  # the last prefix slot (predicting token 0) always holds text
    assert bool(state.key_valid[:, g.prefix_len:].all())


def test_text_one_token_per_step_matches_full_pass() -> None:
    g = make_generator(text=True)
    tokens, cond = random_tokens(g, 3), text_cond()
    torch.testing.assert_close(run_one_per_step(g, tokens, cond), full_pass(g, tokens, cond), atol=ATOL, rtol=0)


def test_text_truncate_then_continue_matches_full_pass() -> None:
    g = make_generator(text=True)
    tokens, cond = random_tokens(g, 3), text_cond()
    run_truncate_then_continue(g, tokens, cond).check(full_pass(g, tokens, cond))


def test_text_rows_do_not_depend_on_batch_mates() -> None:
    """Padding is masked: a row's logits are the same alone and in a batch with longer captions."""
    g = make_generator(text=True)
    tokens, cond = random_tokens(g, 3), text_cond()
    together = full_pass(g, tokens, cond)
    for i in range(3):
        alone = full_pass(g, tokens[i:i + 1], cond.index(slice(i, i + 1)))
        torch.testing.assert_close(alone, together[i:i + 1], atol=ATOL, rtol=0)


# ---- (f) 1D layout -----------------------------------------------------------------------------
def test_sequence_generator_plans_match_full_pass() -> None:
    g = make_generator(sequence_length=10)
    assert g.layout.kind == "sequence" and g.seq_len == 10
    tokens, cond = random_tokens(g, 3), class_cond()
    ref = full_pass(g, tokens, cond)
    assert ref.shape == (3, 10, V)
    torch.testing.assert_close(run_one_per_step(g, tokens, cond), ref, atol=ATOL, rtol=0)
    run_windows(g, tokens, cond).check(ref)
    run_truncate_then_continue(g, tokens, cond).check(ref)


# ---- (g) CFG-doubled batch ---------------------------------------------------------------------
@pytest.mark.parametrize("text", [False, True], ids=["class", "text"])
def test_cfg_doubled_batch_matches_full_pass_for_both_halves(text: bool) -> None:
    g = make_generator(text=text)
    cond = text_cond() if text else class_cond()
    tokens = random_tokens(g, 3)
    doubled, tokens2 = cond.cat(cond.as_null()), torch.cat([tokens, tokens])
    stepped = run_one_per_step(g, tokens2, doubled)
    torch.testing.assert_close(stepped[:3], full_pass(g, tokens, cond), atol=ATOL, rtol=0)
    torch.testing.assert_close(stepped[3:], full_pass(g, tokens, cond.as_null()), atol=ATOL, rtol=0)
    run_windows(g, tokens2, doubled).check(full_pass(g, tokens2, doubled))
    # The two halves really differ (the null condition is a different prefix).
    assert (stepped[:3] - stepped[3:]).abs().max() > 1e-2


# ---- step errors -------------------------------------------------------------------------------
def prefixed_state(g: RasterGenerator, cond: Condition):  # noqa: ANN201
    state = g.start(cond)
    with torch.no_grad():
        g.step(state, torch.zeros(len(cond), 0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
               torch.tensor([0]))
    return state


def test_step_rejects_non_consecutive_positions() -> None:
    g = make_generator()
    state = prefixed_state(g, class_cond())
    tok = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="consecutive"):
        g.step(state, tok, torch.tensor([1, 2]), torch.tensor([2]))  # skips position 0
    with pytest.raises(ValueError, match="consecutive"):
        g.step(state, tok, torch.tensor([0, 2]), torch.tensor([1]))  # a gap
    assert fed(state) == 0  # nothing was fed


def test_step_rejects_queries_not_predicted_by_its_slots() -> None:
    g = make_generator()
    state = prefixed_state(g, class_cond())
    tok = torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="not predicted"):
        g.step(state, tok, torch.tensor([0]), torch.tensor([0]))  # position 0 came from the prefix step
    state2 = prefixed_state(g, class_cond())
    with pytest.raises(ValueError, match="not predicted"):
        g.step(state2, tok, torch.tensor([0]), torch.tensor([2]))  # needs position 1 fed


def test_step_without_anything_to_feed_raises() -> None:
    g = make_generator()
    state = prefixed_state(g, class_cond())
    with pytest.raises(ValueError, match="nothing to feed"):
        g.step(state, torch.zeros(3, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))


def test_step_rejects_out_of_vocabulary_tokens() -> None:
    g = make_generator()
    state = prefixed_state(g, class_cond())
    with pytest.raises(ValueError, match="vocabulary"):
        g.step(state, torch.full((3, 1), V), torch.tensor([0]), torch.tensor([1]))


def test_truncate_beyond_fed_raises() -> None:
    g = make_generator()
    state = prefixed_state(g, class_cond())
    with torch.no_grad():
        g.step(state, torch.zeros(3, 3, dtype=torch.long), torch.arange(3), torch.tensor([1]))
    with pytest.raises(ValueError, match="truncate"):
        state.truncate(4)
    with pytest.raises(ValueError, match="truncate"):
        state.truncate(-1)
    assert fed(state) == 3


def test_kv_cache_overflow_raises() -> None:
    g = make_generator()
    state = g.start(class_cond(), max_len=2)  # prefix 1 + 2 rounded up to 8 slots
    assert state.max_len == 8
    tokens = random_tokens(g, 3)
    with torch.no_grad():
        g.step(state, tokens[:, :7], torch.arange(7), torch.tensor([0]))  # slots 0..7: exactly full
        with pytest.raises(IndexError, match="overflow"):
            g.step(state, tokens[:, 7:8], torch.tensor([7]), torch.tensor([8]))


# ---- validation gaps in RasterGenerator.step (documented library bugs) ---------------------------
def test_step_rejects_negative_query_positions() -> None:
    g = make_generator(text=True)
    state = g.start(text_cond())
    with pytest.raises(ValueError):
        g.step(state, torch.zeros(3, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.tensor([-1, 0]))


def test_step_rejects_query_past_the_last_position() -> None:
    g = make_generator()
    tokens = random_tokens(g, 3)
    state = g.start(class_cond())
    with pytest.raises(ValueError):
        g.step(state, tokens, torch.arange(g.seq_len), torch.tensor([g.seq_len]))


def test_step_feeding_past_the_last_position_raises_a_clear_error() -> None:
    g = make_generator()
    tokens = random_tokens(g, 3)
    state = g.start(class_cond(), max_len=2 * g.seq_len)  # room in the cache: only the layout is exceeded
    with torch.no_grad():
        g.step(state, tokens, torch.arange(g.seq_len), torch.tensor([1]))
        with pytest.raises(ValueError):
            g.step(state, tokens[:, :1], torch.tensor([g.seq_len]), torch.tensor([g.seq_len]))


def test_rejected_query_leaves_the_state_unchanged() -> None:
    g = make_generator()
    tokens = random_tokens(g, 3)
    state = prefixed_state(g, class_cond())
    with pytest.raises(ValueError, match="not predicted"):
        g.step(state, tokens[:, :1], torch.tensor([0]), torch.tensor([0]))
    assert (fed(state), slots_used(state)) == (0, g.prefix_len)
