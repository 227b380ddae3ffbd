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


# ---------------------------------------------------------------------------------------- the study
from aecomp.compress import fewlabel  # noqa: E402

TINY = dict(repeats=2, ae_epochs=2, epochs=2, min_steps=8, latent=8)


def test_choice_reads_validation_only():
    class Fixed(torch.nn.Module):
        """Answers ``answers`` for the validation images, whatever the input (a planted model)."""

        def __init__(self, answers):
            super().__init__()
            self.answers = answers

        def forward(self, x):
            return torch.nn.functional.one_hot(self.answers[: x.shape[0]], 3).float()

    y = torch.tensor([0, 1, 2, 0, 1, 2])
    val = data.Dataset(torch.zeros(6, 4), y, "val", "t", None, (4,))
    good_on_val = Fixed(y.clone())
    wrong = Fixed((y + 1) % 3)
    name, model, n = fewlabel._best([("test-star", wrong), ("val-best", good_on_val)], val)
    assert name == "val-best" and model is good_on_val and n == 2
    # ties keep the first candidate
    assert fewlabel._best([("a", good_on_val), ("b", Fixed(y.clone()))], val)[0] == "a"


def test_fewlabel_study_end_to_end(tmp_path):
    s = fewlabel.StudySettings(data="digits", labels=(5, 500), **TINY)
    result = fewlabel.run_study(s)
    assert result["labels"] == [5] and "N=500 skipped" in result["notes"][0]
    rows = {r["arm"]: r for r in result["rows"]}
    assert set(rows) == {"scratch", "autoencoder", "pca"} and rows["scratch"]["test_gap"] is None
    for arm in ("autoencoder", "pca"):
        r = rows[arm]
        assert r["repeats"] == 2 and len(r["chosen"]) == 2
        # a paired gap's mean is the mean difference of the accuracies on the same images
        diff = r["test_accuracy"]["mean"] - rows["scratch"]["test_accuracy"]["mean"]
        assert r["test_gap"]["mean"] == pytest.approx(diff, abs=1e-9)
        assert r["test_gap"]["low"] <= r["test_gap"]["mean"] <= r["test_gap"]["high"]
    assert set(rows["autoencoder"]["chosen"]) <= {"frozen", "finetune"}
    budget = result["budgets"][5]
    assert budget["train_labels"] == 50 and budget["val_labels"] == sum(budget["val_per_class"]) > 0
    assert [r["seed"] for r in result["repeats"]] == [0, 1]
    json_path, md_path = fewlabel.write_study(result, tmp_path / "study")
    text = md_path.read_text()
    assert "| 5 | 50 + " in text and "CompressedNet on the pretrained encoder" in text
    assert __import__("json").loads(json_path.read_text())["kind"] == "fewlabel"


def test_transfer_study_end_to_end():
    s = fewlabel.StudySettings(data="digits", labels=(5,), source=(0, 1, 2, 3, 4), target=(5, 6, 7, 8, 9), **TINY)
    result = fewlabel.run_study(s)
    assert result["kind"] == "transfer" and result["budgets"][5]["classes"] == 5
    assert all(info["label_map"] == [5, 6, 7, 8, 9] for info in result["repeats"])
    arms = [r["arm"] for r in result["rows"]]
    assert arms == ["scratch", "autoencoder", "autoencoder-target", "pca"]
    assert "(transfer)" in result["rows"][1]["title"] and "in-domain" in result["rows"][2]["title"]
    assert "Transfer on digits" in fewlabel.study_markdown(result)


def test_no_usable_label_budget_is_one_line():
    with pytest.raises(LabelError) as exc:
        fewlabel.run_study(fewlabel.StudySettings(data="digits", labels=(5000,), **TINY))
    assert "none of the label budgets" in _one_line(exc)
    with pytest.raises(LabelError) as exc:
        fewlabel.run_study(fewlabel.StudySettings(data="digits", labels=(5,), source=(0,), **TINY))
    _one_line(exc)


def test_test_images_the_encoder_saw_are_removed(tmp_path):
    from aecomp.cli import main
    from aecomp.compress.pretrained import load_encoder

    run = tmp_path / "ae"
    assert main(["train", "--data", "digits", "--model", "mlp", "--dims", "64,16,8", "--epochs", "1",
                 "--batch-size", "512", "--out", str(run), "--no-progress"]) == 0
    enc = load_encoder(run)
    s = fewlabel.StudySettings(data="digits", labels=(5,), seed=7, **TINY)
    raw = fewlabel._load(s, 0, scale="none")
    info = {}
    kept = fewlabel._unseen_test(raw, enc, info)
    seen = {tuple(r) for r in enc.seen_images().numpy().tolist()}
    assert info["test_seen_by_encoder"] > 0  # another seed: most of its test images were the run's training images
    assert len(kept.test) == len(raw.test) - info["test_seen_by_encoder"]
    assert not any(tuple(r) in seen for r in kept.test.x.numpy().tolist())
    result = fewlabel.run_study(fewlabel.StudySettings(data="digits", labels=(5,), encoder=str(run), **TINY))
    assert result["encoder"] and all(r["test_seen_by_encoder"] is not None for r in result["repeats"])
    # an encoder of another width: one line before anything trains (its per-feature scaling would not apply)
    from aecomp.compress import storage
    from aecomp.compress.pretrained import EncoderError

    ae = enc.autoencoder
    path = tmp_path / "per_feature.safetensors"
    storage.save_float32(ae.state_dict(), path, config=ae.config,
                         scaling=data.Preprocessing("standard", torch.zeros(64), torch.ones(64) * 4))
    for transfer in ({}, dict(source=(0, 1), target=(2, 3))):
        with pytest.raises(EncoderError) as exc:
            fewlabel.run_study(fewlabel.StudySettings(data="digits28", labels=(5,), encoder=str(path), **TINY,
                                                      **transfer))
        assert "784" in _one_line(exc)
