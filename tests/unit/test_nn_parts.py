"""Building blocks: RoPE tables, SwiGLU sizing, RMSNorm, attention masks, text encoders and the
condition embedders."""

from __future__ import annotations

import functools
import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from argen.core import Condition
from argen.generators.raster import RasterGenerator
from argen.nn.attention import attention_mask
from argen.nn.blocks import RMSNorm, find_multiple, swiglu_hidden
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.rope import apply_rope, rope_1d, rope_2d
from argen.nn.text import (
    EOS,
    PAD,
    UNK,
    HFTextEncoder,
    WordTextEncoder,
    build_vocab,
    words,
)

CAPTIONS = ["a red circle", "a blue square", "two green triangles"]


# ---- RoPE ---------------------------------------------------------------------------------------
def rotate_reference(x: torch.Tensor, angles: list[float]) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of a vector x (hd,) by angles[i] (complex product)."""
    z = torch.complex(x[0::2].double(), x[1::2].double()) * torch.polar(torch.ones(len(angles), dtype=torch.float64),
                                                                       torch.tensor(angles, dtype=torch.float64))
    return torch.stack([z.real, z.imag], dim=-1).flatten().float()


def test_rope_2d_prefix_rows_are_zero_and_zero_condition_queries() -> None:
    table = rope_2d(3, 3, 8, prefix=2)
    assert table.shape == (2 + 9, 4, 2)
    assert bool((table[:2] == 0).all())
    x = torch.randn(1, 11, 2, 8)
    y = apply_rope(x, table)
    assert bool((y[:, :2] == 0).all())  # condition queries/keys become zero vectors (LlamaGen)
    assert (y[:, 2:].norm(dim=-1) > 0).all()


def test_rope_identity_prefix_when_not_zeroed() -> None:
    for table in (rope_2d(3, 3, 8, prefix=2, zero_prefix=False), rope_1d(5, 8, prefix=2, zero_prefix=False)):
        x = torch.randn(1, table.shape[0], 2, 8)
        torch.testing.assert_close(apply_rope(x, table)[:, :2], x[:, :2])


def test_rope_2d_table_matches_row_and_column_angles() -> None:
    h, w, hd, base, prefix = 3, 4, 16, 100.0, 1
    table = rope_2d(h, w, hd, base=base, prefix=prefix)
    quarter = hd // 4
    freqs = [base ** (-(2 * i) / (hd / 2)) for i in range(quarter)]
    for r in range(h):
        for c in range(w):
            angles = [r * f for f in freqs] + [c * f for f in freqs]
            expected = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
            torch.testing.assert_close(table[prefix + r * w + c], expected, atol=1e-6, rtol=0)


def test_rope_1d_table_and_apply_match_complex_rotation() -> None:
    length, hd, base = 6, 8, 10000.0
    table = rope_1d(length, hd, base=base)
    freqs = [base ** (-(2 * i) / hd) for i in range(hd // 2)]
    x = torch.randn(1, length, 1, hd)
    y = apply_rope(x, table)
    for t in range(length):
        torch.testing.assert_close(y[0, t, 0], rotate_reference(x[0, t, 0], [t * f for f in freqs]), atol=1e-5, rtol=0)


def test_rope_2d_apply_matches_complex_rotation() -> None:
    hd = 8
    table = rope_2d(2, 3, hd, prefix=1)
    freqs = [10000.0 ** (-(2 * i) / (hd / 2)) for i in range(hd // 4)]
    x = torch.randn(1, 7, 1, hd)
    y = apply_rope(x, table)
    r, c = 1, 2
    angles = [r * f for f in freqs] + [c * f for f in freqs]
    torch.testing.assert_close(y[0, 1 + r * 3 + c, 0], rotate_reference(x[0, 1 + r * 3 + c, 0], angles), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("table", [rope_1d(9, 16, prefix=2), rope_2d(3, 3, 16, prefix=2)], ids=["1d", "2d"])
def test_rope_preserves_norms_outside_the_prefix(table: torch.Tensor) -> None:
    x = torch.randn(2, table.shape[0], 3, 16)
    y = apply_rope(x, table)
    torch.testing.assert_close(y[:, 2:].norm(dim=-1), x[:, 2:].norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_1d_dot_product_depends_only_on_offset() -> None:
    hd, length = 16, 12
    table = rope_1d(length, hd)
    q, k = torch.randn(hd), torch.randn(hd)
    qs = apply_rope(q.expand(1, length, 1, hd), table)[0, :, 0]
    ks = apply_rope(k.expand(1, length, 1, hd), table)[0, :, 0]
    for offset in (0, 1, 3, -2):
        dots = [float(qs[i] @ ks[i - offset]) for i in range(max(offset, 0), min(length, length + offset))]
        assert max(dots) - min(dots) < 1e-4, (offset, dots)
    assert abs(float(qs[3] @ ks[1]) - float(qs[3] @ ks[2])) > 1e-3  # but does depend on the offset


def test_rope_rejects_odd_head_dims() -> None:
    with pytest.raises(ValueError, match="even"):
        rope_1d(4, 7)
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(2, 2, 6)


def test_generator_rope_table_has_zero_condition_rows() -> None:
    g = RasterGenerator(vocab_size=16, dim=32, n_layer=1, n_head=2, grid_size=3, multiple_of=16,
                        condition=functools.partial(ClassEmbedder, num_classes=5))
    assert g.rope.shape == (1 + 9, 8, 2)
    assert bool((g.rope[:1] == 0).all())
    torch.testing.assert_close(g.rope[1:], rope_2d(3, 3, 16)[:])


# ---- SwiGLU / RMSNorm -----------------------------------------------------------------------------
def test_swiglu_hidden_matches_llamagen_sizes() -> None:
    assert swiglu_hidden(768) == 2048
    assert swiglu_hidden(1024) == 2816
    assert swiglu_hidden(1280) == 3584
    assert find_multiple(2048, 256) == 2048 and find_multiple(2049, 256) == 2304
    assert swiglu_hidden(32, 16) == 96  # int(2*128/3) = 85 -> 96


def test_rmsnorm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 5, 8) * 4
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


# ---- attention masks -----------------------------------------------------------------------------
def test_attention_mask_single_query_without_padding_is_none() -> None:
    assert attention_mask(5, 1, None, torch.device("cpu")) is None


def test_attention_mask_is_causal_over_slots() -> None:
    mask = attention_mask(2, 3, None, torch.device("cpu"))
    assert mask is not None and mask.shape == (1, 1, 3, 5)
    expected = torch.tensor([[k <= 2 + q for k in range(5)] for q in range(3)])
    assert torch.equal(mask[0, 0], expected)


def test_attention_mask_hides_padded_keys_but_keeps_the_diagonal() -> None:
    key_valid = torch.tensor([[False, False, True, True, True, True],
                              [True, True, True, True, True, True]])
    mask = attention_mask(0, 4, key_valid, torch.device("cpu"))
    assert mask is not None and mask.shape == (2, 1, 4, 4)
    causal = torch.tensor([[k <= q for k in range(4)] for q in range(4)])
    assert torch.equal(mask[1, 0], causal)
    expected0 = causal & key_valid[0, None, :4]
    expected0[0, 0] = expected0[1, 1] = True  # a padded slot still sees itself
    assert torch.equal(mask[0, 0], expected0)
    # Queries after the prefix (start > 0): padded keys stay hidden, the single-query case too.
    late = attention_mask(4, 1, key_valid, torch.device("cpu"))
    assert late is not None and late.shape == (2, 1, 1, 5)
    assert late[0, 0, 0].tolist() == [False, False, True, True, True]
    assert late[1, 0, 0].tolist() == [True] * 5


# ---- WordTextEncoder -----------------------------------------------------------------------------
def make_encoder(max_length: int = 6) -> WordTextEncoder:
    torch.manual_seed(0)
    return WordTextEncoder(vocab=build_vocab(CAPTIONS), max_length=max_length, dim=32, n_layer=1, n_head=2)


def test_build_vocab_and_words() -> None:
    assert words("A Red-circle, 2 dots!") == ["a", "red", "circle", "2", "dots"]
    assert build_vocab(CAPTIONS) == sorted({"a", "red", "circle", "blue", "square", "two", "green", "triangles"})
    assert build_vocab(CAPTIONS, min_count=2) == ["a"]


def test_word_encoder_left_pads_and_ends_with_eos() -> None:
    enc = make_encoder(6)
    ids, valid = enc.tokenize(["a red circle", "two green triangles now", "square"])
    s = enc.stoi
    assert ids[0].tolist() == [s[PAD], s[PAD], s["a"], s["red"], s["circle"], s[EOS]]
    assert valid[0].tolist() == [False, False, True, True, True, True]
    assert ids[2].tolist() == [0, 0, 0, 0, s["square"], s[EOS]]
    assert bool((ids[:, -1] == s[EOS]).all())
    assert valid.sum(1).tolist() == [4, 5, 2]
    feats, valid2 = enc(["a red circle", "square"])
    assert feats.shape == (2, 6, 32) and torch.equal(valid2, valid[[0, 2]])
    assert bool((feats[~valid2] == 0).all())  # padded slots carry no features


def test_word_encoder_unknown_word_maps_to_unk_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    enc = make_encoder(8)
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        ids, _ = enc.tokenize(["a purple circle purple"])
        ids2, _ = enc.tokenize(["purple"])
    s = enc.stoi
    assert ids[0, -5:].tolist() == [s["a"], s[UNK], s["circle"], s[UNK], s[EOS]]
    assert ids2[0, -2:].tolist() == [s[UNK], s[EOS]]
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "purple" in records[0].getMessage() and UNK in records[0].getMessage()


def test_word_encoder_cuts_overlong_captions_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    enc = make_encoder(4)
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        ids, valid = enc.tokenize(["a red circle a blue square"])
    s = enc.stoi
    assert ids[0].tolist() == [s["a"], s["red"], s["circle"], s[EOS]]
    assert bool(valid.all())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "cut" in messages[0]


def test_word_encoder_needs_a_vocabulary() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        WordTextEncoder(vocab=[], max_length=4, dim=8, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="duplicate"):
        WordTextEncoder(vocab=["a", "a"], max_length=4, dim=8, n_layer=1, n_head=2)


def test_a_frozen_word_encoder_keeps_its_weights_and_still_conditions() -> None:
    """frozen=True: training moves cap_proj and the GPT, never the encoder, whose (random) weights stay in the
    state dict; the caption still changes the logits."""
    torch.manual_seed(0)
    enc = WordTextEncoder(vocab=build_vocab(CAPTIONS), max_length=6, dim=32, n_layer=1, n_head=2, frozen=True)
    gen = RasterGenerator(vocab_size=16, dim=32, n_layer=1, n_head=2, grid_size=3, multiple_of=16,
                          condition=functools.partial(TextConditioner, encoder=enc))
    nn.init.normal_(gen.output.weight, std=0.02)
    encoder_keys = [k for k in gen.state_dict() if k.startswith("cls_embedding.encoder.")]
    assert "cls_embedding.encoder.embedding.weight" in encoder_keys
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    opt = torch.optim.AdamW([p for p in gen.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(16, (2, 9))
    cond = Condition(texts=["a red circle", "two green triangles"])
    gen.loss(tokens, cond).loss.backward()
    assert all(p.grad is None for p in enc.parameters())
    opt.step()
    after = gen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert not torch.equal(before["cls_embedding.cap_proj.fc1.weight"], after["cls_embedding.cap_proj.fc1.weight"])
    other = Condition(texts=["a blue square", "a red circle"])
    assert (gen.logits(tokens, cond) - gen.logits(tokens, other)).abs().max() > 1e-4


def readout_gen(condition, weight: float) -> RasterGenerator:  # noqa: ANN001
    torch.manual_seed(0)
    return RasterGenerator(vocab_size=16, dim=32, n_layer=1, n_head=2, grid_size=3, multiple_of=16,
                           condition=condition, condition_readout=weight, token_dropout=0.0, resid_dropout=0.0,
                           ffn_dropout=0.0)


def test_condition_readout_adds_the_bag_of_words_loss_of_every_position() -> None:
    """loss = CE + w * BCE(readout(features_i), multi-hot caption words) over every position i and every
    non-null row, written out here; special ids are never targets; weight 0 is LlamaGen's plain loss."""
    enc = make_encoder(6)
    gen = readout_gen(functools.partial(TextConditioner, encoder=enc), 0.5).eval()
    nn.init.normal_(gen.output.weight, std=0.02)
    tokens = torch.randint(16, (3, 9))
    texts = ["a red circle", "two green triangles", "a blue square"]
    cond = Condition(texts=texts, null=torch.tensor([False, True, False]))
    out = gen.loss(tokens, cond)
    feats = gen.features(tokens, cond)
    ce = F.cross_entropy(gen.output(feats).reshape(-1, 16), tokens.reshape(-1))
    target = torch.zeros(2, len(enc.itos))
    for row, text in enumerate([texts[0], texts[2]]):
        for w in text.split():
            target[row, enc.stoi[w]] = 1.0
    logits = gen.readout(feats[[0, 2]])  # (2, 9, W)
    bce = F.binary_cross_entropy_with_logits(logits, target[:, None].expand_as(logits))
    torch.testing.assert_close(out.loss, ce + 0.5 * bce)
    torch.testing.assert_close(out.logs["condition_readout"], bce)
    plain = readout_gen(functools.partial(TextConditioner, encoder=make_encoder(6)), 0.0)
    assert not hasattr(plain, "readout") and "condition_readout" not in plain.eval().loss(tokens, cond).logs


def test_condition_readout_of_classes_is_a_cross_entropy_and_needs_features() -> None:
    gen = readout_gen(functools.partial(ClassEmbedder, num_classes=5), 1.0).eval()
    tokens = torch.randint(16, (2, 9))
    cond = Condition(labels=torch.tensor([3, 1]))
    feats = gen.features(tokens, cond)
    ce = F.cross_entropy(gen.output(feats).reshape(-1, 16), tokens.reshape(-1))
    readout = F.cross_entropy(gen.readout(feats).reshape(-1, 5), torch.tensor([3] * 9 + [1] * 9))
    torch.testing.assert_close(gen.loss(tokens, cond).loss, ce + readout)
    all_null = gen.loss(tokens, Condition(labels=torch.tensor([3, 1]), null=torch.ones(2, dtype=torch.bool)))
    assert float(all_null.logs["condition_readout"]) == 0.0

    class NoVocab(nn.Module):
        max_length, out_dim = 4, 8

    with pytest.raises(ValueError, match="word-level text encoder.*condition_readout=0"):
        readout_gen(functools.partial(TextConditioner, encoder=NoVocab()), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        readout_gen(functools.partial(ClassEmbedder, num_classes=5), -1.0)


# ---- ClassEmbedder -----------------------------------------------------------------------------
def test_class_embedder_null_rows_use_the_null_class() -> None:
    torch.manual_seed(0)
    emb = ClassEmbedder(num_classes=5, dim=16)
    out, valid = emb(Condition(labels=torch.tensor([0, 3, 4]), null=torch.tensor([False, True, False])))
    assert valid is None and out.shape == (3, 1, 16)
    table = emb.embedding_table.weight
    torch.testing.assert_close(out[:, 0], table[[0, 5, 4]])
    only_null, _ = emb(Condition(null=torch.ones(2, dtype=torch.bool)))  # unconditional, no labels
    torch.testing.assert_close(only_null[:, 0], table[[5, 5]])


@pytest.mark.parametrize("bad", [5, 7, -1])
def test_class_embedder_out_of_range_raises(bad: int) -> None:
    emb = ClassEmbedder(num_classes=5, dim=16)
    with pytest.raises(ValueError, match="out of range"):
        emb(Condition(labels=torch.tensor([1, bad])))


def test_class_embedder_needs_labels() -> None:
    emb = ClassEmbedder(num_classes=5, dim=16)
    with pytest.raises(ValueError, match="class-conditional"):
        emb(Condition(texts=["a red circle"]))
    with pytest.raises(ValueError, match="num_classes"):
        ClassEmbedder(num_classes=0, dim=16)


# ---- TextConditioner ---------------------------------------------------------------------------
def make_text_conditioner() -> TextConditioner:
    return TextConditioner(encoder=make_encoder(6), dim=32)


def test_text_conditioner_null_rows_get_uncond_embedding() -> None:
    cond_emb = make_text_conditioner()
    out, valid = cond_emb(Condition(texts=["a red circle", "square"], null=torch.tensor([False, True])))
    assert out.shape == (2, 6, 32)
    uncond = cond_emb.cap_proj(cond_emb.uncond_embedding)
    torch.testing.assert_close(out[1], uncond)
    assert (out[0] - uncond).abs().max() > 1e-3
    assert valid is not None and valid[1].all() and valid[0].tolist() == [False, False, True, True, True, True]
    # Only null rows and no texts: the unconditional caption everywhere, nothing padded.
    out2, valid2 = cond_emb(Condition(null=torch.ones(3, dtype=torch.bool)))
    assert valid2 is None
    torch.testing.assert_close(out2, uncond.expand(3, -1, -1))


def test_text_conditioner_needs_texts() -> None:
    with pytest.raises(ValueError, match="text-conditional"):
        make_text_conditioner()(Condition(labels=torch.tensor([1, 2])))


def test_generators_reject_the_wrong_kind_of_condition() -> None:
    torch.manual_seed(0)
    kw = dict(vocab_size=16, dim=32, n_layer=1, n_head=2, grid_size=3, multiple_of=16)
    class_gen = RasterGenerator(condition=functools.partial(ClassEmbedder, num_classes=5), **kw)
    text_gen = RasterGenerator(condition=functools.partial(TextConditioner, encoder=make_encoder(6)), **kw)
    tokens = torch.zeros(2, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="class-conditional.*labels"):
        class_gen.start(Condition(texts=["a red circle", "a blue square"]))
    with pytest.raises(ValueError, match="class-conditional"):
        class_gen.logits(tokens, Condition(texts=["a red circle", "a blue square"]))
    with pytest.raises(ValueError, match="text-conditional.*texts"):
        text_gen.start(Condition(labels=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="text-conditional"):
        text_gen.logits(tokens, Condition(labels=torch.tensor([0, 1])))


# ---- HFTextEncoder ---------------------------------------------------------------------------------
def test_hf_text_encoder_missing_folder_names_the_path(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    missing = tmp_path / "no-such-t5"
    # The folder is checked before transformers is imported: the error is the same with or without it.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(FileNotFoundError) as info:
        HFTextEncoder(path=str(missing))
    assert str(missing) in str(info.value)


def test_hf_text_encoder_without_transformers_explains_the_extra(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"transformers.*argen\[text\]"):
        HFTextEncoder(path=str(tmp_path))
