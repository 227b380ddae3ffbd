"""Bring your own classifier, pretrained encoder, images and few labels into the compression pipeline.

:func:`compress_model` (and ``aecomp compress --model / --encoder / --unlabeled / --labels``) runs
the pipeline of ``aecomp.compress.pipeline`` -- the same families, the same prune -> share ->
code -> packed/ONNX steps, the same repeats, validation-only choices and report -- with what the
user brings in place of what it would train:

=====================  ==========================================================================
brought                used as
=====================  ==========================================================================
a classifier           the ``baseline`` family (every gap and ratio is to it, and it teaches the
(``model``)            ``-kd`` rows): read by ``own_model.read_classifier`` (a copy: the user's
                       model is never modified), never retrained; its input scaling as declared
                       (``scale``) or as its aecomp model file records it, never refitted silently
an encoder             the autoencoder of the CompressedNet families (not trained here), with the
(``encoder``)          input scaling of its own training data (``pretrained.load_encoder``); test
                       images it was pretrained on are dropped from the test split and counted
more images            pretraining images for the autoencoder, PCA and the linear autoencoder
(``unlabeled``)        (``fewlabel.unlabeled_images``: scaled like the data, test images dropped)
few labels             every classifier trains on ``labels`` examples per class of the training
(``labels``)           split (``fewlabel.labelled_subset``); the unsupervised steps still see every
                       training image; the validation labels are counted in the report
=====================  ==========================================================================

Before anything trains, the user's model is scored on repeat 0's validation split: a model near
chance there means the scaling or the label order is not the one it was trained with, and is one
line (:class:`aecomp.compress.pipeline.CompressError`), not a report of garbage.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from ..data import Preprocessing, Splits

__all__ = ["Brought", "compress_model", "prepare"]


@dataclass
class Brought:
    """What the user brings, read and checked (see the module docstring)."""

    model: Any = None  # own_model.OwnModel
    encoder: Any = None  # pretrained.PretrainedEncoder
    scaling: Optional[Preprocessing] = None  # a fixed input scaling for the data (None: the pipeline's --scale)
    labels: Optional[int] = None
    val_labels: Optional[int] = None
    unlabeled: Optional[str] = None
    notes: List[str] = field(default_factory=list)


def _describe_scaling(p: Preprocessing) -> str:
    if p.kind == "none":
        return "none (inputs as stored)"
    if p.shift.dim() == 0:
        return f"(x - {float(p.shift):g}) / {float(p.scale):g}"
    return f"{p.kind}, per feature ({p.shift.numel()} values)"


def prepare(model=None, *, activations=None, scale=None, encoder=None, labels: Optional[int] = None,
            val_labels: Optional[int] = None, unlabeled: Optional[str] = None) -> Brought:
    """Read and check what the user brings (:class:`Brought`; ``scaling`` set when the data gets a
    fixed scaling, the model's or the encoder's). Every mistake is one line (``CompressError``)."""
    from .fewlabel import LabelError
    from .own_model import ModelError, declared_scaling, read_classifier
    from .pipeline import CompressError
    from .pretrained import EncoderError, load_encoder

    b = Brought(labels=labels, val_labels=val_labels, unlabeled=unlabeled)
    try:
        declared = declared_scaling(scale) if scale is not None else None
        if model is not None:
            b.model = read_classifier(model, activations)
            b.notes += [f"your model ({b.model.source}): {'-'.join(map(str, b.model.dims))}, activations "
                        f"{','.join(b.model.activations)}"] + [f"your model: {n}" for n in b.model.notes]
        if encoder is not None:
            b.encoder = load_encoder(encoder, scale=declared if model is None and not isinstance(declared, str)
                                     else None)
            b.notes += [f"pretrained encoder from {b.encoder.source}: {'-'.join(map(str, b.encoder.dims))}, not "
                        f"trained here"] + b.encoder.notes
    except (ModelError, EncoderError, LabelError) as exc:
        raise CompressError(str(exc)) from None
    if labels is not None and (not isinstance(labels, int) or labels < 1):
        raise CompressError(f"--labels must be a positive integer (examples per class), got {labels!r}")
    # the input scaling: the model's (declared, or from its file), else the encoder's
    own = b.model.scaling if b.model is not None else None
    if b.model is not None:
        if own is not None and declared is not None and not isinstance(declared, str):
            from .modelfile import same_scaling

            if not same_scaling(own, declared):
                raise CompressError(f"--scale {scale} differs from the input scaling {b.model.source} records "
                                    f"({_describe_scaling(own)}); leave --scale out for an aecomp model file")
        if own is None and declared is None:
            raise CompressError("--model: declare the input scaling your model was trained with: --scale none "
                                "(inputs as stored), K (divide by K, e.g. 255), SHIFT,SCALE, FILE.npz (shift/scale "
                                "arrays), or a kind fitted on the training split (auto, global, minmax, standard)")
        fixed = own if own is not None else declared
    else:
        fixed = b.encoder.preprocessing if b.encoder is not None else declared
    if b.model is not None and b.encoder is not None and not isinstance(fixed, str):
        from .modelfile import same_scaling

        if not same_scaling(fixed, b.encoder.preprocessing):
            raise CompressError(f"your model's input scaling ({_describe_scaling(fixed)}) differs from the "
                                f"encoder's ({_describe_scaling(b.encoder.preprocessing)}); a CompressedNet and the "
                                f"model it replaces must read the same inputs")
    if isinstance(fixed, Preprocessing):
        b.scaling = fixed
        origin = "declared" if fixed is declared else \
            f"from {b.model.source if own is not None else b.encoder.source}"
        b.notes.append(f"input scaling {_describe_scaling(fixed)}, {origin}; not refitted")
    elif isinstance(fixed, str):
        b.notes.append(f"input scaling: {fixed}, fitted on each repeat's training split (as declared with --scale)")
    return b


def check_fits(b: Brought, s) -> None:
    """Before anything is written: what was brought against repeat 0's data (the split the
    pipeline's repeat 0 uses): widths, classes, the label budget, and the user's model not near
    chance with the declared scaling. One line each (``CompressError``)."""
    from .fewlabel import LabelError, scaled_splits, select_per_class
    from .pipeline import CompressError, _check, check_labels, load_labeled
    from .pretrained import EncoderError, check_width

    _check(s)
    splits = load_labeled(s, 0)
    classes = check_labels(s, splits)
    try:
        if b.encoder is not None:
            check_width(b.encoder, splits.train.features, s.data)
        if b.labels is not None:
            select_per_class(splits.train.y, b.labels, 0, classes)
        if b.val_labels is not None:
            select_per_class(splits.val.y, b.val_labels, 0, classes, what="--val-labels", split="validation")
    except (EncoderError, LabelError) as exc:
        raise CompressError(str(exc)) from None
    if b.model is not None:
        if b.model.dims[0] != splits.train.features:  # before the scaling: a per-feature one would not apply
            raise CompressError(f"your model takes {b.model.dims[0]} inputs but {s.data} has "
                                f"{splits.train.features} features per sample")
        _check_model_fits(b, scaled_splits(splits, b.scaling) if b.scaling is not None else splits, s.data, classes)


def _check_model_fits(b: Brought, splits: Splits, name: str, classes: int) -> None:
    """The user's model against the (scaled) data: its classes, and not near chance."""
    from .pipeline import CompressError
    from .protocol import chance_accuracy, near_chance, spread

    dims = b.model.dims
    tr, va = splits.train, splits.val
    theirs, ours = b.model.labels, splits.label_map
    if (theirs is not None or ours is not None) and tuple(theirs or range(dims[-1]))[:classes] != \
            tuple(ours or range(classes)):
        raise CompressError(f"your model's classes are the labels {list(theirs or range(dims[-1]))[:12]} but {name}'s "
                            f"are {list(ours or range(classes))[:12]} (in class order); the outputs must mean the "
                            f"same labels")
    if dims[-1] < classes:
        raise CompressError(f"your model has {dims[-1]} outputs but {name} has {classes} classes (labels "
                            f"0..{classes - 1})")
    with torch.no_grad():
        acc = 100.0 * float((b.model.model(va.x).argmax(1) == va.y).float().mean())
    low, _ = near_chance(spread([acc]), chance_accuracy(tr.y), n_val=len(va))
    if low:
        raise CompressError(f"your model scores {acc:.1f}% on the validation split of {name} (chance "
                            f"{chance_accuracy(tr.y):.1f}%): the input scaling (--scale) or the order of its classes "
                            f"is not the one it was trained with")
    b.notes.append(f"your model on repeat 0's validation split before compression: {acc:.2f}%. It was trained "
                   f"outside this run: if its training data held some of these validation or test images, its "
                   f"accuracy, and every gap to it, is optimistic")


def one_repeat_with(b: Brought) -> Callable[[Any], None]:
    """The per-repeat function for ``pipeline.run_repeats``: the data scaled the brought way,
    test images the encoder saw dropped, the labels cut to ``b.labels``, then the pipeline's own
    families with the brought model / encoder / images in place."""
    from .fewlabel import LabelError, labelled_subset, scaled_splits, unlabeled_images
    from .pipeline import CompressError, default_families

    def one_repeat(rec) -> None:
        if b.encoder is not None:  # the splits are as stored here (the encoder's scaling is fixed)
            from .fewlabel import _unseen_test

            info: Dict[str, Any] = {}
            rec.splits = _unseen_test(rec.splits, b.encoder, info)
            if rec.repeat == 0:
                seen = info["test_seen_by_encoder"]
                b.notes.append(f"test images the encoder was pretrained on, dropped from the test split (repeat 0): "
                               f"{seen if seen is not None else 'unknown (its training data is not readable here)'}")
        if b.scaling is not None:
            rec.splits = scaled_splits(rec.splits, b.scaling)
        pretrain = rec.splits.train.x
        if b.unlabeled is not None:
            extra, info = unlabeled_images(b.unlabeled, rec.splits)
            pretrain = torch.cat([pretrain, extra])
            if rec.repeat == 0:
                b.notes.append(f"--unlabeled {b.unlabeled}: {info['read']} images read, "
                               f"{info['dropped_test_duplicates']} equal to a test image dropped, labels "
                               f"{'ignored' if info['labels_ignored'] else 'none'}")
        if b.labels is not None:
            try:
                rec.splits, budget = labelled_subset(rec.splits, b.labels, rec.seed, val_per_class=b.val_labels,
                                                     classes=rec.classes)
            except LabelError as exc:  # another repeat's split has fewer examples of a class
                raise CompressError(f"repeat {rec.repeat}: {exc}") from None
            if rec.repeat == 0:
                b.notes.append(f"few labels: {budget.train_labels} training labels ({b.labels} per class) and "
                               f"{budget.val_labels} validation labels (choices only); {int(pretrain.shape[0])} "
                               f"images for the unsupervised steps")
        rec.pretrain_x = pretrain if (b.labels is not None or b.unlabeled is not None) else None
        rec.base = copy.deepcopy(b.model.model) if b.model is not None else None
        rec.pretrained = b.encoder.autoencoder if b.encoder is not None else None
        rec.notes = b.notes
        default_families(rec)

    return one_repeat


def compress_model(model=None, data: Union[str, Any] = "digits", *, activations: Union[str, Sequence[str], None] = None,
                   scale=None, encoder=None, labels: Optional[int] = None, val_labels: Optional[int] = None,
                   unlabeled: Optional[str] = None, out: str = "aecomp-compress-own", log=None,
                   **settings) -> Dict[str, Any]:
    """Compress your classifier (or compress with your encoder / images / few labels) on ``data``.

    ``model``: an ``nn.Module`` of Linear/ReLU/Sigmoid layers, a state_dict, or a file (``.safetensors``,
    ``.pt``; ``activations`` for a state_dict); ``scale``: its input scaling (``"none"``, ``"255"``,
    ``"0.1307,0.3081"``, a ``.npz``, an ``aecomp.data.Preprocessing``, or a fitted kind); ``encoder``: a
    pretrained autoencoder (run folder, file or ``aecomp.models.Autoencoder``); ``labels``: examples per
    class to train on; ``unlabeled``: more images; ``settings``: any
    :class:`aecomp.compress.pipeline.CompressSettings` field (``repeats``, ``mode``, ``bits``, ...).
    Returns ``pipeline.run_repeats``' result: ``{"rows", "stats", "recommendation", "paths",
    "report", "answer", "files", "seconds"}`` (``files``: every file written, under ``out``).
    """
    from .pipeline import CompressError, CompressSettings, default_rows, run_repeats

    known = {f.name for f in fields(CompressSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"compress_model: unknown setting(s) {', '.join(unknown)}; CompressSettings has "
                        f"{', '.join(sorted(known))}")
    if model is None and encoder is None and labels is None and unlabeled is None:
        raise CompressError("compress_model: give a model (or an encoder, labels or unlabeled images); without them "
                            "this is aecomp.compress.run_compression")
    b = prepare(model, activations=activations, scale=scale, encoder=encoder, labels=labels, val_labels=val_labels,
                unlabeled=unlabeled)
    if b.encoder is not None:  # the CompressedNet, PCA and scratch widths are the encoder's
        settings["latent"], settings["hidden"] = b.encoder.latent, list(b.encoder.dims[1:-1])
    if b.scaling is not None:
        settings["scale"] = "none"  # loaded as stored; the fixed scaling is applied per repeat
    elif isinstance(scale, str):
        settings["scale"] = scale
    s = CompressSettings(data=data, out=str(out), **settings)
    check_fits(b, s)
    return run_repeats(s, one_repeat_with(b), log, rows_per_repeat=default_rows(s))
