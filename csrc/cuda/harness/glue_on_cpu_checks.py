"""Checks of the CUDA glue (ops_cuda.cpp) run on CPU tensors over the emulated kernels.

Run by tests/test_cuda_ops.py in a subprocess::

    python glue_on_cpu_checks.py /path/to/glue_emu.so

The library (built from glue_on_cpu.cpp) registers the glue for the CPU dispatch key over
aecomp._C's (it is loaded with RTLD_GLOBAL first: the schemas, autograd and the shared checks
come from there), so torch.ops.aecomp.* on CPU tensors run: autograd (ops.cpp) -> glue ->
launchers -> kernels on the CPU emulator. The emulator pretends to be an sm_90 GPU with 4 SMs,
so small problems take the same paths (tensor cores, SIMT fallback, split-K, copies of
misaligned operands) as large ones on a real GPU.

Tolerances as in tests/test_cuda_ops.py (float64 reference from the same inputs).
Prints "ALL GLUE CHECKS PASSED" at the end; any failure raises.
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

ACTS = ("none", "relu", "sigmoid")
_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def tol(dtype, length=1):
    rtol, atol = {torch.float32: (1e-5, 2e-6), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (4e-3, 2e-3)}[dtype]
    return dict(rtol=rtol, atol=atol * math.sqrt(max(length, 1)))


def leaf(t, grad=True):
    return t.detach().clone().requires_grad_(grad) if t is not None else None


def check_linear(x, w, b, act, g, need=(True, True, True), what=""):
    """Forward and the needed gradients of torch.ops.aecomp.linear_act against float64."""
    dtype = x.dtype
    m, k, n = x.reshape(-1, x.shape[-1]).shape[0], x.shape[-1], w.shape[0]
    xs, ws = x.detach().requires_grad_(need[0]), w.detach().requires_grad_(need[1])
    bs = b.detach().requires_grad_(need[2]) if b is not None else None
    y = torch.ops.aecomp.linear_act(xs, ws, bs, act)
    x64, w64 = leaf(x.double()), leaf(w.double())
    b64 = leaf(b.double()) if b is not None else None
    r = _ACT[act](F.linear(x64, w64, b64))
    assert y.shape == r.shape and y.dtype == dtype, (what, y.shape, r.shape, y.dtype)
    torch.testing.assert_close(y.double(), r, **tol(dtype, k), msg=lambda s: f"{what} y: {s}")
    if not any(need) or y.numel() == 0 and m > 0:
        return
    y.backward(g)
    r.backward(g.double())
    grads = [(xs, x64, n, "dx"), (ws, w64, m, "dW")] + ([(bs, b64, m, "db")] if b is not None else [])
    for (t, t64, length, name), wanted in zip(grads, need):
        if wanted:
            assert t.grad is not None and t.grad.shape == t.shape, (what, name)
            torch.testing.assert_close(t.grad.double(), t64.grad, **tol(dtype, length),
                                       msg=lambda s, name=name: f"{what} {name}: {s}")
        else:
            assert t.grad is None


def inputs(m, k, n, dtype, bias=True):
    x = torch.randn(m, k).to(dtype)
    w = (torch.randn(n, k) / math.sqrt(max(k, 1))).to(dtype)
    b = (torch.randn(n) * 0.5).to(dtype) if bias else None
    g = torch.randn(m, n).to(dtype)
    return x, w, b, g


def linear_checks():
    # tensor cores (aligned 16-bit rows), SIMT (K = 3, 13; N = 1, 10; float32), split-K (M = 700)
    shapes = [(1, 3, 1), (7, 784, 10), (37, 40, 24), (29, 13, 16), (700, 24, 16), (130, 64, 32)]
    for dtype in DTYPES:
        for i, (m, k, n) in enumerate(shapes):
            for act in (ACTS if i == 2 else ACTS[i % 3:i % 3 + 1]):
                x, w, b, g = inputs(m, k, n, dtype, bias=(i + len(act)) % 2 == 0)
                check_linear(x, w, b, act, g, what=f"{dtype} {act} M={m} K={k} N={n}")
        # strided, transposed and misaligned operands (copied for the tensor cores or SIMT)
        m, k, n = 33, 64, 24
        x_pad = torch.randn(m, k + 3).to(dtype)[:, :k]
        x_t = torch.randn(k, m).to(dtype).t()
        x_off = torch.randn(m * k + 1).to(dtype)[1:].view(m, k)
        w_t = (torch.randn(k, n) / 8).to(dtype).t()
        w_pad = (torch.randn(n, k + 8) / 8).to(dtype)[:, 8:]
        g_t = torch.randn(n, m).to(dtype).t()
        g_off = torch.randn(m * n + 1).to(dtype)[1:].view(m, n)
        b_str = torch.randn(2 * n).to(dtype)[::2]
        for x, w, b, g in [(x_pad, w_t, b_str, g_t), (x_t, w_pad, None, g_off), (x_off, w_t, b_str, g_t)]:
            for act in ACTS:
                check_linear(x, w, b, act, g, what=f"{dtype} strided {act}")
        # batch dims, 1-D input, empty batch
        x, w, b, g = inputs(20, 16, 8, dtype)
        check_linear(x.view(4, 5, 16), w, b, "relu", g.view(4, 5, 8), what=f"{dtype} 3-D")
        check_linear(x[0], w, b, "sigmoid", g[0], what=f"{dtype} 1-D")
        x0, w0, b0 = leaf(torch.randn(0, 16).to(dtype)), leaf(w), leaf(b)
        y0 = torch.ops.aecomp.linear_act(x0, w0, b0, "relu")
        assert y0.shape == (0, 8)
        y0.sum().backward()
        assert x0.grad.shape == (0, 16) and torch.equal(w0.grad, torch.zeros_like(w))
        assert torch.equal(b0.grad, torch.zeros_like(b))
        # an expanded upstream gradient (strides 0, 0), as y.sum().backward() produces
        for m, k, n in [(33, 16, 24), (9, 16, 10)]:
            x, w, b, _ = inputs(m, k, n, dtype)
            check_linear(x, w, b, "relu", torch.ones(1, dtype=dtype).expand(m, n), what=f"{dtype} expanded g")
        # only some gradients wanted (frozen weight, frozen input, bias only)
        x, w, b, g = inputs(300, 40, 24, dtype)
        for need in [(False, True, True), (True, False, False), (False, False, True), (True, True, False)]:
            check_linear(x, w, b, "sigmoid", g, need=need, what=f"{dtype} need={need}")


def backward_op_checks():
    """The backward op called directly: output mask, empty [0] tensors, bad shapes."""
    x, w, b, g = inputs(9, 16, 8, torch.bfloat16)
    y = torch.ops.aecomp.linear_act(x, w, b, "relu")
    gx, gw, gb = torch.ops.aecomp.linear_act_backward(g, x, w, y, "relu", True, False, False)
    assert gx.shape == x.shape and gw.shape == (0,) and gb.shape == (0,)
    gx, gw, gb = torch.ops.aecomp.linear_act_backward(g, x, w, y, "relu", False, True, True)
    assert gx.shape == (0,) and gw.shape == w.shape and gb.shape == (8,)
    try:
        torch.ops.aecomp.linear_act_backward(g[:, :4], x, w, y, "relu", True, True, True)
    except ValueError as e:
        assert "aecomp::linear_act_backward: grad_y has shape [9, 4]" in str(e), e
    else:
        raise AssertionError("a bad grad_y shape was accepted")


def mse_checks():
    for dtype in DTYPES:
        for shape in [(1,), (7, 3), (33, 40), (1001,), (5, 7, 9)]:
            a, t = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
            for red in ("mean", "sum", "none"):
                ai, ti = leaf(a), leaf(t)
                out = torch.ops.aecomp.mse_loss(ai, ti, red)
                a64, t64 = leaf(a.double()), leaf(t.double())
                ref = F.mse_loss(a64, t64, reduction=red)
                what = f"mse {dtype} {shape} {red}"
                assert out.shape == ref.shape and out.dtype == dtype, what
                torch.testing.assert_close(out.double(), ref, **tol(dtype), msg=what)
                gout = torch.randn(out.shape).to(dtype)
                out.backward(gout)
                ref.backward(gout.double())
                torch.testing.assert_close(ai.grad.double(), a64.grad, **tol(dtype), msg=what + " da")
                torch.testing.assert_close(ti.grad.double(), t64.grad, **tol(dtype), msg=what + " dt")
        # non-contiguous and misaligned, only one gradient wanted
        a = torch.randn(40, 33).to(dtype).t()
        t = torch.randn(33 * 40 + 1).to(dtype)[1:].view(33, 40)
        ai = leaf(a)
        out = torch.ops.aecomp.mse_loss(ai, t, "mean")
        out.backward()
        a64 = leaf(a.double())
        ref = F.mse_loss(a64, t.double())
        ref.backward()
        torch.testing.assert_close(out.double(), ref, **tol(dtype))
        torch.testing.assert_close(ai.grad.double(), a64.grad, **tol(dtype))
        e = torch.randn(0, 4).to(dtype)
        assert torch.isnan(torch.ops.aecomp.mse_loss(e, e, "mean"))
        assert torch.ops.aecomp.mse_loss(e, e, "sum").item() == 0
        assert torch.ops.aecomp.mse_loss(e, e, "none").shape == (0, 4)


def relu_nan_checks():
    """relu's backward where the saved output is NaN passes the gradient, as torch's
    threshold_backward does (a NaN bias entry: that output column is NaN, every gradient finite)."""
    for dtype in DTYPES:
        for m, k, n in ((9, 13, 7), (37, 40, 24)):  # SIMT, tensor cores (16-bit)
            x, w, b, g = inputs(m, k, n, dtype)
            b[n // 2] = float("nan")
            xs, ws, bs = leaf(x), leaf(w), leaf(b)
            torch.ops.aecomp.linear_act(xs, ws, bs, "relu").backward(g)
            x64, w64, b64 = leaf(x.double()), leaf(w.double()), leaf(b.double())
            torch.relu(F.linear(x64, w64, b64)).backward(g.double())
            for name, t, t64, length in (("dx", xs, x64, n), ("dW", ws, w64, m), ("db", bs, b64, m)):
                assert torch.isfinite(t64.grad).all()
                torch.testing.assert_close(t.grad.double(), t64.grad, **tol(dtype, length),
                                           msg=lambda s, name=name: f"relu NaN {dtype} {m}x{k}x{n} {name}: {s}")


def error_checks():
    x = torch.randn(4, 8, dtype=torch.float64)
    try:
        torch.ops.aecomp.linear_act(x, torch.randn(3, 8, dtype=torch.float64), None, "relu")
    except TypeError as e:
        assert "aecomp::linear_act: x has dtype" in str(e) and "CUDA kernels take" in str(e), e
    else:
        raise AssertionError("float64 was accepted by the CUDA glue")
    try:
        torch.ops.aecomp.mse_loss(torch.randn(4, 8), torch.randn(4, 1), "mean")
    except ValueError as e:
        assert "aecomp::mse_loss: input and target must have the same shape" in str(e), e
    else:
        raise AssertionError("mismatched mse shapes were accepted")


def main(lib: str) -> None:
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_GLOBAL)
    import aecomp._C  # noqa: F401  (schemas, autograd, shared checks)

    torch.ops.load_library(lib)
    torch.manual_seed(int(os.environ.get("AECOMP_TEST_SEED", "0")))
    linear_checks()
    backward_op_checks()
    mse_checks()
    relu_nan_checks()
    error_checks()
    import aecomp

    aecomp.available_backends()  # loads the backend registry, which registers the fake impls

    for dtype in (torch.bfloat16, torch.float32):
        x, w, b = (leaf(t) for t in inputs(7, 24, 16, dtype)[:3])
        torch.library.opcheck(torch.ops.aecomp.linear_act.default, (x, w, b, "sigmoid"))
        a = leaf(torch.randn(7, 24).to(dtype))
        torch.library.opcheck(torch.ops.aecomp.mse_loss.default, (a, torch.randn(7, 24).to(dtype), "mean"))
    print("ALL GLUE CHECKS PASSED")


if __name__ == "__main__":
    main(sys.argv[1])
