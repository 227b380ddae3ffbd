"""``aecomp compress``: train an autoencoder, compress a classifier with its encoder, and report.

Examples::

    aecomp compress --data digits --latent 16 --mode all --out runs/compress
    aecomp compress --data mnist:/data/mnist --latent 32 --mode replace --epochs 10 --out runs/mnist
    aecomp compress --data samples.npz --latent 8 --mode frozen --out runs/mine   # .npz with x and y

Runs ``aecomp.compress.pipeline.run_compression`` ``--repeats`` times (each a new stratified
split and new seeds; baseline LeNet-300-100, logistic regression, PCA, linear and nonlinear
autoencoders, CompressedNet in each mode and the same architecture from random
initialisation, each through int8, pruning, weight sharing and coding), writes
``report.json``, ``report.md``, ``accuracy_vs_bytes.png``, the model files, checkpoints and
ONNX files into ``--out``, and prints a progress bar, then the short answer: the recommended
file (chosen on validation), its bytes, ratio and test accuracy with its interval, and one
frontier line per family; the full table is in report.md. Mistakes (unknown mode, data without labels,
a latent not smaller than the input, labels that make no sense, an unusable ``--out``, widths
too large for memory) print one line and exit with 2.

``--out`` must be empty or hold an earlier run's outputs; ``--overwrite`` replaces those (and
only those: a folder that holds anything else is refused, nothing removed), so what the folder
holds afterwards is exactly this run's outputs (listed in ``outputs.json``). The folder is
locked for the run (one line naming the other run's pid if it is busy).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

try:
    from ..cli import UsageError
except ImportError:  # pragma: no cover - the top-level CLI not present

    class UsageError(Exception):  # type: ignore[no-redef]
        """A mistake in the command line or its inputs: one line, exit code 2."""


__all__ = ["add_arguments", "run", "settings_from_args", "apply_threads"]


def add_common_arguments(parser: argparse.ArgumentParser, out_default: str) -> None:
    """Options shared by ``aecomp compress`` and ``aecomp demo``."""
    from .pipeline import CompressSettings

    d = CompressSettings()
    a = parser.add_argument
    a("--latent", type=int, default=d.latent, metavar="K", help=f"width of the autoencoder's code (default: {d.latent})")
    a("--mode", default=d.mode, help="replace | frozen | finetune | all (default: all)")
    a("--out", default=out_default, metavar="DIR", help=f"output folder (default: {out_default})")
    a("--hidden", default=None, metavar="H[,H...]",
      help="encoder hidden widths, e.g. 32 (default: twice the latent when that is below the input width)")
    a("--ae-epochs", type=int, default=d.ae_epochs, dest="ae_epochs",
      help=f"autoencoder epochs (default: {d.ae_epochs}, then a third as many at a tenth of the rate)")
    a("--epochs", type=int, default=d.epochs, help=f"classifier epochs (default: {d.epochs})")
    a("--lr", type=float, default=d.lr, help=f"learning rate of the baseline and replace mode (default: {d.lr:g})")
    a("--batch-size", type=int, default=d.batch_size, dest="batch_size", help=f"batch size (default: {d.batch_size})")
    a("--sparsity", type=float, default=d.sparsity,
      help=f"fraction of the baseline's weights pruned (default: {d.sparsity:g})")
    a("--sparsity-compressed", type=float, default=d.sparsity_compressed, dest="sparsity_compressed",
      help=f"fraction of a compressed net's weights pruned (default: {d.sparsity_compressed:g})")
    a("--prune-epochs", type=int, default=d.prune_epochs, dest="prune_epochs",
      help=f"retraining epochs after pruning (default: {d.prune_epochs})")
    a("--prune-lr", type=float, default=d.prune_lr, dest="prune_lr",
      help=f"learning rate of the retraining after pruning (default: {d.prune_lr:g})")
    a("--seed", type=int, default=d.seed, help="seed for the split, initialisation and batch order (default: 0)")
    a("--test-fraction", type=float, default=d.test_fraction, dest="test_fraction",
      help=f"test share of the samples (default: {d.test_fraction:g})")
    a("--val-fraction", type=float, default=d.val_fraction, dest="val_fraction",
      help=f"validation share (default: {d.val_fraction:g})")
    a("--latency-repeats", type=int, default=d.latency_repeats, dest="latency_repeats",
      help=f"timed runs per latency at batch 1 (a quarter as many at batch 256; default: {d.latency_repeats})")
    a("--no-export", action="store_true", dest="no_export", help="skip the ONNX files")
    # issue 14: trained weight sharing, entropy-coded files, distillation
    a("--bits", default=",".join(map(str, d.bits)), metavar="B[,B...]",
      help=f"bits of the shared weights of each pruned net, 2..8 (default: {','.join(map(str, d.bits))})")
    a("--share-epochs", type=int, default=d.share_epochs, dest="share_epochs",
      help=f"codebook fine-tuning epochs (default: {d.share_epochs})")
    a("--share-lr", type=float, default=d.share_lr, dest="share_lr",
      help=f"codebook fine-tuning learning rate (default: {d.share_lr:g})")
    a("--distill", action=argparse.BooleanOptionalAction, default=d.distill,
      help="also train each compressed net distilled from the baseline (the -kd rows; default: on)")
    a("--temperature", type=float, default=d.temperature, help=f"distillation temperature (default: {d.temperature:g})")
    a("--alpha", type=float, default=d.alpha,
      help=f"weight of the soft targets in the distillation loss, the labels get 1 - alpha (default: {d.alpha:g})")
    a("--backend", default=None, help="op backend: reference | cpu | triton | cuda (default: automatic)")
    a("--threads", type=int, default=1,
      help="torch threads for training (default: 1; these layers are too small to split across threads, "
           "0 = torch's default)")
    from ..data import SCALES

    a("--scale", default=None, metavar="|".join(SCALES),
      help="input scaling fitted on the training split (default: auto: uint8 /255, [0, 1] data as is, other "
           "images one global min-max, tables per-feature min-max); with --model also a declared one: K, "
           "SHIFT,SCALE or FILE.npz")
    a("--overwrite", action="store_true", default=d.overwrite,
      help="replace the outputs of an earlier run in --out (default: refuse a folder that is not empty)")
    a("--max-classes", type=int, default=d.max_classes, dest="max_classes",
      help=f"refuse labels that imply more classes than this (default: {d.max_classes})")
    a("--repeats", type=int, default=d.repeats,
      help=f"runs of the whole job, each with a new stratified split and new seeds (--seed + r); accuracies "
           f"are reported as mean and spread over them (default: {d.repeats})")
    a("--points", type=float, default=d.points,
      help=f"the recommendation: the smallest file whose mean validation accuracy is within this many points "
           f"of the baseline's (default: {d.points:g})")
    a("--early-stopping", type=float, default=d.early_stopping, dest="early_stopping",
      help=f"share of the training split held out to pick each classifier's best epoch, so that the validation "
           f"split only ranks models (0: train on all of it, keep the last epoch; default: {d.early_stopping:g})")
    a("--fold-inputs", action=argparse.BooleanOptionalAction, default=d.fold_inputs, dest="fold_inputs",
      help="pruning first keeps only the input columns that span the training inputs (pivoted QR), folding the "
           "others' weights into them (default: on)")
    a("--mixed-bits", action=argparse.BooleanOptionalAction, default=d.mixed_bits, dest="mixed_bits",
      help="also a -sharedmix row per family: per-layer bit widths, each layer's fewest bits within "
           f"{d.bits_tolerance:g} points of the float32 net on the training split (default: on)")
    a("--baselines", action=argparse.BooleanOptionalAction, default=d.baselines,
      help="also train the right-sized baselines: logistic regression on the inputs, and the CompressedNet "
           "architecture from random initialisation (default: on)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits (default) | digits28 | mnist:DIR | FILE.npz/.csv with labels")
    add_common_arguments(parser, "aecomp-compress")
    from . import own_cli

    own_cli.add_arguments(parser)  # --model, --encoder, --unlabeled, --labels, --study (bring your own)


def _parse_hidden(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    if text.strip() in ("", "none"):
        return []
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated integers like 32 or 64,32, got {text!r}") from None


def _parse_bits(text: str) -> List[int]:
    try:
        bits = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        bits = []
    if not bits or any(not 2 <= b <= 8 for b in bits):
        raise UsageError(f"--bits must be comma-separated integers in 2..8 like 4 or 3,4,5, got {text!r}")
    return bits


def settings_from_args(args: argparse.Namespace):
    from .net import MODES
    from .pipeline import CompressSettings

    if args.mode not in MODES + ("all",):
        raise UsageError(f"unknown --mode {args.mode!r}; expected one of {', '.join(MODES)} or all")
    if args.backend is not None:
        import aecomp

        if args.backend not in aecomp.BACKENDS:
            raise UsageError(f"unknown --backend {args.backend!r}; expected one of {', '.join(aecomp.BACKENDS)}")
        ok, reason = aecomp.available_backends()[args.backend]
        if not ok:
            raise UsageError(f"--backend {args.backend} is not available here: {reason}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    if args.latency_repeats < 1:
        raise UsageError(f"--latency-repeats must be >= 1, got {args.latency_repeats}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    from ..data import SCALES

    scale = args.scale if args.scale is not None else CompressSettings().scale
    if scale not in SCALES:  # a declared scaling (K, SHIFT,SCALE, FILE.npz) belongs to --model
        raise UsageError(f"unknown --scale {scale!r}; expected one of {', '.join(SCALES)} (a declared scaling such as "
                         f"255 or SHIFT,SCALE describes a model brought with --model)")
    return CompressSettings(
        data=args.data, latent=args.latent, mode=args.mode, out=args.out, hidden=_parse_hidden(args.hidden),
        ae_epochs=args.ae_epochs, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        sparsity=args.sparsity, sparsity_compressed=args.sparsity_compressed, prune_epochs=args.prune_epochs,
        prune_lr=args.prune_lr,
        seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        latency_repeats=args.latency_repeats, export=not args.no_export, backend=args.backend,
        bits=_parse_bits(args.bits), share_epochs=args.share_epochs, share_lr=args.share_lr, distill=args.distill,
        temperature=args.temperature, alpha=args.alpha,
        scale=scale, overwrite=args.overwrite, max_classes=args.max_classes, repeats=args.repeats,
        points=args.points, baselines=args.baselines, early_stopping=args.early_stopping,
        fold_inputs=args.fold_inputs, mixed_bits=args.mixed_bits)


def apply_threads(n: int) -> int:
    """Set torch's intra-op threads (0: leave torch's default); returns the number in use."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def files_summary(out, files) -> List[str]:
    """What a run wrote, one line per top-level entry: files by name, folders with their counts by
    kind (``models/: 40 .safetensors, 36 .aecc``); ``outputs.json`` lists every file."""
    from collections import Counter
    from pathlib import Path

    out = Path(out)
    groups = {}
    for f in files:
        rel = Path(f).relative_to(out)
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(rel)
    lines = [f"  {out / rel}" for rel in groups.pop("", [])]
    for folder, rels in sorted(groups.items()):
        if folder == "checkpoints":
            kinds = f"{len({r.parts[1] for r in rels})} models"
        else:
            kinds = ", ".join(f"{n} {ext or 'other'}" for ext, n in sorted(Counter(r.suffix for r in rels).items()))
        lines.append(f"  {out / folder}/ ({kinds})")
    return lines


def _scaling_line(doc) -> str:
    """The input scaling the run fitted and every model file applies (issue 23 item 10), and the label map."""
    from ..data import Preprocessing

    if not isinstance(doc.get("input_scaling"), dict):
        return ""
    line = f"input scaling (in every model file): {Preprocessing.from_dict(doc['input_scaling']).describe()}"
    if doc.get("labels"):
        line += f"; labels {', '.join(map(str, doc['labels']))} are the classes 0..{len(doc['labels']) - 1}"
    return line


def print_result(result, stream=None) -> None:
    """The short answer (``report.answer_lines``), then what was written, on ``stream`` (stdout)."""
    stream = stream or sys.stdout
    for line in result["answer"]:
        print(line, file=stream)
    out = result["paths"]["json"].parent
    scaling = _scaling_line(result["report"])
    if scaling:
        print(scaling, file=stream)
    print(f"full table: {result['paths']['md']}", file=stream)
    print(f"wrote ({result['seconds']:.1f} s, {result['report']['torch_threads']} torch thread(s) for training; "
          f"every file is listed in {out / 'outputs.json'}):", file=stream)
    for line in files_summary(out, result["files"]):
        print(line, file=stream)


def run(args: argparse.Namespace) -> int:
    from . import own_cli
    from .pipeline import CompressError, run_compression

    if own_cli.wanted(args):
        return own_cli.run(args)
    settings = settings_from_args(args)
    apply_threads(args.threads)
    try:
        result = run_compression(settings)
    except CompressError as exc:
        raise UsageError(str(exc)) from None
    except (MemoryError, RuntimeError) as exc:
        text = str(exc).strip()
        if not isinstance(exc, MemoryError) and "alloc" not in text.lower() and "out of memory" not in text.lower():
            raise
        raise UsageError(f"ran out of memory ({type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}); "
                         f"use a smaller --latent/--hidden or --batch-size") from None
    print_result(result)
    return 0
