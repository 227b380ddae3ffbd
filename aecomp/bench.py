"""``aecomp bench``: runs the benchmark matrix of a source checkout (``benchmarks/run.py``).

The runner and its workloads live in the top-level ``benchmarks/`` folder of a source checkout:
they write their results into it and render the README from it, so they are not installed with
the package, and the library never imports them. This subcommand only finds the checkout --
``AECOMP_SOURCE``, else the folder above this package (an editable install, what
``scripts/setup.sh`` makes), else the current directory -- and runs its ``benchmarks/run.py`` in
a child process of the same Python, in the current directory (``./runs/bench`` and relative
paths stay the user's), every argument after ``aecomp bench`` passed on unchanged (``aecomp bench
--help`` is the runner's help). The child imports the checkout's ``aecomp`` too, so the rows'
git commit names the code that was measured. Without a checkout it says so and exits 2.
Results go to ``./runs/bench/`` unless ``--results-dir``; only ``--publish`` appends to the
tracked ``benchmarks/results/`` (never a ``--smoke`` run).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

_MISSING = ("aecomp bench needs the benchmarks/ folder of an aecomp source checkout (it is not installed with the "
            "package); run it from the checkout, or set AECOMP_SOURCE to the checkout's path")


def _candidates():
    env = os.environ.get("AECOMP_SOURCE")
    if env:
        yield Path(env)
    yield Path(__file__).resolve().parent.parent  # editable install: the checkout holding aecomp/
    yield Path.cwd()


def _find_checkout() -> Optional[Path]:
    for root in _candidates():
        if (root / "benchmarks" / "run.py").is_file():
            return root.resolve()
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # every argument, options and --help included, is the runner's: nothing is parsed here but
    # the subcommand's defaults (its run function)
    parse_defaults = parser.parse_known_args

    def take_all(args=None, namespace=None):
        namespace, _ = parse_defaults([], namespace)
        namespace.runner_args = list(args or [])
        return namespace, []

    parser.parse_known_args = take_all


def run(args: argparse.Namespace) -> int:
    root = _find_checkout()
    if root is None:
        from .cli import UsageError

        raise UsageError(_MISSING)
    return subprocess.call([sys.executable, str(root / "benchmarks" / "run.py"), *args.runner_args])
