"""Few-label selection, unlabelled images for pretraining, and the offline class-transfer splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aecomp import data
from aecomp.compress.fewlabel import LabelError, class_transfer, labelled_subset, select_per_class, unlabeled_images


def _one_line(exc) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", val_fraction=0.1, test_fraction=0.2, seed=0)


def test_select_per_class_is_seeded_balanced_and_nested():
    y = torch.randint(0, 7, (500,))
    y[:7] = torch.arange(7)  # every class present
    fewest = int(torch.bincount(y, minlength=7).min())
    n = min(5, fewest)
    a = select_per_class(y, n, seed=3)
    assert torch.equal(a, select_per_class(y, n, seed=3))
    assert torch.bincount(y[a], minlength=7).tolist() == [n] * 7
    assert len(set(a.tolist())) == a.numel() and torch.equal(a, a.sort().values)
    assert not torch.equal(a, select_per_class(y, n, seed=4))
    # a smaller budget with the same seed is part of the larger one
    small = set(select_per_class(y, 1, seed=3).tolist())
    assert small <= set(a.tolist())


def test_more_labels_than_a_class_has_is_one_line():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 8)
    with pytest.raises(LabelError) as exc:
        select_per_class(y, 4, seed=0)
    text = _one_line(exc)
    assert "class 1 has only 3" in text and "--labels 3" in text
    for bad in (0, -2, 1.5, True):
        with pytest.raises(LabelError) as exc:
            select_per_class(y, bad, seed=0)
        _one_line(exc)


def test_labelled_subset_keeps_validation_separate_and_counted(digits):
    few, budget = labelled_subset(digits, 10, seed=1)
    assert len(few.train) == 100 and torch.bincount(few.train.y).tolist() == [10] * 10
    assert few.val is digits.val and few.test is digits.test
    # the selected examples come from the training split only
    rows = {tuple(r) for r in digits.train.x.numpy().round(6).tolist()}
    assert all(tuple(r) in rows for r in few.train.x.numpy().round(6).tolist())
    assert budget.train_labels == 100 and budget.val_labels == len(digits.val)
    assert sum(budget.val_per_class) == len(digits.val) and budget.unlabeled_images == len(digits.train)
    assert "100 training labels" in budget.describe()
    capped, b2 = labelled_subset(digits, 10, seed=1, val_per_class=5)
    assert b2.val_labels == 50 and b2.val_per_class == [5] * 10
    with pytest.raises(LabelError) as exc:
        labelled_subset(digits, 1000, seed=1)
    assert "--labels" in _one_line(exc)


def test_unlabeled_file_is_scaled_like_the_labelled_data_and_test_images_are_dropped(tmp_path, digits):
    raw = data.load("digits", val_fraction=0.1, test_fraction=0.2, seed=0, scale="none")
    extra = np.random.default_rng(0).integers(0, 17, size=(30, 8, 8)).astype(np.float32)
    leaked = raw.test.x[:4].numpy().reshape(4, 8, 8)
    path = tmp_path / "unlab.npz"
    np.savez(path, x=np.concatenate([extra, leaked]), y=np.zeros(34, dtype=np.int64))
    x, info = unlabeled_images(str(path), digits)
    assert info["read"] == 34 and info["dropped_test_duplicates"] == 4 and info["labels_ignored"]
    assert x.shape == (30, 64)
    torch.testing.assert_close(x, digits.train.preprocessing.apply(torch.from_numpy(extra).reshape(30, 64)))


def test_unlabeled_file_of_another_width_or_units_is_one_line(tmp_path, digits):
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.rand(5, 28, 28).astype(np.float32))
    with pytest.raises(LabelError) as exc:
        unlabeled_images(str(wide), digits)
    assert "784" in _one_line(exc)
    bytes_ = tmp_path / "u8.npy"
    np.save(bytes_, np.random.default_rng(1).integers(0, 256, size=(5, 8, 8)).astype(np.uint8))
    with pytest.raises(LabelError) as exc:
        unlabeled_images(str(bytes_), digits)
    assert "units" in _one_line(exc)
    with pytest.raises(LabelError) as exc:
        unlabeled_images(str(tmp_path / "none.npy"), digits)
    _one_line(exc)


def test_class_transfer_splits():
    t = class_transfer("digits", range(5), range(5, 10), seed=2)
    assert set(t.pretrain.train.y.tolist()) == set(range(5))
    for d in t.task:
        assert set(d.y.tolist()) <= set(range(5)) and len(d) > 0
    assert t.label_map == [5, 6, 7, 8, 9]
    raw = data.load("digits", val_fraction=0.1, test_fraction=0.2, seed=2, scale="none")
    # task label i is original class label_map[i]: the same images, in order
    keep = raw.test.y >= 5
    torch.testing.assert_close(t.task.test.x, t.task.test.preprocessing.apply(raw.test.x[keep]))
    assert torch.equal(t.task.test.y + 5, raw.test.y[keep])
    # the scaling comes from the source classes' training images only
    src = raw.train.x[raw.train.y < 5]
    assert float(t.task.train.preprocessing.scale) == pytest.approx(float(src.max() - src.min()))
    assert "pretrain on classes 0,1,2,3,4" in t.describe()
    back = class_transfer("digits", range(5, 10), range(5), seed=2)
    assert back.label_map == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("src, tgt, word", [
    ((0, 1, 2), (2, 3), "overlap"),
    ((0, 1), (10, 11), "do not occur"),
    ((), (1,), "distinct"),
])
def test_bad_class_splits_are_one_line(src, tgt, word):
    with pytest.raises(LabelError) as exc:
        class_transfer("digits", src, tgt)
    assert word in _one_line(exc)
