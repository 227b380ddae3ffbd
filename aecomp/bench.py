"""``aecomp bench``: the benchmark matrix (``benchmarks/run.py``) from the command line tool.

The runner lives in the top-level ``benchmarks/`` folder of a source checkout, which is not
installed with the package. With an editable install (``pip install -e .``, what
``scripts/setup.sh`` does) the checkout is the folder above this package, and ``aecomp bench``
finds it there; from elsewhere, run it from the checkout (``cd`` into it) or set
``AECOMP_SOURCE=/path/to/checkout``. Without a checkout the subcommand says so and exits 2.

Everything after ``aecomp bench`` is the runner's own options
(``python -m benchmarks.run --help``). Results go to ``./runs/bench/`` unless ``--results-dir``;
only ``--publish`` appends to the tracked ``benchmarks/results/`` (never a ``--smoke`` run).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

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


def _load_runner() -> Tuple[Optional[object], Optional[str]]:
    """``(benchmarks.run module, None)`` or ``(None, why not)``."""
    root = _find_checkout()
    if root is None:
        return None, _MISSING
    existing = sys.modules.get("benchmarks")
    if existing is not None:
        where = Path(getattr(existing, "__file__", "") or ".").resolve().parent
        if where != root / "benchmarks":
            return None, (f"another module named 'benchmarks' is already imported (from {where}); "
                          f"run `python -m benchmarks.run` from {root} instead")
    elif str(root) not in sys.path:
        # appended, not prepended: the checkout's top-level folders (kernels/, ...) never shadow
        # installed packages; the check below catches an installed package named 'benchmarks'
        sys.path.append(str(root))
    try:
        module = importlib.import_module("benchmarks.run")
    except Exception as exc:  # a broken checkout must not take the other subcommands down
        return None, f"could not import benchmarks.run from {root}: {type(exc).__name__}: {exc}"
    if Path(module.__file__).resolve().parent != root / "benchmarks":
        return None, f"'benchmarks' resolved to {module.__file__}, not the checkout at {root}"
    return module, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    module, why = _load_runner()
    if module is None:
        # no runner, so no option list: take whatever follows `aecomp bench` (an unknown option
        # must not end in argparse's "unrecognized arguments") and say what is missing in run()
        parse_defaults = parser.parse_known_args

        def swallow(args=None, namespace=None):
            namespace, _ = parse_defaults([], namespace)  # the subcommand's defaults (its run function)
            namespace.runner_args = list(args or [])
            namespace._bench_missing = why
            return namespace, []

        parser.parse_known_args = swallow
        parser.set_defaults(_bench_missing=why)
        return
    module.add_arguments(parser)
    parser.set_defaults(_bench_missing=None)


def run(args: argparse.Namespace) -> int:
    why = getattr(args, "_bench_missing", None)
    if why:
        from .cli import UsageError

        raise UsageError(why)
    module, why = _load_runner()
    if module is None:
        from .cli import UsageError

        raise UsageError(why)
    return module.run(args)
