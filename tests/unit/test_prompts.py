"""Prompts: Unicode normalisation of the word-level tokeniser, warnings a user can act on, short
log echoes of long captions, empty prompts, and the Hydra quoting that keeps a comma in a prompt."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from argen.cli.common import compose_config
from argen.cli.sample import build_conditions
from argen.data.shapes.prompts import enumerate_prompts
from argen.data.shapes.world import PALETTE, SUPPORTED_SHAPES, TAGS, ShapesWorld
from argen.nn.text import UNK, WordTextEncoder, build_vocab, normalize, preview, words

# The vocabulary of every caption the shapes world can write (all shapes, all colours), as
# trained generators have it in their config: it must never change.
SHAPES_VOCAB = ["a", "above", "an", "and", "below", "blue", "brown", "circle", "circles", "cross", "crosses", "four",
                "green", "left", "of", "orange", "photo", "pink", "purple", "red", "right", "square", "squares",
                "three", "triangle", "triangles", "two", "yellow"]


def shapes_captions() -> list[str]:
    world = ShapesWorld(shapes=SUPPORTED_SHAPES, colors=tuple(PALETTE), colored_position=True)
    return [r["prompt"] for tag in TAGS for r in enumerate_prompts(world, tag)]


def encoder(vocab: list[str], max_length: int = 8) -> WordTextEncoder:
    torch.manual_seed(0)
    return WordTextEncoder(vocab=vocab, max_length=max_length, dim=16, n_layer=1, n_head=2)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---- normalisation -------------------------------------------------------------------------------
def test_shapes_captions_keep_their_vocabulary_and_token_ids() -> None:
    captions = shapes_captions()
    assert build_vocab(captions) == SHAPES_VOCAB
    enc = encoder(SHAPES_VOCAB, max_length=16)
    ids, _ = enc.tokenize(captions)
    for row, caption in zip(ids.tolist(), captions):
        before = re.findall(r"[a-z0-9]+", caption.lower())  # the tokeniser before normalisation
        expected = [enc.stoi[w] for w in before] + [enc.stoi["<eos>"]]
        assert row[len(row) - len(expected):] == expected, caption
    again, _ = enc.tokenize(captions)  # the second pass reads the caption cache: the same ids
    assert torch.equal(again, ids) and set(enc._ids) == set(captions)


def test_accents_full_width_and_case_are_normalised() -> None:
    assert words("Café NAÏVE Ｒｅｄ ﬁsh Straße") == ["cafe", "naive", "red", "fish", "strasse"]
    assert normalize("À l'écran") == "a l'ecran"
    assert build_vocab(["un café", "un cafe"]) == ["cafe", "un"]


def test_dropped_characters_warn_once_naming_an_example(caplog: pytest.LogCaptureFixture) -> None:
    enc = encoder(["a", "red", "circle"])
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        ids, _ = enc.tokenize(["a red circle 🙂", "a red 円 circle", "a red circle ✨"])
    assert ids[0].tolist() == ids[1].tolist() == ids[2].tolist()  # the characters are dropped ...
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages  # ... with one warning per tokenizer
    assert "🙂" in messages[0] and "dropped" in messages[0]


def test_unknown_words_warn_once_per_tokenizer(caplog: pytest.LogCaptureFixture) -> None:
    enc = encoder(["a", "red", "circle"])
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        ids, _ = enc.tokenize(["a purple circle", "a green circle", "a cyan circle"])
    assert (ids[:, -3] == enc.stoi[UNK]).all()
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "purple" in messages[0] and UNK in messages[0]
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        encoder(["a", "red", "circle"]).tokenize(["a cyan circle"])  # another tokenizer warns again
    assert len(warnings_of(caplog)) == 2


# ---- log echoes ------------------------------------------------------------------------------------
def test_long_caption_echo_is_short(caplog: pytest.LogCaptureFixture) -> None:
    caption = " ".join(["a red circle and a blue square"] * 72)[:3000]  # ~500 words, 3 KB
    enc = encoder(["a", "red", "circle", "and", "blue", "square"], max_length=8)
    with caplog.at_level(logging.WARNING, logger="argen.nn.text"):
        enc.tokenize([caption, caption + " again"])
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "cut" in messages[0] and len(messages[0]) < 300, messages[0]
    assert f"({len(caption.split())} words)" in messages[0]


def test_preview() -> None:
    assert preview("a red circle") == "'a red circle'"
    long = "word " * 100
    short = preview(long, width=40)
    assert short.startswith("'word word") and short.endswith("… (100 words)") and len(short) < 70


# ---- argen-sample prompts ------------------------------------------------------------------------
def test_empty_prompt_warns_and_samples_the_null_condition(caplog: pytest.LogCaptureFixture) -> None:
    cfg = OmegaConf.create({"classes": None, "prompts": ["", "a red circle"], "prompt_file": None,
                            "geneval_metadata": None, "suite": None})
    text_generator = SimpleNamespace(num_classes=None)
    with caplog.at_level(logging.WARNING):
        conds = build_conditions(cfg, text_generator)
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "empty" in messages[0] and "unconditional" in messages[0], messages
    cond = conds.batch([0, 1], torch.device("cpu"))
    assert cond.null_mask().tolist() == [True, False]


@pytest.mark.parametrize(("override", "expected"), [
    ('prompts=["a red circle, and a square"]', ["a red circle, and a square"]),
    ("prompts=['a red circle, and a square']", ["a red circle, and a square"]),
    ('prompts=["a red circle", "a blue square"]', ["a red circle", "a blue square"]),
    ("prompts=[a red circle, and a square]", ["a red circle", "and a square"]),  # the quirk: two prompts
])
def test_hydra_quoting_of_prompts(override: str, expected: list[str]) -> None:
    """The quoting the README documents: a comma inside a prompt needs quotes inside the list."""
    cfg = compose_config("sample", ["generator_path=unused", override])
    assert list(cfg.prompts) == expected
