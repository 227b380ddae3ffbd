"""The register-blocked microkernels of the CPU backend (csrc/cpu/microkernel.h, dense_gemm.h)
against the float64 reference: forward (bias + activation epilogue), dgrad (act' of the layer
below in the epilogue), wgrad (+ bias gradient from the packing pass), on odd shapes
(1, 7, 1023, 784; K not a multiple of the vector width; M/N edges of the MR x NR tile) and
non-contiguous inputs; every ISA path (AECOMP_CPU_ISA caps the ISA, in a subprocess); results
independent of the thread count; the crossover switch (_set_cpu_gemm) on the public ops.

Tolerance: float32 FMA chains against float64, rtol 1e-5 and atol 1e-5 * sqrt(K) (entries of
these products grow like sqrt(K) for the unit-variance data used here).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from aecomp import _ext

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}


def _dact(y, act):
    if act == "relu":
        return (y > 0).to(y.dtype)
    if act == "sigmoid":
        return y * (1 - y)
    return torch.ones_like(y)


def _close(got, want, k):
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5 * max(k, 1) ** 0.5)


def _noncontig(t):
    """The same values as a view with a row stride wider than the row (a column slice)."""
    wide = torch.empty(t.shape[0], t.shape[1] + 3, dtype=t.dtype)
    wide[:, 1:-2] = t
    return wide[:, 1:-2]


SHAPES = [(1, 1, 1), (1, 784, 128), (7, 7, 7), (7, 33, 17), (64, 784, 128), (64, 32, 64), (9, 128, 784),
          (1023, 64, 32), (13, 1023, 47), (65, 17, 1023)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ["none", "relu", "sigmoid"])
def test_forward_matches_reference(m, k, n, act):
    C = _ext.load()[0]
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    for bias in (b, None):
        got = C._mk_linear_fwd(x, w, bias, act)
        want = _ACT[act](F.linear(x.double(), w.double(), None if bias is None else bias.double()))
        _close(got, want, k)
    got = C._mk_linear_fwd(_noncontig(x), w.t().contiguous().t(), b, act)  # strided x, column-major w
    _close(got, _ACT[act](F.linear(x.double(), w.double(), b.double())), k)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ["none", "relu", "sigmoid"])
def test_dgrad_applies_act_prime_of_the_layer_below(m, k, n, act):
    C = _ext.load()[0]
    gz, w = torch.randn(m, n), torch.randn(n, k)
    y_below = _ACT[act](torch.randn(m, k))  # a saved output of the layer below
    got = C._mk_dgrad(_noncontig(gz), w, y_below, act)
    want = (gz.double() @ w.double()) * _dact(y_below.double(), act)
    _close(got, want, n)
    _close(C._mk_dgrad(gz, w, None, "none"), gz.double() @ w.double(), n)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_wgrad_and_bias_gradient(m, k, n):
    C = _ext.load()[0]
    gz, h = torch.randn(m, n), torch.randn(m, k)
    dw, db = C._mk_wgrad(_noncontig(gz), _noncontig(h))
    _close(dw, gz.double().t() @ h.double(), m)
    _close(db, gz.double().sum(0), m)


def test_zero_sizes():
    C = _ext.load()[0]
    assert C._mk_linear_fwd(torch.randn(0, 5), torch.randn(3, 5), None, "relu").shape == (0, 3)
    y = C._mk_linear_fwd(torch.randn(4, 0), torch.randn(3, 0), torch.ones(3), "none")  # K = 0: just the bias
    assert torch.equal(y, torch.ones(4, 3))
    dw, db = C._mk_wgrad(torch.randn(0, 3), torch.randn(0, 5))
    assert torch.equal(dw, torch.zeros(3, 5)) and torch.equal(db, torch.zeros(3))


def test_nan_propagates_through_the_epilogues():
    C = _ext.load()[0]
    x = torch.randn(3, 20)
    x[1, 4] = float("nan")
    for act in ("none", "relu", "sigmoid"):
        y = C._mk_linear_fwd(x, torch.randn(5, 20), torch.randn(5), act)
        assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2]]).any()


def test_results_do_not_depend_on_the_thread_count():
    C = _ext.load()[0]
    # 1023 x 512 x 1024 multiply-adds: above the one-thread cutoff (2^28), so 2 threads split it
    x, w, b = torch.randn(1023, 1024), torch.randn(512, 1024), torch.randn(512)
    gz, h = torch.randn(1023, 512), torch.randn(1023, 1024)
    before = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append((C._mk_linear_fwd(x, w, b, "sigmoid"), C._mk_dgrad(gz, w, h, "relu"), *C._mk_wgrad(gz, h)))
    finally:
        torch.set_num_threads(before)
    for a, b_ in zip(*outs):
        assert torch.equal(a, b_)


_ISA_SCRIPT = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from aecomp import _ext
    C = _ext.load()[0]
    torch.manual_seed(0)
    print(C._cpu_isa())
    for m, k, n in [(1, 5, 3), (7, 33, 17), (13, 100, 40), (64, 784, 128)]:
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        tol = dict(rtol=1e-5, atol=1e-5 * k ** 0.5)
        for act, f in (("none", lambda t: t), ("relu", torch.relu), ("sigmoid", torch.sigmoid)):
            torch.testing.assert_close(C._mk_linear_fwd(x, w, b, act), f(F.linear(x.double(), w.double(), b.double())).float(), **tol)
        gz, y = torch.randn(m, n), torch.rand(m, k)
        torch.testing.assert_close(C._mk_dgrad(gz, w, y, "sigmoid"), ((gz.double() @ w.double()) * y * (1 - y)).float(),
                                   rtol=1e-5, atol=1e-5 * n ** 0.5)
        dw, db = C._mk_wgrad(gz, x)
        torch.testing.assert_close(dw, (gz.double().t() @ x.double()).float(), rtol=1e-5, atol=1e-5 * m ** 0.5)
        torch.testing.assert_close(db, gz.double().sum(0).float(), rtol=1e-5, atol=1e-5 * m ** 0.5)
    # the optimizer epilogues of this ISA against torch.optim (column edges: widths 45, 23, 7)
    import copy
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep, PlainStep
    for make in (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
                 lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)):
        m1 = Autoencoder((45, 23, 7)); m2 = copy.deepcopy(m1)
        f, p = FusedStep(m1, make(m1.parameters())), PlainStep(m2.loss, make(m2.parameters()))
        assert f.uses_fused_optimizer(torch.rand(2, 45))
        for _ in range(5):
            x = torch.rand(13, 45); f.step(x); p.step(x)
        # Adam divides by sqrt(v): where a gradient is tiny, rounding in it moves the update by a
        # sizeable part of lr, so two correct implementations differ there by up to ~1e-2 of lr after
        # 5 steps (seen 9.7e-5 with lr 1e-2 on an unseeded run); a wrong formula is off by ~lr
        for a, b in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)
    print("ok")
""")


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_isa_path_matches_reference(isa):
    env = dict(os.environ, AECOMP_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got_isa, status = out.stdout.split()[:2]
    assert status == "ok"
    if isa == "generic":
        assert got_isa == "generic"  # the cap always reaches down to the portable path
    else:
        assert got_isa in ("avx2", "generic")


@pytest.mark.parametrize("path", ["mk", "aten"])
def test_public_ops_on_both_sides_of_the_crossover(path):
    """linear_act and the mlp chain give the reference result on either GEMM path."""
    from aecomp import ops

    C = _ext.load()[0]
    old = C._get_cpu_gemm()
    C._set_cpu_gemm(path)
    try:
        dims, acts = (37, 19, 7, 33), ("relu", "none", "sigmoid")
        ws = [(torch.randn(dims[i + 1], dims[i]) / dims[i] ** 0.5).requires_grad_() for i in range(3)]
        bs = [(torch.randn(dims[i + 1]) * 0.1).requires_grad_() for i in range(3)]
        x = torch.rand(23, 37, requires_grad=True)
        y = ops.mlp(x, ws, bs, acts, backend="cpu")
        y1 = ops.linear_act(x, ws[0], bs[0], "relu", backend="cpu")
        d = [t.detach().double().requires_grad_() for t in [x] + ws + bs]
        h = d[0]
        for i in range(3):
            h = _ACT[acts[i]](F.linear(h, d[1 + i], d[4 + i]))
        h1 = torch.relu(F.linear(d[0], d[1], d[4]))
        torch.testing.assert_close(y, h.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y1, h1.float(), rtol=1e-5, atol=1e-5)
        g, g1 = torch.randn_like(y), torch.randn_like(y1)
        got = torch.autograd.grad((y * g).sum() + (y1 * g1).sum(), [x] + ws + bs)
        want = torch.autograd.grad((h * g.double()).sum() + (h1 * g1.double()).sum(), d)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)
    finally:
        C._set_cpu_gemm(old)
