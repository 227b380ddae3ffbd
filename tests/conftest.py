"""Shared test setup.

Every test gets fresh random data: the seed is drawn per test and printed when the test
fails, so a failure can be replayed with AECOMP_TEST_SEED=<seed>.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

import aecomp

# Single-threaded: on these 2-vCPU machines a 2-thread small matmul was measured 80x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    seed = int(os.environ.get("AECOMP_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("aecomp", f"replay with AECOMP_TEST_SEED={seeds[0]}"))


def cpp_backends():
    """Backends implemented by aecomp._C that can run on CPU tensors here."""
    return [name for name in ("cpu",) if aecomp.available_backends()[name][0]]


requires_cpu_ext = pytest.mark.skipif(
    not aecomp.available_backends()["cpu"][0], reason="aecomp._C is not built: pip install --no-build-isolation -e ."
)
