"""Checks of the CUDA chain glue (ops_cuda_mlp.cpp) run on CPU tensors over the emulated kernels.

Run by tests/test_cuda_mlp.py in a subprocess::

    python glue_mlp_on_cpu_checks.py /path/to/glue_mlp_emu.so

The library (built from glue_mlp_on_cpu.cpp) registers the chain glue for the CPU dispatch key
over aecomp._C's CPU chain kernels (aecomp._C is loaded first, with RTLD_GLOBAL: schemas,
autograd, shared checks), so torch.ops.aecomp.mlp / mlp_mse_loss on CPU tensors run autograd
(ops.cpp) -> ops_cuda_mlp.cpp -> launchers -> kernels on the CPU emulator (an sm_90 with 4 SMs):
the fused chain forward, the per-layer fallback (a width over 256, or AECOMP_CUDA_MLP=layers),
the fused loss entry and the per-layer backward GEMMs.

Reference: the same chain in float64 with torch.nn.functional, on the same inputs (rounded to
the dtype), with torch's autograd. Tolerances as in tests/test_cuda_ops.py, per dtype
(float32 ~1e-5 relative; bf16 1.6e-2; fp16 4e-3), the absolute part scaled by sqrt(width).
Prints "ALL MLP GLUE CHECKS PASSED" at the end; any failure raises.
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}


def tol(dtype, length=1):
    rtol, atol = {torch.float32: (1e-5, 2e-6), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (4e-3, 2e-3)}[dtype]
    return dict(rtol=rtol, atol=atol * math.sqrt(max(length, 1)))


def make_chain(batch, widths, acts, dtype, bias_mask, lead=()):
    x = torch.randn(*lead, batch, widths[0]).to(dtype)
    ws = [(torch.randn(n, k) / math.sqrt(k)).to(dtype) for k, n in zip(widths[:-1], widths[1:])]
    bs = [(0.3 * torch.randn(n)).to(dtype) if use else None for n, use in zip(widths[1:], bias_mask)]
    return x, ws, bs


def ref_chain(x, ws, bs, acts):
    h = x
    for w, b, a in zip(ws, bs, acts):
        h = _ACT[a](F.linear(h, w, b))
    return h


def leaves(ts, dtype=None):
    return [None if t is None else (t.detach().to(dtype) if dtype else t.detach().clone()).requires_grad_(True)
            for t in ts]


def check_chain(batch, widths, acts, dtype, bias_mask, loss, reduction="mean", lead=(), x_view=None):
    x, ws, bs = make_chain(batch, widths, acts, dtype, bias_mask, lead)
    if x_view == "t":  # a non-contiguous x: the transpose of a contiguous [K, batch]
        x = x.reshape(-1, widths[0]).t().contiguous().t()
    L = max(widths)
    what = f"{dtype} batch={batch} widths={widths} acts={acts} bias={bias_mask} loss={loss} red={reduction}"
    acts_s = ",".join(acts)
    xi, wi, bi = leaves([x])[0], leaves(ws), leaves(bs)
    x64, w64, b64 = leaves([x], torch.float64)[0], leaves(ws, torch.float64), leaves(bs, torch.float64)
    if loss:
        t = torch.randn(*lead, batch, widths[-1]).to(dtype)
        out = torch.ops.aecomp.mlp_mse_loss(xi, wi, bi, acts_s, t, reduction)
        ref = F.mse_loss(ref_chain(x64, w64, b64, acts), t.double(), reduction=reduction)
        g = torch.randn(out.shape).to(dtype) if reduction == "none" else torch.tensor(1.5, dtype=dtype)
    else:
        out = torch.ops.aecomp.mlp(xi, wi, bi, acts_s)
        ref = ref_chain(x64, w64, b64, acts)
        g = torch.randn(out.shape).to(dtype)
    assert out.shape == ref.shape and out.dtype == dtype, (what, out.shape, ref.shape)
    torch.testing.assert_close(out.double(), ref, **tol(dtype, L), msg=lambda m: f"forward {what}: {m}")
    out.backward(g)
    ref.backward(g.double())
    pairs = [("x", xi, x64)] + [(f"W{i}", a, b) for i, (a, b) in enumerate(zip(wi, w64))]
    pairs += [(f"b{i}", a, b) for i, (a, b) in enumerate(zip(bi, b64)) if a is not None]
    for name, got, want in pairs:
        scale = want.grad.abs().max().item() + 1e-12  # gradients: relative to their largest element
        t_ = tol(dtype, batch * L)
        torch.testing.assert_close(got.grad.double() / scale, want.grad / scale, rtol=t_["rtol"],
                                   atol=t_["atol"] * 4, msg=lambda m: f"grad {name} {what}: {m}")


def main(lib: str) -> None:
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_GLOBAL)
    import aecomp._C  # noqa: F401  (schemas, autograd, shared checks)

    torch.ops.load_library(lib)
    torch.manual_seed(int(os.environ.get("AECOMP_TEST_SEED", "0")))
    cases = [
        (7, [5, 17, 3], ["relu", "sigmoid"], [True, False]),
        (33, [20, 9, 20], ["sigmoid", "none"], [False, True]),
        (1, [50, 16, 8, 16, 50], ["relu", "none", "relu", "sigmoid"], [True, True, False, True]),
        (9, [24, 264, 16], ["relu", "sigmoid"], [True, True]),  # width 264 > 256: per-layer fallback
        (5, [300, 16, 270], ["relu", "sigmoid"], [True, True]),  # wide ends: fused, x streamed, 2 passes
    ]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for i, (batch, widths, acts, mask) in enumerate(cases):
            if dtype != torch.float32 and i >= 3:  # the wide chains: float32 only (time)
                continue
            check_chain(batch, widths, acts, dtype, mask, loss=False, x_view="t" if i == 1 else None)
            check_chain(batch, widths, acts, dtype, mask, loss=True, reduction=("mean", "sum", "none")[i % 3])
    # the tensor-core chain (16-bit, widths % 8 == 0): the scaled-down reference autoencoder
    for dtype in (torch.bfloat16, torch.float16):
        check_chain(70, [200, 128, 64, 32, 64, 128, 200], ["relu", "relu", "none", "relu", "relu", "sigmoid"], dtype,
                    [True] * 6, loss=True)
        check_chain(5, [24, 16, 8, 40], ["sigmoid", "none", "relu"], dtype, [False, True, True], loss=False)
    # leading batch dims, and the per-layer path forced
    check_chain(3, [16, 8, 16], ["relu", "sigmoid"], torch.bfloat16, [True, True], loss=True, lead=(2,))
    os.environ["AECOMP_CUDA_MLP"] = "layers"
    check_chain(33, [16, 24, 8], ["relu", "none"], torch.bfloat16, [True, False], loss=True, reduction="sum")
    del os.environ["AECOMP_CUDA_MLP"]
    # a batch that splits the loss entry's bias sums over the batch (4 emulated SMs -> 2 splits)
    check_chain(1100, [8, 8, 4], ["none", "relu"], torch.float32, [False, True], loss=True)
    # empty batch
    x = torch.randn(0, 6, requires_grad=True)
    w = [torch.randn(5, 6, requires_grad=True), torch.randn(6, 5, requires_grad=True)]
    b = [torch.randn(5, requires_grad=True), None]
    out = torch.ops.aecomp.mlp_mse_loss(x, w, b, "relu,none", torch.randn(0, 6), "sum")
    out.backward()
    assert out.item() == 0 and w[0].grad.abs().sum() == 0 and b[0].grad.abs().sum() == 0
    assert torch.ops.aecomp.mlp(x, w, b, "relu,none").shape == (0, 6)
    # relu's backward where a hidden output is NaN (a NaN bias entry) passes the gradient, as torch's
    # threshold_backward does: the chain's gradients match torch's (NaN where torch's are NaN)
    for dtype in (torch.float32, torch.bfloat16):
        xs, ws, bs = make_chain(6, [8, 16, 8], ["relu", "sigmoid"], dtype, [True, True])
        bs[0][5] = float("nan")
        lx, lw, lb = leaves([xs]), leaves(ws), leaves(bs)
        y = torch.ops.aecomp.mlp(lx[0], lw, lb, "relu,sigmoid")
        g = torch.randn_like(y)
        y.backward(g)
        rx, rw, rb = leaves([xs], torch.float64), leaves(ws, torch.float64), leaves(bs, torch.float64)
        ref_chain(rx[0], rw, rb, ["relu", "sigmoid"]).backward(g.double())
        for name, got, want in [("dx", lx[0], rx[0]), *((f"dW{i}", a, e) for i, (a, e) in enumerate(zip(lw, rw))),
                                *((f"db{i}", a, e) for i, (a, e) in enumerate(zip(lb, rb)))]:
            assert torch.equal(torch.isnan(got.grad), torch.isnan(want.grad)), (dtype, name)
            torch.testing.assert_close(got.grad.double(), want.grad, **tol(dtype, 16), equal_nan=True,
                                       msg=lambda s, name=name: f"relu NaN chain {dtype} {name}: {s}")
    # errors name the op
    try:
        torch.ops.aecomp.mlp(torch.randn(4, 8, dtype=torch.float64), [torch.randn(3, 8, dtype=torch.float64)], [None],
                             "relu")
    except TypeError as e:
        assert "aecomp::mlp" in str(e), e
    else:
        raise AssertionError("float64 was accepted by the CUDA chain glue")
    print("ALL MLP GLUE CHECKS PASSED")


if __name__ == "__main__":
    main(sys.argv[1])
