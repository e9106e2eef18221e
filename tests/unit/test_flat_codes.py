"""Synonym entropy of a tokenizer: the codes that identical flat patches get (ReconstructionReport.flat_*)."""

from __future__ import annotations

import math

import torch

from argen.eval.reconstruction import FlatPatchCodes


def _images() -> torch.Tensor:
    """(2, 3, 8, 8): flat grey everywhere, one 4x4 patch of image 0 flat red, one patch of image 1 noisy."""
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, :4, :4], x[0, 1:, :4, :4] = 0.6, -0.8
    x[1, :, 4:, 4:] = torch.linspace(-1, 1, 16).view(1, 4, 4)
    return x


def test_one_code_per_flat_colour_has_no_synonym_entropy():
    tokens = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 7]]])  # red -> 1, grey -> 0, noisy patch -> 7
    codes = FlatPatchCodes(vocab=8)
    codes.add(_images(), tokens)
    s = codes.summary()
    assert s["flat_tokens"] == 7 / 8  # the noisy patch is not flat
    assert s["flat_code_entropy"] == 0.0 and s["flat_codes"] == 1


def test_synonyms_of_the_background_cost_their_entropy():
    tokens = torch.tensor([[[1, 2], [3, 4]], [[5, 2], [3, 7]]])  # grey patches get 2, 3, 4, 5, 2, 3
    codes = FlatPatchCodes(vocab=8)
    codes.add(_images(), tokens)
    s = codes.summary()
    grey = -(2 * (2 / 6) * math.log(2 / 6) + 2 * (1 / 6) * math.log(1 / 6))
    assert math.isclose(s["flat_code_entropy"], 6 / 7 * grey, rel_tol=1e-9)  # red: 1 patch, 0 nats
    assert s["flat_codes"] == 4
