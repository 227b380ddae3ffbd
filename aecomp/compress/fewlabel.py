"""Few labels, many images: the data side of pretraining an autoencoder and training a head.

* :func:`select_per_class` / :func:`labelled_subset`: ``N`` labelled examples of each class from
  the TRAINING split, drawn by a seeded permutation (the same seed gives the same examples).
  The validation split keeps its own labels -- they are labels too, so :class:`LabelBudget`
  counts them separately for the report (optionally capped to ``M`` per class the same way).
  ``N`` larger than the fewest examples of a class is :class:`LabelError`, one line.
* :func:`unlabeled_images`: images for pretraining from a user's file (``--unlabeled FILE``),
  scaled the labelled data's way; labels in it are ignored, and any image equal to a test image
  is dropped (pretraining on the test images would leak them) and counted.
* :func:`class_transfer`: the offline transfer task. The autoencoder is pretrained on the images
  of ``source`` classes (e.g. 0-4) only, and heads are trained for the ``target`` classes (5-9),
  whose labels are remapped to ``0..k-1`` (``label_map[i]`` = the original class of task label
  ``i``). The input scaling is fitted on the source classes' training images only: nothing of
  the target task is seen before its heads train.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import data as data_mod
from ..data import Dataset, Preprocessing, Splits

__all__ = ["LabelBudget", "LabelError", "TransferSplits", "class_transfer", "labelled_subset", "select_per_class",
           "unlabeled_images"]


class LabelError(ValueError):
    """A label budget or class split the data cannot give; the message is one line."""


def _counts(y: torch.Tensor, classes: int) -> List[int]:
    return torch.bincount(y, minlength=classes).tolist()


def select_per_class(y: torch.Tensor, n: int, seed: int, classes: Optional[int] = None,
                     what: str = "--labels", split: str = "training") -> torch.Tensor:
    """Sorted indices of ``n`` examples of each class ``0..classes-1`` of ``y``.

    A seeded permutation of all indices, then per class its first ``n`` indices in that order
    (so a larger ``n`` with the same seed keeps the smaller selection: nested budgets).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise LabelError(f"{what} must be a positive integer (examples per class), got {n!r}")
    if y.numel() == 0:
        raise LabelError(f"{what} {n}: the {split} split has no labelled examples")
    classes = int(y.max()) + 1 if classes is None else int(classes)
    counts = _counts(y, classes)
    fewest = min(counts)
    if n > fewest:
        c = counts.index(fewest)
        raise LabelError(f"{what} {n}: class {c} has only {fewest} labelled example(s) in the {split} split (the "
                         f"fewest of {classes} classes); use {what} {fewest} or less")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(y.numel(), generator=g)
    ys = y[perm]
    order = torch.argsort(ys, stable=True)  # by class, the permutation's order within a class
    ranked = perm[order]
    starts = np.cumsum([0] + counts[:-1])
    picked = torch.cat([ranked[s:s + n] for s in starts])
    return picked.sort().values


@dataclass
class LabelBudget:
    """The labels a few-label run uses: ``per_class`` training labels of each of ``classes``
    classes (``train_labels`` in all), and the validation labels (``val_labels``, per class in
    ``val_per_class``) that choose the settings."""

    per_class: int
    classes: int
    train_labels: int
    val_labels: int
    val_per_class: List[int]
    unlabeled_images: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        return (f"{self.train_labels} training labels ({self.per_class} per class x {self.classes}) + "
                f"{self.val_labels} validation labels (choices only); {self.unlabeled_images} unlabelled images "
                f"for pretraining")


def _subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    return replace(ds, x=ds.x[idx].contiguous(), y=ds.y[idx] if ds.y is not None else None)


def labelled_subset(splits: Splits, per_class: int, seed: int, val_per_class: Optional[int] = None,
                    classes: Optional[int] = None) -> Tuple[Splits, LabelBudget]:
    """``splits`` with the training split cut to ``per_class`` labelled examples of each class
    (and the validation split to ``val_per_class``, when given); test untouched."""
    tr, va, te = splits
    if tr.y is None:
        raise LabelError(f"{splits.spec} has no labels; a few-label head needs some")
    classes = int(tr.y.max()) + 1 if classes is None else classes
    train = _subset(tr, select_per_class(tr.y, per_class, seed, classes))
    val = va
    if val_per_class is not None:
        val = _subset(va, select_per_class(va.y, val_per_class, seed + 1, classes, what="validation labels",
                                           split="validation"))
    budget = LabelBudget(per_class, classes, len(train), len(val), _counts(val.y, classes) if len(val) else [],
                         unlabeled_images=len(tr))
    return Splits(train, val, te), budget


# ---------------------------------------------------------------------------------------- unlabeled data
def _row_hashes(x: torch.Tensor) -> List[bytes]:
    a = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in a]


def unlabeled_images(spec: str, labelled: Splits) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The images of ``spec`` (any ``aecomp.data`` spec; labels ignored) for pretraining, scaled
    with the labelled data's training-split scaling; images equal to a test image are dropped.
    Returns ``(x, info)``; info counts what was read, dropped and why."""
    try:
        raw = data_mod.load(spec, val_fraction=0.0, test_fraction=0.0, scale="none")
    except data_mod.DataError as exc:
        raise LabelError(f"--unlabeled: {exc}") from None
    parts = [d.x for d in raw if len(d)]
    x = torch.cat(parts) if len(parts) > 1 else parts[0]
    features = labelled.train.features
    if x.shape[1] != features:
        raise LabelError(f"--unlabeled {spec} has {x.shape[1]} features per sample but the labelled data "
                         f"{labelled.spec} has {features}; they must be images of the same size")
    prep = labelled.train.preprocessing
    x = prep.apply(x).contiguous()
    ref = labelled.train.x
    scale_ref = float(ref.abs().max()) or 1.0
    scale_new = float(x.abs().max()) or 1.0
    if not 0.25 <= scale_new / scale_ref <= 4.0:
        raise LabelError(f"--unlabeled {spec}: after the labelled data's scaling ({prep.kind}) its values reach "
                         f"{scale_new:.3g} but the labelled training images reach {scale_ref:.3g}; store the "
                         f"unlabelled images in the same units as the labelled ones")
    test = set(_row_hashes(labelled.test.x))
    keep = torch.tensor([h not in test for h in _row_hashes(x)], dtype=torch.bool)
    dropped = int((~keep).sum())
    info = {"spec": raw.spec, "read": int(x.shape[0]), "dropped_test_duplicates": dropped,
            "labels_ignored": raw.train.y is not None, "scaling": prep.kind}
    return x[keep].contiguous(), info


# ---------------------------------------------------------------------------------------- transfer
@dataclass
class TransferSplits:
    """``pretrain``: train/val images of the ``source`` classes (labels kept only for counting;
    pretraining never reads them); ``task``: train/val/test of the ``target`` classes with labels
    ``0..k-1``; ``label_map[i]`` = the original class of task label ``i``."""

    pretrain: Splits
    task: Splits
    source: Tuple[int, ...]
    target: Tuple[int, ...]
    label_map: List[int] = field(default_factory=list)

    def describe(self) -> str:
        return (f"pretrain on classes {','.join(map(str, self.source))} ({len(self.pretrain.train)} train images), "
                f"task classes {','.join(map(str, self.target))} ({len(self.task.train)} / {len(self.task.val)} / "
                f"{len(self.task.test)})")


def _parse_classes(classes: Sequence[int], what: str) -> Tuple[int, ...]:
    out = tuple(int(c) for c in classes)
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise LabelError(f"{what} must be distinct class labels >= 0, got {list(classes)}")
    return out


def _restrict(ds: Dataset, classes: Tuple[int, ...], prep: Preprocessing, remap: bool) -> Dataset:
    keep = torch.isin(ds.y, torch.tensor(classes))
    y = ds.y[keep]
    if remap:
        lut = torch.full((int(ds.y.max()) + 1,), -1, dtype=torch.int64)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        y = lut[y]
    return replace(ds, x=prep.apply(ds.x[keep]).contiguous(), y=y, preprocessing=prep,
                   config=dict(ds.config, transfer_classes=list(classes)))


def class_transfer(spec: str, source: Sequence[int], target: Sequence[int], *, seed: int = 0,
                   val_fraction: float = 0.1, test_fraction: float = 0.2, scale: str = "auto") -> TransferSplits:
    """The transfer task of ``spec``: see the module docstring."""
    src, tgt = _parse_classes(source, "source classes"), _parse_classes(target, "target classes")
    if set(src) & set(tgt):
        raise LabelError(f"source classes {list(src)} and target classes {list(tgt)} overlap; a transfer task "
                         f"reuses an encoder on classes it never saw")
    try:
        raw = data_mod.load(spec, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, scale="none")
    except data_mod.DataError as exc:
        raise LabelError(str(exc)) from None
    if raw.train.y is None:
        raise LabelError(f"{spec} has no labels, so it has no classes to split")
    present = set(torch.unique(raw.train.y).tolist())
    missing = sorted((set(src) | set(tgt)) - present)
    if missing:
        raise LabelError(f"{spec}: class(es) {missing} do not occur in the training split (classes there: "
                         f"{sorted(present)})")
    image_like = len(raw.train.sample_shape) >= 2
    src_train = raw.train.x[torch.isin(raw.train.y, torch.tensor(src))]
    prep = Preprocessing.fit(scale, src_train, per_feature=not image_like)
    pre = Splits(*(_restrict(d, src, prep, remap=False) for d in raw))
    task = Splits(*(_restrict(d, tgt, prep, remap=True) for d in raw))
    return TransferSplits(pre, task, src, tgt, label_map=list(tgt))
