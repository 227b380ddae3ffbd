"""Run selected tests under Triton's interpreter from a normal pytest process.

Triton decides once per process, when it is imported, whether kernels are compiled or
interpreted (``TRITON_INTERPRET``): triton's own ``tl.cdiv``/``tl.sum`` and every kernel are
fixed at definition time, so the variable cannot be flipped per test. A plain ``pytest tests/``
therefore runs with compiled kernels (which the AOT test and the GPU tests need), and the
tests decorated with :func:`interpreted` are shipped to one worker process started with
``TRITON_INTERPRET=1`` (spawned on first use, reused by every such test, one at a time).

In the worker, and in any process started with ``TRITON_INTERPRET=1``, the decorator does
nothing and the test runs in place. The worker seeds torch with the parent's current seed
(``torch.initial_seed()``), so ``AECOMP_TEST_SEED`` replays a worker test too. Test
arguments must be picklable (parametrize values, not fixtures). The worker loads the test
file by path and calls the undecorated function; a failure comes back as the worker's
traceback, a ``pytest.skip`` as a skip.

This module imports nothing heavy at top level: the worker must set ``TRITON_INTERPRET``
before anything imports triton.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import inspect
import os
import sys
import traceback

TIMEOUT_S = 600
_POOL = None
_LOADED = {}


def interpreter_active() -> bool:
    """Whether this process defines its Triton kernels for the interpreter."""
    from aecomp.kernels.linear_act import INTERPRETED

    return INTERPRETED


def _init_worker(tests_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    if "triton" in sys.modules:  # would mean something imported it before us: kernels compiled
        raise RuntimeError("triton was imported before TRITON_INTERPRET was set in the worker")
    import torch

    torch.set_num_threads(1)


def _load(path: str):
    mod = _LOADED.get(path)
    if mod is None:
        name = "_triton_interp_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _LOADED[path] = mod
    return mod


def _run(path: str, name: str, kwargs: dict, seed: int):
    """In the worker: run one test; returns (status, detail), status in ok/skip/fail."""
    try:
        import torch

        torch.manual_seed(seed)
        if not interpreter_active():
            raise RuntimeError("the worker's kernels are not interpreted (TRITON_INTERPRET was not honoured)")
        getattr(_load(path), name)(**kwargs)
        return "ok", ""
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        if type(exc).__name__ == "Skipped":
            return "skip", str(exc)
        return "fail", traceback.format_exc()


def _pool():
    global _POOL
    if _POOL is None:
        import concurrent.futures
        import multiprocessing

        tests_dir = os.path.dirname(os.path.abspath(__file__))
        _POOL = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(tests_dir,))
        atexit.register(_POOL.shutdown)
    return _POOL


def run_in_worker(path: str, name: str, kwargs: dict, seed: int):
    global _POOL
    import concurrent.futures

    try:
        return _pool().submit(_run, path, name, kwargs, seed).result(timeout=TIMEOUT_S)
    except concurrent.futures.process.BrokenProcessPool as exc:
        _POOL = None  # the next test starts a fresh worker
        return "fail", f"the interpreter worker died: {exc!r}"


def interpreted(fn):
    """Run the test ``fn`` in a process whose Triton kernels are interpreted."""
    if interpreter_active():
        return fn
    path = os.path.abspath(inspect.getfile(fn))

    @functools.wraps(fn)
    def proxy(*args, **kwargs):
        import pytest
        import torch

        if args:
            raise TypeError("interpreted tests take keyword (parametrize) arguments only")
        # the worker continues from this process's seed (tests/conftest.py draws one per test)
        status, detail = run_in_worker(path, fn.__name__, kwargs, torch.initial_seed())
        if status == "skip":
            pytest.skip(detail)
        if status == "fail":
            pytest.fail(f"in the TRITON_INTERPRET=1 worker:\n{detail}", pytrace=False)

    return proxy
