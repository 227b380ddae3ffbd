"""``aecomp demo``: the main job in one command, on the digits bundled with scikit-learn.

Trains the baseline classifier (LeNet-300-100), PCA and two autoencoders, compresses the
classifier with the autoencoder's encoder in all three modes (replace, frozen, finetune),
prunes and int8-quantizes the baseline and each compressed net, exports ONNX files, and ends
with the report table and the paths of every file it wrote (default folder ``./aecomp-demo``).
No download, no GPU; it takes well under two minutes on one CPU thread.

It is ``aecomp compress --data digits --latent 16 --mode all`` with the demo's output folder;
every option of ``aecomp compress`` except ``--data`` applies, and ``--overwrite`` is on: running
the demo again replaces its earlier outputs (only those; a folder holding anything else is refused).
"""
from __future__ import annotations

import argparse

from .compress.cli import add_common_arguments

__all__ = ["add_arguments", "run"]

DEFAULT_OUT = "aecomp-demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, DEFAULT_OUT)
    parser.set_defaults(data="digits", overwrite=True)


def run(args: argparse.Namespace) -> int:
    """`aecomp compress` on the embedded digits, with the demo's defaults."""
    from .compress.cli import run as run_compress

    args.data = "digits"
    return run_compress(args)
