"""The ``aecomp`` command line.

Subcommands live in the modules that implement them; each provides
``add_arguments(parser)`` and ``run(args) -> int``. A module that is missing (a layer not
built yet) leaves its subcommand out. Errors the user can fix print one line
(``aecomp: error: ...``) and exit with code 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, help)
SUBCOMMANDS = {
    "info": ("aecomp._info", "show the backends available here and why any is missing"),
    "train": ("aecomp.train.cli", "train an autoencoder"),
    "compress": ("aecomp.compress.cli", "compress a classifier with an autoencoder's encoder and report"),
    "export": ("aecomp.compress.export_cli", "export a checkpoint to ONNX"),
    "demo": ("aecomp.demo", "the main job: train, compress and report on the embedded digits"),
    "bench": ("aecomp.bench", "run the benchmark matrix"),
    "fl": ("aecomp.fl.cli", "federated learning with autoencoder-compressed clients, on Flower"),
}


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit code 2."""


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (the others are
    listed for --help but cost nothing: `aecomp info` need not import the benchmark runner)."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="aecomp", description="Fused kernels for autoencoders and network compression.")
    parser.add_argument("--version", action="version", version=f"aecomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                p.set_defaults(_missing=f"'{name}' is not available in this installation ({exc})")
                continue
            raise
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(args_list)
    if getattr(args, "_missing", None):
        print(f"aecomp: error: {args._missing}", file=sys.stderr)
        return 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        print(f"aecomp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aecomp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
