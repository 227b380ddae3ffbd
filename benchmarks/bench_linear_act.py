"""linear_act, cpu backend against torch eager (F.linear + activation), single-threaded.

    pytest benchmarks/bench_linear_act.py --benchmark-only --benchmark-group-by=param:layer,param:batch

Targets: forward+backward no slower than eager at every reference layer, batch 64 and 1024
(issue 2); at least 1.3x at batch 64 on each of the six layers (issue 17: float32 runs on the
microkernels of csrc/cpu/microkernel.h below the crossover).
"""
from __future__ import annotations

import pytest
import torch

import aecomp
from aecomp import ops

from ._layers import REFERENCE_LAYERS, eager_linear_act, layer_inputs

pytestmark = pytest.mark.skipif(not aecomp.available_backends()["cpu"][0], reason="aecomp._C not built")

IMPLS = {
    "eager": eager_linear_act,
    "aecomp_cpu": lambda x, w, b, a: ops.linear_act(x, w, b, a, backend="cpu"),
}
LAYERS = {f"{k}x{n}_{a}": (k, n, a) for k, n, a in REFERENCE_LAYERS}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", [64, 1024])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_forward(benchmark, impl, batch, layer):
    k, n, act = LAYERS[layer]
    x, w, b = layer_inputs(batch, k, n, requires_grad=False)
    fn = IMPLS[impl]
    with torch.no_grad():
        benchmark(fn, x, w, b, act)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", [64, 1024])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_forward_backward(benchmark, impl, batch, layer):
    k, n, act = LAYERS[layer]
    x, w, b = layer_inputs(batch, k, n)
    g = torch.rand(batch, n)
    fn = IMPLS[impl]

    def step():
        w.grad = None
        b.grad = None
        fn(x, w, b, act).backward(g)

    benchmark(step)
