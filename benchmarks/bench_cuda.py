"""The cuda backend (csrc/cuda) on a GPU, with pytest-benchmark::

    pytest benchmarks/bench_cuda.py --benchmark-json out.json [-k "4096 and fwd"]

Skipped without a GPU or without the CUDA kernels built into aecomp._C.

Compared in one process, on random data, at the six layers of the reference autoencoder
(784-128-64-32-64-128-784 with its activations), bfloat16, batch 4096 and 65536:

* ``cuda``: ``aecomp.ops.linear_act(..., backend="cuda")`` (the public call, dispatch included);
* ``triton``: the same call with ``backend="triton"`` (skipped if that backend is unavailable);
* ``eager``: ``F.linear`` followed by the activation (cuBLAS + an elementwise kernel);
* ``compile``: ``torch.compile(eager, fullgraph=True)``, default mode, compiled before timing.

Forward alone at both batches, forward + backward (gradients of x, W and b) at 65536. Then a
4096^3 bfloat16 GEMM (``linear_act`` with no bias and no activation) against ``torch.mm`` and
``mse_loss`` forward + backward on 65536 x 784. Every round synchronizes the GPU, so a round is
the wall time of the whole call; ``extra_info`` holds the FLOPs and the minimum bytes moved
(every operand read once, every result written once), from which TFLOP/s and GB/s follow.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks._layers import REFERENCE_LAYERS, eager_linear_act

HAS_GPU = torch.cuda.is_available()


def _backend_ok(name: str) -> bool:
    if not HAS_GPU:
        return False
    import aecomp

    return bool(aecomp.available_backends().get(name, (False, ""))[0])


CUDA_OK = _backend_ok("cuda")
pytestmark = [
    pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU"),
    pytest.mark.skipif(HAS_GPU and not CUDA_OK, reason="the cuda backend is not built (see `aecomp info`)"),
]

IMPLS = ["cuda", "triton", "eager", "compile"]
_LAYER_IDS = [f"{k}x{n}-{a}" for k, n, a in REFERENCE_LAYERS]


def _impl(name: str):
    if name in ("cuda", "triton"):
        if not _backend_ok(name):
            pytest.skip(f"the {name} backend is not available")
        from aecomp import ops

        return lambda x, w, b, act: ops.linear_act(x, w, b, act, backend=name)
    if name == "eager":
        return eager_linear_act
    # a fresh cache per shape: no dynamic-shape kernels, and the recompile limit never sends
    # the function back to eager
    torch._dynamo.reset()
    return torch.compile(eager_linear_act, fullgraph=True)


def _inputs(batch, k, n, dtype, grad):
    x = torch.randn(batch, k, device="cuda", dtype=dtype).requires_grad_(grad)
    w = (torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype).requires_grad_(grad)
    b = (torch.rand(n, device="cuda") * 0.2 - 0.1).to(dtype).requires_grad_(grad)
    g = torch.randn(batch, n, device="cuda", dtype=dtype)
    return x, w, b, g


def _synced(fn):
    def step():
        fn()
        torch.cuda.synchronize()

    return step


def _info(benchmark, flops, nbytes):
    benchmark.extra_info.update(flops=flops, bytes=nbytes, gpu=torch.cuda.get_device_name(),
                                torch=torch.__version__)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [4096, 65536])
@pytest.mark.parametrize("layer", REFERENCE_LAYERS, ids=_LAYER_IDS)
def test_linear_act_fwd_bf16(benchmark, layer, batch, impl):
    k, n, act = layer
    fn = _impl(impl)
    x, w, b, _ = _inputs(batch, k, n, torch.bfloat16, False)
    with torch.no_grad():
        fn(x, w, b, act)  # compile / autotune outside the measurement
        _info(benchmark, 2 * batch * k * n, 2 * (batch * k + n * k + n + batch * n))
        benchmark.pedantic(_synced(lambda: fn(x, w, b, act)), rounds=50, warmup_rounds=5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", REFERENCE_LAYERS, ids=_LAYER_IDS)
def test_linear_act_fwd_bwd_bf16_65536(benchmark, layer, impl):
    k, n, act = layer
    fn = _impl(impl)
    batch = 65536
    x, w, b, g = _inputs(batch, k, n, torch.bfloat16, True)

    def run():
        x.grad = w.grad = b.grad = None
        fn(x, w, b, act).backward(g)

    run()
    # forward, dx and dW: 3 GEMMs; bytes: x, W, b, y written, then g, y, W, x read and
    # dx, dW, db written
    _info(benchmark, 6 * batch * k * n,
          2 * (batch * k + n * k + n + batch * n) + 2 * (2 * batch * n + n * k + batch * k + batch * k + n * k + n))
    benchmark.pedantic(_synced(run), rounds=30, warmup_rounds=3)


@pytest.mark.parametrize("impl", ["cuda", "torch.mm"])
def test_gemm_4096_bf16(benchmark, impl):
    """The GEMM alone: linear_act(x, W, None, "none") = x W^T against torch.mm(x, W.t())."""
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    if impl == "cuda":
        fn = _impl("cuda")

        def run():
            return fn(x, w, None, "none")
    else:
        def run():
            return torch.mm(x, w.t())

    run()
    _info(benchmark, 2 * 4096**3, 3 * 2 * 4096**2)
    benchmark.pedantic(_synced(run), rounds=30, warmup_rounds=5)


@pytest.mark.parametrize("impl", ["cuda", "triton", "eager"])
def test_mse_fwd_bwd_65536x784(benchmark, impl):
    a = torch.rand(65536, 784, device="cuda", requires_grad=True)
    t = torch.rand(65536, 784, device="cuda")
    if impl == "eager":
        fn = F.mse_loss
    else:
        if not _backend_ok(impl):
            pytest.skip(f"the {impl} backend is not available")
        from aecomp import ops

        def fn(p, q):
            return ops.mse_loss(p, q, "mean", backend=impl)

    def run():
        a.grad = None
        fn(a, t).backward()

    run()
    _info(benchmark, 0, 4 * a.numel() * 3)  # read a, t; write d a
    benchmark.pedantic(_synced(run), rounds=30, warmup_rounds=3)
