"""``aecomp demo``: the main job in one command, on the digits bundled with scikit-learn.

Trains the baseline classifier (LeNet-300-100), the right-sized baselines (logistic regression,
the CompressedNet architecture from random initialisation), PCA and two autoencoders,
compresses the classifier with the autoencoder's encoder in all three modes (replace, frozen,
finetune), takes every classifier through int8, pruning, weight sharing and entropy coding,
exports ONNX files, and prints the short answer: the file recommended on validation, its
bytes, ratio and test accuracy with its interval, and one frontier line per family (default
folder ``./aecomp-demo``; the full table is in its report.md). No download, no GPU.

It is ``aecomp compress --data digits`` with the demo's output folder and lighter defaults, so
that it stays under a minute on one CPU core: :data:`DEMO_REPEATS` repeats instead of
``compress``'s 3, no distilled (``-kd``) families, one shared bit width. It says so when it
starts. Every option of ``aecomp compress`` except ``--data`` applies, and ``--overwrite`` is on:
running the demo again replaces its earlier outputs (only those; a folder holding anything else
is refused).
"""
from __future__ import annotations

import argparse

from .compress.cli import add_common_arguments

__all__ = ["DEMO_REPEATS", "add_arguments", "run"]

DEFAULT_OUT = "aecomp-demo"
DEMO_REPEATS = 2
DEMO_BITS = "4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, DEFAULT_OUT)
    parser.set_defaults(data="digits", overwrite=True, repeats=DEMO_REPEATS, distill=False, bits=DEMO_BITS)


def run(args: argparse.Namespace) -> int:
    """`aecomp compress` on the embedded digits, with the demo's defaults."""
    from .compress.cli import run as run_compress

    args.data = "digits"
    print(f"demo: {args.repeats} repeat(s) of the whole job (aecomp compress defaults to 3), "
          f"{'with' if args.distill else 'no'} distilled families, shared bits {args.bits}; "
          f"aecomp compress --data digits runs the full protocol", flush=True)
    return run_compress(args)
