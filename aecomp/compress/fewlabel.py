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


def scaled_splits(splits: Splits, p: Preprocessing) -> Splits:
    """Unscaled ``splits`` with the fixed scaling ``p`` applied (and recorded) on every split."""
    return Splits(*(replace(d, x=p.apply(d.x).contiguous(), preprocessing=p) for d in splits))


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
                   val_fraction: float = 0.1, test_fraction: float = 0.2, scale: str = "auto",
                   preprocessing: Optional[Preprocessing] = None, raw: Optional[Splits] = None) -> TransferSplits:
    """The transfer task of ``spec``: see the module docstring. ``preprocessing``: a fixed input
    scaling (a pretrained encoder's) instead of one fitted on the source images; ``raw``: the
    unscaled splits when the caller loaded them (e.g. one repeat of the protocol)."""
    src, tgt = _parse_classes(source, "source classes"), _parse_classes(target, "target classes")
    if set(src) & set(tgt):
        raise LabelError(f"source classes {list(src)} and target classes {list(tgt)} overlap; a transfer task "
                         f"reuses an encoder on classes it never saw")
    if raw is None:
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
    prep = preprocessing
    if prep is None:
        image_like = len(raw.train.sample_shape) >= 2
        src_train = raw.train.x[torch.isin(raw.train.y, torch.tensor(src))]
        prep = Preprocessing.fit(scale, src_train, per_feature=not image_like)
    pre = Splits(*(_restrict(d, src, prep, remap=False) for d in raw))
    task = Splits(*(_restrict(d, tgt, prep, remap=True) for d in raw))
    return TransferSplits(pre, task, src, tgt, label_map=list(tgt))


# ---------------------------------------------------------------------------------------- the study
@dataclass
class StudySettings:
    """What a few-label (or transfer) comparison runs: see :func:`run_study`."""

    data: str = "digits"
    labels: Sequence[int] = (10, 100, 1000)  # labelled examples per class; those the data cannot give are skipped
    repeats: int = 3
    seed: int = 0
    latent: int = 16
    hidden: Optional[List[int]] = None  # encoder hidden widths; None: (2 * latent,) when below the input width
    ae_epochs: int = 60
    ae_lr: float = 1e-2
    epochs: int = 30  # at least this many epochs per classifier ...
    min_steps: int = 300  # ... and at least this many optimizer steps (few labels = few batches an epoch)
    lr: float = 1e-3  # from-scratch net and the fine-tuning (x0.1 of head_lr)
    head_lr: float = 1e-2  # the head on a frozen encoder
    batch_size: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    scale: str = "auto"
    val_per_class: Optional[int] = None  # cap the validation labels too (None: the whole validation split)
    unlabeled: Optional[str] = None  # extra images for pretraining (aecomp.data spec)
    encoder: Optional[str] = None  # a pretrained autoencoder (run folder / file) instead of pretraining one
    source: Optional[Tuple[int, ...]] = None  # transfer: pretrain on these classes' images ...
    target: Optional[Tuple[int, ...]] = None  # ... and train heads for these
    backend: Optional[str] = None


ARMS = ("scratch", "autoencoder", "autoencoder-target", "pca")


def arm_title(arm: str, s: StudySettings) -> str:
    """What each row of the study is, in words."""
    if s.source is not None and arm == "autoencoder":
        return f"CompressedNet, encoder pretrained on classes {_classes_text(s.source)} (transfer)"
    if arm == "autoencoder-target":
        return f"CompressedNet, encoder pretrained on classes {_classes_text(s.target)} (in-domain reference)"
    return {"scratch": "same net from scratch", "autoencoder": "CompressedNet on the pretrained encoder",
            "pca": "PCA + logistic regression"}[arm]


def _classes_text(classes: Sequence[int]) -> str:
    c = list(classes)
    return f"{c[0]}-{c[-1]}" if c == list(range(c[0], c[-1] + 1)) and len(c) > 2 else ",".join(map(str, c))


def _epochs_for(s: StudySettings, n: int) -> int:
    """``max(epochs, ceil(min_steps / batches per epoch))``: 100 labels make 2 batches an epoch."""
    batches = max(1, -(-n // s.batch_size))
    return max(s.epochs, -(-s.min_steps // batches))


def _correct(model, d: Dataset) -> np.ndarray:
    with torch.no_grad():
        model.eval()
        return (model(d.x).argmax(1) == d.y).numpy()


def _best(candidates: List[Tuple[str, Any]], val: Dataset) -> Tuple[str, Any, int]:
    """The candidate with the highest validation accuracy (ties: the first); and how many there were."""
    scored = [(float(_correct(m, val).mean()), -i, name, m) for i, (name, m) in enumerate(candidates)]
    _, _, name, model = max(scored, key=lambda t: (t[0], t[1]))
    return name, model, len(candidates)


def _arms(s: StudySettings, aes: Dict[str, Any], dims: List[int], few: Splits, classes: int, x_pre: torch.Tensor,
          seed: int) -> Dict[str, Tuple[Any, str, int]]:
    """Each arm's model chosen on validation: ``{arm: (model, chosen candidate, candidates)}``;
    ``aes`` maps each autoencoder arm to its pretrained autoencoder."""
    import copy

    from ..nn import FusedMLP
    from .baselines import PCABaseline
    from .net import CompressedNet, train_compressed

    tr, va = few.train, few.val
    kw = dict(x_val=va.x, y_val=va.y, batch_size=s.batch_size, seed=seed, epochs=_epochs_for(s, len(tr)))
    out: Dict[str, Tuple[Any, str, int]] = {}
    # the same architecture from random initialisation, everything trained on the N labels
    scratch = []
    for lr in (s.lr, s.head_lr):
        torch.manual_seed(seed + 1)
        enc = FusedMLP(dims, ["relu"] * (len(dims) - 2) + ["none"], backend=s.backend)
        net = CompressedNet(enc, num_classes=classes, mode="replace", backend=s.backend)
        train_compressed(net, tr.x, tr.y, lr=lr, **kw)
        scratch.append((f"lr {lr:g}", net))
    name, model, n = _best(scratch, va)
    out["scratch"] = (model, name, n)
    # each pretrained encoder: frozen (head only), then fine-tuned from that head
    for arm, ae in aes.items():
        torch.manual_seed(seed + 1)
        frozen = CompressedNet.from_autoencoder(ae, classes, mode="frozen", backend=s.backend)
        train_compressed(frozen, tr.x, tr.y, lr=s.head_lr, **kw)
        tuned = copy.deepcopy(frozen)
        train_compressed(tuned, tr.x, tr.y, mode="finetune", lr=s.head_lr, finetune_factor=s.lr / s.head_lr,
                         head_ready=True, **kw)
        name, model, n = _best([("frozen", frozen), ("finetune", tuned)], va)
        out[arm] = (model, name, n)
    # the sceptic's unsupervised pretraining: PCA with as many components, fitted on the same images
    pca = PCABaseline.fit(tr.x, tr.y, dims[-1], seed=seed, x_fit=x_pre)  # as many components as the code
    out["pca"] = (pca.to_module(classes), "-", 1)  # one candidate: nothing chosen
    return out


def _task(s: StudySettings, repeat: int, encoder) -> Tuple[Splits, torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """``(task splits, pretraining images, their validation images, info)`` of one repeat. With a
    pretrained ``encoder`` the task data is scaled the encoder's way."""
    from .pretrained import check_width
    from .protocol import repeat_seed

    seed = repeat_seed(s.seed, repeat)
    info: Dict[str, Any] = {"seed": seed}
    if s.source is not None:
        raw = _load(s, repeat, scale="none")
        if encoder is not None:
            check_width(encoder, raw.train.features, s.data)
            raw = _unseen_test(raw, encoder, info)
        t = class_transfer(s.data, s.source, s.target, scale=s.scale, raw=raw,
                           preprocessing=encoder.preprocessing if encoder is not None else None)
        info["label_map"] = t.label_map
        return t.task, t.pretrain.train.x, t.pretrain.val.x, info
    splits = _load(s, repeat, scale="none" if encoder is not None else s.scale)
    if encoder is not None:
        check_width(encoder, splits.train.features, s.data)
        splits = _unseen_test(splits, encoder, info)
        splits = scaled_splits(splits, encoder.preprocessing)
    x_pre = splits.train.x
    if s.unlabeled:
        extra, info["unlabeled"] = unlabeled_images(s.unlabeled, splits)
        x_pre = torch.cat([x_pre, extra])
    return splits, x_pre, splits.val.x, info


def _unseen_test(raw: Splits, encoder, info: Dict[str, Any]) -> Splits:
    """``raw`` (unscaled) with every test image the encoder was pretrained on removed (counted in
    ``info``): a test image seen in pretraining, even without its label, is not unseen."""
    seen = encoder.seen_images()
    if seen is None or seen.shape[1] != raw.test.features:
        info["test_seen_by_encoder"] = None  # unknown: the run's data is not readable here
        return raw
    pool = set(_row_hashes(seen))
    keep = torch.tensor([h not in pool for h in _row_hashes(raw.test.x)], dtype=torch.bool)
    info["test_seen_by_encoder"] = int((~keep).sum())
    info["val_seen_by_encoder"] = sum(h in pool for h in _row_hashes(raw.val.x))
    return Splits(raw.train, raw.val, _subset(raw.test, keep.nonzero().reshape(-1)))


def _load(s: StudySettings, repeat: int, scale: str) -> Splits:
    """Repeat ``repeat``'s splits on the protocol (a new seeded split every repeat)."""
    from .protocol import load_repeat

    try:
        return load_repeat(s.data, repeat, seed=s.seed, val_fraction=s.val_fraction, test_fraction=s.test_fraction,
                           scale=scale)
    except data_mod.DataError as exc:
        raise LabelError(str(exc)) from None


def _pretrain(s: StudySettings, x: torch.Tensor, x_val: torch.Tensor, unit: bool, seed: int):
    from ..models import Autoencoder
    from .pipeline import encoder_dims, fit_autoencoder

    torch.manual_seed(seed)
    ae = Autoencoder(encoder_dims(s, x.shape[1]), output="sigmoid" if unit else "none", backend=s.backend)
    fit_autoencoder(ae, x, x_val, epochs=s.ae_epochs, lr=s.ae_lr, batch_size=s.batch_size, seed=seed)
    return ae.eval()


def _usable_labels(s: StudySettings, tasks: List[Splits]) -> Tuple[List[int], List[str]]:
    """The label budgets every repeat's training split can give, and a note for each one skipped."""
    keep, notes = [], []
    for n in sorted(set(int(v) for v in s.labels)):
        try:
            for t in tasks:
                select_per_class(t.train.y, n, 0)
        except LabelError as exc:
            notes.append(f"N={n} skipped: {exc}")
            continue
        keep.append(n)
    return keep, notes


def run_study(s: StudySettings, log=None) -> Dict[str, Any]:
    """The few-label comparison (or, with ``source``/``target``, the transfer comparison).

    For each repeat ``r`` (a new split and seeds, ``aecomp.compress.protocol``): an autoencoder
    is pretrained on every training image of the repeat (labels unused; plus ``unlabeled``), or
    on the source classes' images only (transfer), or taken from ``encoder``. Then for each
    ``N`` in ``labels``, on the same ``N`` labelled examples per class: ``scratch`` (the
    CompressedNet's architecture from random initialisation, all layers trained, learning rate
    chosen on validation from two), ``autoencoder`` (the CompressedNet on the pretrained encoder,
    frozen or fine-tuned, chosen on validation; for transfer also ``autoencoder-target``, the same
    on an encoder pretrained on the target classes' training images: the in-domain reference that
    tells what the transfer costs) and ``pca`` (PCA with as many components as the
    latent, fitted on the same images, + logistic regression). Each is scored image by image on
    the repeat's validation and test splits; :func:`aecomp.compress.protocol.summarize` gives
    mean +- spread and the paired gap to ``scratch`` per ``N``. Returns a JSON-able dict.
    """
    import time

    from .pretrained import load_encoder
    from .protocol import Evaluation, summarize
    from .storage import payload_bytes

    log = log or (lambda msg: None)
    if s.repeats < 1:
        raise LabelError(f"--repeats must be >= 1, got {s.repeats}")
    if (s.source is None) != (s.target is None):
        raise LabelError("a transfer study needs both the source and the target classes")
    t0 = time.perf_counter()
    encoder = load_encoder(s.encoder) if s.encoder else None
    repeats = [_task(s, r, encoder) for r in range(s.repeats)]
    labels, notes = _usable_labels(s, [t[0] for t in repeats])
    if not labels:
        raise LabelError(f"none of the label budgets {list(s.labels)} fits {s.data}: " + "; ".join(notes))
    evaluations: Dict[int, List[Any]] = {n: [] for n in labels}
    chosen: Dict[int, Dict[str, List[str]]] = {n: {a: [] for a in ARMS} for n in labels}  # per arm and repeat
    budgets: Dict[int, Any] = {}
    candidates: Dict[str, int] = {}
    for r, (task, x_pre, x_pre_val, info) in enumerate(repeats):
        seed = info["seed"]
        classes = int(task.train.y.max()) + 1
        ae = encoder.autoencoder if encoder is not None else _pretrain(s, x_pre, x_pre_val, task.train.unit_range, seed)
        aes = {"autoencoder": ae}
        if s.source is not None:  # the in-domain reference: pretrained on the target classes' own images
            aes["autoencoder-target"] = _pretrain(s, task.train.x, task.val.x, task.train.unit_range, seed)
        dims = list(ae.encoder.dims)
        log(f"repeat {r + 1}/{s.repeats}: autoencoder {'-'.join(map(str, dims))} "
            f"{'from ' + encoder.source if encoder is not None else f'pretrained on {len(x_pre)} images'}")
        for n in labels:
            few, budget = labelled_subset(task, n, seed, val_per_class=s.val_per_class, classes=classes)
            budget.unlabeled_images = int(x_pre.shape[0])
            budgets[n] = budget.to_dict()
            for arm, (model, pick, count) in _arms(s, aes, dims, few, classes, x_pre, seed).items():
                nbytes = payload_bytes(model) if arm != "pca" else 4 * model.num_params
                evaluations[n].append(Evaluation(arm, r, nbytes, _correct(model, few.val), _correct(model, few.test)))
                chosen[n][arm].append(pick)
                candidates[arm] = count
            log(f"  N={n}: " + ", ".join(f"{e.name} {e.val_accuracy:.1f}/{e.test_accuracy:.1f}"
                                          for e in evaluations[n] if e.repeat == r) + " (val/test %)")
    rows = []
    for n in labels:
        stats = summarize(evaluations[n], baseline="scratch")
        for arm in (a for a in ARMS if a in stats):
            row = stats[arm].to_dict()
            row.update(labels_per_class=n, arm=arm, title=arm_title(arm, s), chosen=chosen[n][arm],
                       candidates=candidates[arm])
            rows.append(row)
    kind = "transfer" if s.source is not None else "fewlabel"
    return {"kind": kind, "data": s.data, "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in s.__dict__.items()},
            "labels": labels, "budgets": budgets, "rows": rows, "notes": notes, "repeats": [t[3] for t in repeats],
            "models_compared": sum(candidates.values()), "encoder": encoder.source if encoder else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def _pm(d: Optional[Dict[str, Any]]) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.2f}" if d.get("std") is None else f"{d['mean']:.2f} ± {d['std']:.2f}"


def _ci(g: Optional[Dict[str, Any]]) -> str:
    if not g:
        return "(reference)"
    return f"{g['mean']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]"


def study_markdown(result: Dict[str, Any]) -> str:
    """The study's table: per label budget and arm, accuracy (mean ± sd over repeats, percent)
    and the paired gap to the from-scratch net with its 95% interval."""
    s = result["settings"]
    if result["kind"] == "transfer":
        head = (f"Transfer on {result['data']}: autoencoder pretrained on the images of classes "
                f"{_classes_text(s['source'])}, heads for classes {_classes_text(s['target'])}")
    else:
        head = f"Few labels on {result['data']}: autoencoder pretrained on every training image, labels unused"
    if result.get("encoder"):
        head += f" (encoder from {result['encoder']})"
    lines = [f"## {head}", "",
             f"{s['repeats']} repeat(s) (seeds {s['seed']}..{s['seed'] + s['repeats'] - 1}, a new split each); "
             f"accuracy in percent, mean ± sd over repeats; gap = model - from scratch, paired over the same images, "
             f"95% interval over repeats (aecomp.compress.protocol). Choices (learning rate, frozen or fine-tuned) on "
             f"validation only; {result['models_compared']} candidate models per label budget and repeat.", "",
             "| labels/class | labels used (train + val) | model | val acc | test acc | val gap | test gap | chosen |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in result["rows"]:
        b = result["budgets"][row["labels_per_class"]] if row["labels_per_class"] in result["budgets"] else \
            result["budgets"][str(row["labels_per_class"])]
        picks = sorted(set(row["chosen"]))
        lines.append(f"| {row['labels_per_class']} | {b['train_labels']} + {b['val_labels']} | {row['title']} | "
                     f"{_pm(row['val_accuracy'])} | {_pm(row['test_accuracy'])} | {_ci(row['val_gap'])} | "
                     f"{_ci(row['test_gap'])} | {', '.join(picks)} |")
    lines.append("")
    for note in result["notes"]:
        lines.append(f"- {note}")
    seen = [r.get("test_seen_by_encoder") for r in result.get("repeats", [])]
    if any(v for v in seen):
        lines.append(f"- test images the encoder was pretrained on, removed from the test split per repeat: {seen}")
    lines.append(f"- {result['seconds']} s")
    return "\n".join(lines) + "\n"


def write_study(result: Dict[str, Any], out) -> List[Any]:
    """``study.json`` and ``study.md`` into ``out``; returns their paths."""
    import json
    from pathlib import Path

    from ..train.checkpoint import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "study.json", out / "study.md"]
    atomic_write(paths[0], (json.dumps(result, indent=1) + "\n").encode())
    atomic_write(paths[1], study_markdown(result).encode())
    return paths
