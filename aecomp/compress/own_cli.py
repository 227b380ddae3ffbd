"""The ``aecomp compress`` options for bringing your own model, encoder, images and few labels.

Examples::

    aecomp compress --model mine.safetensors --activations relu,relu,none --scale 16 --data digits --out runs/mine
    aecomp compress --encoder runs/ae --data digits --out runs/reuse          # an ``aecomp train`` run's encoder
    aecomp compress --data digits --labels 10 --unlabeled more.npz --out runs/few
    aecomp compress --study fewlabel --data digits --labels 10,100,1000 --out runs/fewlabel
    aecomp compress --study transfer --data digits --source 0-4 --target 5-9 --labels 10,100 --out runs/transfer

``--model FILE`` (a state_dict in ``.safetensors`` / ``.pt``, or a file ``aecomp compress`` wrote)
is the classifier to compress, in place of the LeNet-300-100 baseline the pipeline trains
otherwise; a state_dict needs ``--activations`` (one per Linear layer). Its input scaling must
be declared with ``--scale`` (``none``, ``K``, ``SHIFT,SCALE``, a ``.npz`` with ``shift``/``scale``,
or a kind fitted on the training split): it is the model's, never refitted silently.
``--encoder RUN`` reuses a pretrained autoencoder (``aecomp.compress.pretrained``) and its input
scaling. ``--labels N`` trains every classifier on N labelled examples per class of the training
split (the autoencoder still sees every training image, and ``--unlabeled FILE``'s).
``--study fewlabel|transfer`` runs the comparison of ``aecomp.compress.fewlabel.run_study`` instead
of the compression pipeline and writes ``study.md`` / ``study.json``; each classifier there trains
at least ``--epochs`` epochs and at least ``10 x --epochs`` optimizer steps (few labels make few
batches an epoch).

Every mistake is one line (``UsageError``, exit code 2).
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

try:
    from ..cli import UsageError
except ImportError:  # pragma: no cover - the top-level CLI not present

    class UsageError(Exception):  # type: ignore[no-redef]
        """A mistake in the command line or its inputs: one line, exit code 2."""


__all__ = ["add_arguments", "check_arguments", "parse_classes", "parse_labels", "run", "run_study_args", "wanted"]

STUDIES = ("fewlabel", "transfer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bring-your-own options of ``aecomp compress`` (see the module docstring)."""
    a = parser.add_argument
    a("--model", default=None, metavar="FILE",
      help="your trained classifier to compress (a state_dict .safetensors/.pt, or an aecomp model file) instead of "
           "the LeNet-300-100 the pipeline trains; needs --scale, and --activations for a state_dict")
    a("--activations", default=None, metavar="A[,A...]",
      help="the activation after each Linear layer of --model: relu, sigmoid or none, e.g. relu,relu,none")
    a("--encoder", default=None, metavar="RUN",
      help="reuse a pretrained autoencoder: an aecomp train (or compress) run folder, or its .safetensors file; "
           "its architecture and input scaling come from the run")
    a("--unlabeled", default=None, metavar="FILE",
      help="more images for pretraining the autoencoder (.npy/.npz/.csv or mnist:DIR; labels in it are ignored)")
    a("--labels", default=None, metavar="N[,N...]",
      help="labelled examples per class of the training split that the classifiers train on (default: all); "
           "with --study, the budgets to compare, e.g. 10,100,1000")
    a("--val-labels", type=int, default=None, dest="val_labels", metavar="M",
      help="also cut the validation split to M labelled examples per class (default: all of it, counted)")
    a("--study", choices=STUDIES, default=None,
      help="instead of compressing: compare the CompressedNet on a pretrained encoder with the same net trained "
           "from scratch (and PCA) on few labels (fewlabel), or after pretraining on other classes (transfer)")
    a("--source", default=None, metavar="CLASSES",
      help="--study transfer: the classes whose images pretrain the autoencoder (default: 0-4)")
    a("--target", default=None, metavar="CLASSES",
      help="--study transfer: the classes the heads are trained for (default: 5-9)")


def parse_labels(text: Optional[str]) -> Optional[List[int]]:
    """``"10,100"`` -> ``[10, 100]``; one line for anything but positive integers."""
    if text is None:
        return None
    try:
        values = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--labels must be positive integers (labelled examples per class) like 10 or 10,100,1000, "
                         f"got {text!r}")
    return values


def parse_classes(text: Optional[str], what: str, default: Tuple[int, ...]) -> Tuple[int, ...]:
    """``"0-4"`` or ``"0,2,4"`` (or both: ``"0-2,7"``) -> a tuple of class labels."""
    if text is None:
        return default
    out: List[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError
                out += range(int(lo), int(hi) + 1)
            else:
                out.append(int(part))
    except ValueError:
        out = []
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise UsageError(f"{what} must be distinct class labels >= 0 like 0-4 or 0,2,4, got {text!r}")
    return tuple(out)


def check_arguments(args: argparse.Namespace) -> None:
    """The combinations that make no sense, each one line."""
    labels = parse_labels(getattr(args, "labels", None))
    study = getattr(args, "study", None)
    if args.activations is not None and args.model is None:
        raise UsageError("--activations describes the layers of --model; give --model FILE too")
    if study is None:
        if labels is not None and len(labels) > 1:
            raise UsageError(f"--labels {args.labels}: several label budgets are compared by --study fewlabel; a "
                             f"compression run trains on one (e.g. --labels 10)")
        if args.source is not None or args.target is not None:
            raise UsageError("--source/--target choose the classes of --study transfer; add --study transfer")
    else:
        if args.model is not None:
            raise UsageError(f"--study {study} compares pretrained and from-scratch nets of its own; it takes no "
                             f"--model")
        if study == "fewlabel" and (args.source is not None or args.target is not None):
            raise UsageError("--source/--target belong to --study transfer, not --study fewlabel")
        if study == "transfer" and args.unlabeled is not None:
            raise UsageError("--study transfer pretrains on the source classes' images only; it takes no --unlabeled")
    if args.val_labels is not None and args.val_labels < 1:
        raise UsageError(f"--val-labels must be a positive integer, got {args.val_labels}")


def study_settings(args: argparse.Namespace):
    """The :class:`aecomp.compress.fewlabel.StudySettings` of a ``--study`` command line."""
    from .fewlabel import StudySettings

    labels = parse_labels(args.labels) or [10, 100, 1000]
    from ..data import SCALES
    transfer = args.study == "transfer"
    source = parse_classes(args.source, "--source", (0, 1, 2, 3, 4)) if transfer else None
    target = parse_classes(args.target, "--target", (5, 6, 7, 8, 9)) if transfer else None
    hidden = None
    if args.hidden is not None:
        from .cli import _parse_hidden

        hidden = _parse_hidden(args.hidden)
    return StudySettings(data=args.data, labels=tuple(labels), repeats=args.repeats, seed=args.seed,
                         latent=args.latent, hidden=hidden, ae_epochs=args.ae_epochs, epochs=args.epochs,
                         min_steps=10 * args.epochs,  # 10 labels a class make one batch an epoch
                         lr=args.lr, batch_size=args.batch_size, val_fraction=args.val_fraction,
                         test_fraction=args.test_fraction, scale=args.scale if args.scale in SCALES else "auto",
                         val_per_class=args.val_labels,
                         unlabeled=args.unlabeled, encoder=args.encoder, source=source, target=target,
                         backend=args.backend)


def run_study_args(args: argparse.Namespace) -> int:
    """``aecomp compress --study ...``: run the study, write ``study.md`` / ``study.json`` into
    ``--out``, print the table."""
    import sys

    from .fewlabel import LabelError, run_study, study_markdown, write_study
    from .own_model import ModelError
    from .pretrained import EncoderError

    from .pipeline import CompressError, output_folder

    settings = study_settings(args)
    try:  # --out as for every compress run: locked, empty or an earlier run's with --overwrite
        with output_folder(args.out, args.overwrite) as out:
            result = run_study(settings, log=lambda m: print(m, file=sys.stderr, flush=True))
            paths = write_study(result, out)
    except (LabelError, EncoderError, ModelError, CompressError) as exc:
        raise UsageError(str(exc)) from None
    print(study_markdown(result))
    print(f"wrote {paths[0]} and {paths[1]} ({result['seconds']} s)")
    return 0


_BROUGHT = ("model", "encoder", "unlabeled", "labels", "study", "val_labels")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line brings anything of the user's (else it is the plain pipeline)."""
    return any(getattr(args, name, None) is not None for name in _BROUGHT) or \
        getattr(args, "activations", None) is not None or getattr(args, "source", None) is not None or \
        getattr(args, "target", None) is not None


def run(args: argparse.Namespace) -> int:
    """``aecomp compress`` with something of the user's: the study, or the pipeline through
    ``bring_your_own.compress_model``."""
    from dataclasses import asdict

    from .bring_your_own import compress_model
    from .cli import apply_threads, print_result, settings_from_args
    from .pipeline import CompressError

    check_arguments(args)
    apply_threads(args.threads)
    if args.study is not None:
        if args.scale is not None:
            from ..data import SCALES

            if args.scale not in SCALES:
                raise UsageError(f"--study fits its own scaling on the training split: --scale takes "
                                 f"{', '.join(SCALES)}, got {args.scale!r}")
        return run_study_args(args)
    declared = args.scale
    settings = asdict(settings_from_args(argparse.Namespace(**dict(vars(args), scale=None))))
    for name in ("data", "out", "scale"):
        settings.pop(name)
    labels = parse_labels(args.labels)
    try:
        result = compress_model(args.model, args.data, activations=args.activations, scale=declared,
                                encoder=args.encoder, labels=labels[0] if labels else None,
                                val_labels=args.val_labels, unlabeled=args.unlabeled, out=args.out, **settings)
    except CompressError as exc:
        raise UsageError(str(exc)) from None
    print_result(result)
    return 0
