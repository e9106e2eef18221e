"""Condition: the batch of class ids / captions / null flags that travels through every generator."""

from __future__ import annotations

import pytest
import torch

from argen.core import Condition


def test_empty_condition_raises() -> None:
    with pytest.raises(ValueError, match="needs labels, texts or a null mask"):
        Condition()


@pytest.mark.parametrize("kwargs", [
    dict(labels=torch.tensor([1, 2]), texts=["a"]),
    dict(labels=torch.tensor([1, 2]), null=torch.tensor([True])),
    dict(texts=["a", "b", "c"], null=torch.zeros(2, dtype=torch.bool)),
])
def test_batch_size_mismatch_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="batch size"):
        Condition(**kwargs)


def test_basic_properties() -> None:
    c = Condition(labels=torch.tensor([1, 2, 3], dtype=torch.int32))
    assert c.labels.dtype == torch.int64
    assert len(c) == 3 and c.device == torch.device("cpu")
    assert c.null_mask().tolist() == [False, False, False] and c.null_mask().dtype == torch.bool
    assert len(Condition(texts=["a", "b"])) == 2
    assert len(Condition(null=torch.ones(4, dtype=torch.bool))) == 4
    assert Condition(labels=torch.tensor([0, 1]), null=torch.tensor([0, 1])).null_mask().tolist() == [False, True]


def test_as_null_keeps_rows_and_nulls_them_all() -> None:
    c = Condition(labels=torch.tensor([1, 2]), texts=["x", "y"], null=torch.tensor([True, False]))
    n = c.as_null()
    assert n.null_mask().tolist() == [True, True]
    assert n.labels.tolist() == [1, 2] and list(n.texts) == ["x", "y"]
    assert c.null_mask().tolist() == [True, False]  # the original is untouched


def test_cat_stacks_rows() -> None:
    a = Condition(labels=torch.tensor([1, 2]))
    b = Condition(labels=torch.tensor([3]), null=torch.tensor([True]))
    c = a.cat(b)
    assert c.labels.tolist() == [1, 2, 3] and c.null_mask().tolist() == [False, False, True]
    t = Condition(texts=["x"]).cat(Condition(texts=["y", "z"]).as_null())
    assert list(t.texts) == ["x", "y", "z"] and t.labels is None
    assert t.null_mask().tolist() == [False, True, True]
    u = Condition(null=torch.tensor([True])).cat(Condition(null=torch.tensor([False, True])))
    assert len(u) == 3 and u.null_mask().tolist() == [True, False, True]


def test_cat_with_different_parts_raises() -> None:
    with pytest.raises(ValueError, match="different parts"):
        Condition(labels=torch.tensor([1])).cat(Condition(texts=["x"]))
    with pytest.raises(ValueError, match="different parts"):
        Condition(labels=torch.tensor([1]), texts=["x"]).cat(Condition(labels=torch.tensor([2])))


def test_index_with_tensor_and_slice() -> None:
    c = Condition(labels=torch.tensor([10, 11, 12, 13]), texts=["a", "b", "c", "d"],
                  null=torch.tensor([False, True, False, True]))
    s = c.index(torch.tensor([3, 0]))
    assert s.labels.tolist() == [13, 10] and list(s.texts) == ["d", "a"] and s.null_mask().tolist() == [True, False]
    s2 = c.index(slice(1, 3))
    assert s2.labels.tolist() == [11, 12] and list(s2.texts) == ["b", "c"] and s2.null_mask().tolist() == [True, False]
    s3 = Condition(texts=["a", "b", "c"]).index(slice(None, None, 2))
    assert list(s3.texts) == ["a", "c"] and s3.labels is None and len(s3) == 2


def test_with_dropout_zero_and_one() -> None:
    c = Condition(labels=torch.tensor([1, 2, 3]), null=torch.tensor([False, True, False]))
    assert c.with_dropout(0.0) is c
    assert c.with_dropout(0.0).null_mask().tolist() == [False, True, False]
    d = c.with_dropout(1.0)
    assert d.null_mask().tolist() == [True, True, True] and d.labels.tolist() == [1, 2, 3]
    assert c.null_mask().tolist() == [False, True, False]


def test_with_dropout_is_reproducible_and_keeps_existing_nulls() -> None:
    c = Condition(labels=torch.arange(2000) % 5, null=torch.arange(2000) < 10)
    a = c.with_dropout(0.3, generator=torch.Generator().manual_seed(0)).null_mask()
    b = c.with_dropout(0.3, generator=torch.Generator().manual_seed(0)).null_mask()
    assert torch.equal(a, b)
    assert bool(a[:10].all())  # nulled rows stay nulled
    assert 0.25 < float(a[10:].float().mean()) < 0.35


def test_to_keeps_everything() -> None:
    c = Condition(labels=torch.tensor([1]), texts=["x"], null=torch.tensor([True])).to("cpu")
    assert c.labels.tolist() == [1] and list(c.texts) == ["x"] and c.null_mask().tolist() == [True]


def test_index_with_a_boolean_mask_selects_rows_or_raises() -> None:
    c = Condition(labels=torch.tensor([10, 11, 12]), texts=["a", "b", "c"])
    try:
        s = c.index(torch.tensor([True, False, True]))
    except (TypeError, ValueError):
        return  # refusing a mask is fine too
    assert s.labels.tolist() == [10, 12] and list(s.texts) == ["a", "c"]
