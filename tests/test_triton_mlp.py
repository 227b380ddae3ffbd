"""The triton backend's fused chains (``mlp``, ``mlp_mse_loss``) against plain PyTorch.

Groups, as in test_triton_ops.py:

* ``@interpreted`` tests (CPU tensors under Triton's interpreter, in the ``TRITON_INTERPRET=1``
  worker process): forward, every gradient and the fused MSE loss of small chains with odd
  sizes (batch 1, 7, 33; widths 5-17-3, 20-9-20, 50-16-8-16-50 -- the reference autoencoder
  scaled down), with and without biases per layer, 3-D and non-contiguous inputs, float32,
  bfloat16 and float16; bitwise-deterministic gradients; chains wider than the on-chip limit
  (split, or one linear_act per layer) and the message that says so; zero-size batches; bad
  input; opcheck and torch.compile.
* compiled-mode tests (no GPU needed): with fake CUDA tensors the ops trace into the chain
  kernels, and the fused MSE entry leaves no separate loss-backward kernel in the graph.
* GPU tests (skipped without one): the reference autoencoder 784-128-64-32-64-128-784 at
  batch 65536 in bfloat16 and float32, and determinism.

How the comparison works (tolerances relative to the largest magnitude of the reference,
``atol = tol * max|ref|``, ``rtol = tol``, the same per-dtype ``TOL`` as test_triton_ops.py):
each layer is checked against float64 *on the op's own inputs to that layer* -- layer ``i``'s
output against ``act(h_i W_i^T + b_i)`` computed in float64 from the op's saved ``h_i`` -- so
rounding does not compound along the chain and the per-dtype tolerance of one layer applies
(float32 1e-5, bfloat16 1.6e-2, float16 2e-3). The backward reference is the float64 chain
backward with ``act'`` from the op's saved outputs and each ``gz_i`` rounded to the data dtype
before it is used (what the kernels do, and what ``linear_act``'s backward does: the tensor
cores take 16-bit operands). For the half types an end-to-end check also compares the whole
chain's error against float64 with the error of torch's own bfloat16/float16 chain: ours
must not be more than 2x worse (it is usually better: ``g`` stays float32 between layers).
"""
from __future__ import annotations

import logging
import os
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

from aecomp import ops  # noqa: E402

from _triton_reference import BF16, F16, F32, TOL, _act64, _act_grad64, _close  # noqa: E402
HAS_GPU = torch.cuda.is_available()
AE_DIMS = (784, 128, 64, 32, 64, 128, 784)
AE_ACTS = ("relu", "relu", "none", "relu", "relu", "sigmoid")
SMALL_AE = (50, 16, 8, 16, 50)  # the reference autoencoder scaled down
SMALL_AE_ACTS = ("relu", "relu", "none", "sigmoid")


# ----------------------------------------------------------------------------------------
# reference and helpers
# ----------------------------------------------------------------------------------------


def _chain(dims, dtype=F32, bias=True, device="cpu"):
    """Weights scaled 1/sqrt(fan_in) (activations stay O(1) along the chain); ``bias`` is a bool
    or one bool per layer."""
    n = len(dims) - 1
    mask = [bias] * n if isinstance(bias, bool) else list(bias)
    ws = [(torch.randn(o, i, device=device) / max(i, 1) ** 0.5).to(dtype) for i, o in zip(dims, dims[1:])]
    bs = [(torch.randn(o, device=device) * 0.5).to(dtype) if m else None for o, m in zip(dims[1:], mask)]
    return ws, bs


def _triton_ops():
    """``torch.ops.aecomp_triton``, registered (backends load lazily, on the first op call)."""
    from aecomp.ops import _triton  # noqa: F401

    return torch.ops.aecomp_triton


def _forward_op(x, ws, bs, acts, target=None, reduction="mean"):
    """The inner ops, for the saved outputs: returns (outputs, loss or None)."""
    _triton_ops()
    defined = [b for b in bs if b is not None]
    has = [int(b is not None) for b in bs]
    if target is None:
        return list(torch.ops.aecomp_triton.mlp_forward(x, ws, defined, has, ",".join(acts))), None
    res = torch.ops.aecomp_triton.mlp_mse_forward(x, ws, defined, has, ",".join(acts), target, reduction)
    return list(res[1:]), res[0]


def _check_layers(x, ws, bs, acts, outs, dtype, tol=None):
    """Each layer's output against float64 on the op's own input to that layer."""
    h = x.reshape(x.shape[:-1].numel(), x.shape[-1])
    for i, (w, b, a) in enumerate(zip(ws, bs, acts)):
        z = h.detach().double() @ w.detach().double().t()
        if b is not None:
            z = z + b.detach().double()
        _close(outs[i], _act64(z, a), dtype, f"layer {i} output", tol)
        h = outs[i]


def _ref_backward(g_last, x, ws, outs, acts, dtype):
    """float64 chain backward from g_last = d loss / d y_{L-1}: (dx, [dW], [db]); act' from the
    saved outputs, gz rounded to ``dtype`` before use (as the kernels do)."""
    L = len(ws)
    x2 = x.detach().reshape(x.shape[:-1].numel(), x.shape[-1]).double()
    g = g_last.double()
    dws, dbs = [None] * L, [None] * L
    dx = None
    for i in reversed(range(L)):
        gz = (g * _act_grad64(outs[i].detach().double(), acts[i])).to(dtype).double()
        h = x2 if i == 0 else outs[i - 1].detach().double()
        dws[i] = gz.t() @ h
        dbs[i] = gz.sum(0)
        g = gz @ ws[i].detach().double()
        if i == 0:
            dx = g
    return dx.reshape(x.shape), dws, dbs


def _run_chain(dims, acts, batch, dtype, bias=True, layout="contig", target=None, reduction="mean", tol=None):
    """Forward + backward of the chain through the ops with autograd, checked layer by layer
    and gradient by gradient; ``target``: None (plain mlp), "x" (autoencoder loss) or "t"."""
    lead = batch if isinstance(batch, tuple) else (batch,)
    ws, bs = _chain(dims, dtype, bias)
    x = torch.randn(*lead, dims[0]).to(dtype)
    if layout == "x_t" and len(lead) == 1:  # column-major x
        x = torch.randn(dims[0], lead[0]).to(dtype).t()
    elif layout == "3d_noncontig":  # leading dims that cannot be merged without a copy
        x = torch.randn(lead[1], lead[0], dims[0]).to(dtype).transpose(0, 1)
    elif layout == "w_t":  # weights stored [in, out] and used transposed
        ws = [w.t().contiguous().t() for w in ws]
    elif layout == "strided":
        x = torch.randn(*lead, 2 * dims[0]).to(dtype)[..., ::2]
        ws = [torch.cat([w, w], 1)[:, ::2] for w in ws]
    leaves = [x] + ws + [b for b in bs if b is not None]
    for t in leaves:
        t.requires_grad_()
    t_tensor = None
    if target == "x":
        t_tensor = x
    elif target == "t":
        t_tensor = torch.rand(*lead, dims[-1]).to(dtype)
    outs, loss = _forward_op(x, ws, bs, acts, t_tensor, reduction)
    _check_layers(x, ws, bs, acts, outs, dtype, tol)
    y = outs[-1].view(*x.shape[:-1], dims[-1])
    if target is None:
        public = ops.mlp(x, ws, bs, list(acts), backend="triton")
        assert torch.equal(public, y), "ops.mlp and the inner op disagree"
        out = y
        g = torch.randn(y.shape).to(dtype)
        g_last = g.reshape(-1, dims[-1]).double()
    else:
        public = ops.mlp_mse_loss(x, ws, bs, list(acts), None if target == "x" else t_tensor, reduction,
                                  backend="triton")
        assert torch.equal(public, loss), "ops.mlp_mse_loss and the inner op disagree"
        d = y.detach().double() - t_tensor.detach().double()
        n = d.numel() if reduction == "mean" else 1
        ref_loss = {"mean": (d * d).sum() / max(n, 1), "sum": (d * d).sum(), "none": d * d}[reduction]
        _close(loss, ref_loss, dtype, f"mse {reduction} loss", tol)
        out = loss
        g = torch.rand(loss.shape).to(dtype) + 0.5
        g_last = (2.0 / n) * d * g.double()
        g_last = g_last.reshape(-1, dims[-1])
    grads = torch.autograd.grad(out, leaves, g)
    dx, dws, dbs = _ref_backward(g_last, x, ws, outs, acts, dtype)
    if target == "x":
        # x is also the target: d loss / d x = (through the chain) - 2 (y - x) g / n
        dx = dx - g_last.reshape(x.shape)
    _close(grads[0], dx, dtype, "dx", tol)
    for i in range(len(ws)):
        _close(grads[1 + i], dws[i], dtype, f"dW[{i}]", tol)
    k = 1 + len(ws)
    for i, b in enumerate(bs):
        if b is not None:
            _close(grads[k], dbs[i], dtype, f"db[{i}]", tol)
            k += 1
    return outs


# ----------------------------------------------------------------------------------------
# interpreter tests: forward and every gradient
# ----------------------------------------------------------------------------------------
CHAIN_CASES = [
    # dims, acts, batch, dtype, bias, layout
    ((5, 17, 3), ("relu", "sigmoid"), 1, F32, True, "contig"),
    ((5, 17, 3), ("sigmoid", "none"), 7, F32, False, "x_t"),
    ((5, 17, 3), ("none", "relu"), 33, F32, (False, True), "w_t"),
    ((20, 9, 20), ("relu", "sigmoid"), 33, F32, True, "strided"),
    ((20, 9, 20), ("none", "sigmoid"), 7, F32, (True, False), "contig"),
    ((20, 9, 20), ("relu", "none"), (3, 11), F32, True, "3d_noncontig"),
    (SMALL_AE, SMALL_AE_ACTS, 33, F32, True, "contig"),
    (SMALL_AE, SMALL_AE_ACTS, 7, F32, (True, False, True, False), "x_t"),
    (SMALL_AE, ("sigmoid", "relu", "relu", "none"), 1, F32, False, "contig"),
    ((50, 16, 8), ("relu", "relu"), 33, F32, True, "contig"),  # encoder
    ((8, 16, 50), ("relu", "sigmoid"), 33, F32, True, "contig"),  # decoder
    ((9, 1, 17, 3), ("relu", "none", "sigmoid"), 7, F32, True, "contig"),  # width-1 intermediate
    (SMALL_AE, SMALL_AE_ACTS, 33, BF16, True, "contig"),
    (SMALL_AE, SMALL_AE_ACTS, 7, F16, (False, True, True, False), "strided"),
    ((20, 9, 20), ("relu", "sigmoid"), (3, 11), BF16, True, "3d_noncontig"),
    ((5, 17, 3), ("none", "relu"), 33, F16, True, "x_t"),
]


def _case_id(c):
    dims, acts, batch, dtype, bias, layout = c
    b = "bias" if bias is True else ("nobias" if bias is False else "mixed")
    bt = "x".join(map(str, batch)) if isinstance(batch, tuple) else str(batch)
    return f"{'-'.join(map(str, dims))}-{','.join(acts)}-b{bt}-{str(dtype)[6:]}-{b}-{layout}"


@pytest.mark.parametrize("dims,acts,batch,dtype,bias,layout", CHAIN_CASES, ids=[_case_id(c) for c in CHAIN_CASES])
@interpreted
def test_mlp_forward_and_gradients(dims, acts, batch, dtype, bias, layout):
    _run_chain(dims, acts, batch, dtype, bias, layout)


LOSS_CASES = [
    # reduction, target, dtype, batch
    ("mean", "x", F32, 33),
    ("sum", "x", F32, 7),
    ("none", "x", F32, 33),
    ("mean", "t", F32, 1),
    ("none", "t", F32, (3, 11)),
    ("mean", "x", BF16, 33),
    ("sum", "t", F16, 7),
]


@pytest.mark.parametrize("reduction,target,dtype,batch", LOSS_CASES,
                         ids=[f"{r}-{t}-{str(d)[6:]}-b{b}" for r, t, d, b in LOSS_CASES])
@interpreted
def test_mlp_mse_loss_fused_entry(reduction, target, dtype, batch):
    """mlp_mse_loss on the scaled-down autoencoder (sigmoid output): the loss, and every
    gradient (including the target's when the target is x itself)."""
    _run_chain(SMALL_AE, SMALL_AE_ACTS, batch, dtype, True, "contig", target=target, reduction=reduction)


@interpreted
def test_fused_entry_has_no_separate_loss_pass():
    """The loss is formed in the forward kernel's epilogue and its gradient in the dgrad
    kernel: neither the MSE kernels' forward nor their backward runs (the target, not
    requiring grad, needs no d target pass)."""
    from aecomp.kernels import mlp as km

    def forbidden(*args, **kwargs):
        raise AssertionError("a separate MSE pass ran")

    ws, bs = _chain((20, 9, 20))
    for p in ws + bs:
        p.requires_grad_()
    x = torch.rand(7, 20)
    saved = km.mse_forward, km.mse_backward
    km.mse_forward = km.mse_backward = forbidden
    try:
        for reduction in ("mean", "sum", "none"):
            loss = ops.mlp_mse_loss(x, ws, bs, ("relu", "sigmoid"), None, reduction, backend="triton")
            torch.autograd.grad(loss.sum(), ws + bs)
    finally:
        km.mse_forward, km.mse_backward = saved


@interpreted
def test_gradients_deterministic():
    """Same bits on every run: 70 rows cross row tiles in the chain kernels and take the
    split (two-stage) weight-gradient reduction."""
    from aecomp.kernels.linear_act import wgrad_splits

    dims, acts = (20, 9, 20), ("relu", "sigmoid")
    assert wgrad_splits(70, 9, 20, "interpreter", 4)[0] > 1 and wgrad_splits(70, 20, 9, "interpreter", 4)[0] > 1
    for dtype in (F32, BF16):
        ws, bs = _chain(dims, dtype)
        for p in ws + bs:
            p.requires_grad_()
        x = torch.rand(70, dims[0]).to(dtype)
        runs = []
        for _ in range(2):
            loss = ops.mlp_mse_loss(x, ws, bs, acts, None, "mean", backend="triton")
            runs.append((loss, *torch.autograd.grad(loss, ws + bs)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


@interpreted
def test_partial_gradients():
    """Only what is asked for: x without grad, one frozen weight, one bias without grad."""
    ws, bs = _chain(SMALL_AE)
    ws[1].requires_grad_()
    ws[3].requires_grad_()
    bs[2].requires_grad_()
    x = torch.randn(7, SMALL_AE[0])
    y = ops.mlp(x, ws, bs, SMALL_AE_ACTS, backend="triton")
    g = torch.randn_like(y)
    y.backward(g)
    assert ws[0].grad is None and ws[2].grad is None and bs[0].grad is None and x.grad is None
    outs, _ = _forward_op(x, ws, bs, SMALL_AE_ACTS)
    _, dws, dbs = _ref_backward(g.double(), x, ws, outs, SMALL_AE_ACTS, F32)
    _close(ws[1].grad, dws[1], F32, "dW[1]")
    _close(ws[3].grad, dws[3], F32, "dW[3]")
    _close(bs[2].grad, dbs[2], F32, "db[2]")
    # the backward op itself: [0]-shaped placeholders for what is not needed
    res = _triton_ops().mlp_backward(g, x, ws, outs, ",".join(SMALL_AE_ACTS), False, [0, 0, 1, 0])
    assert res[0].shape == (0,)  # no dx
    # an expanded (stride 0) incoming gradient, as from y.sum()
    ws[1].grad = None
    ops.mlp(x, ws, bs, SMALL_AE_ACTS, backend="triton").sum().backward()
    _, dws1, _ = _ref_backward(torch.ones(7, SMALL_AE[-1], dtype=torch.float64), x, ws, outs, SMALL_AE_ACTS, F32)
    _close(ws[1].grad, dws1[1], F32, "dW[1] from y.sum()")
    assert [tuple(r.shape) for r in res[5:]] == [(0,), (0,), (16,), (0,)]  # only db[2]
    _close(res[7], dbs[2], F32, "db[2] (backward op)")
    _close(res[2], dws[1], F32, "dW[1] (backward op)")


@interpreted
def test_half_chain_error_not_worse_than_torch():
    """float16 under the interpreter; bfloat16 in the GPU tests (Triton's interpreter converts
    float32 to bfloat16 by truncation, not round-to-nearest-even as the GPU does, which biases
    sums of rounded values)."""
    _check_error_not_worse_than_torch(F16, "cpu")


def _check_error_not_worse_than_torch(dtype, device):
    """End to end (rounding compounding along the chain included): the fused chain's error
    against float64 is at most 2x that of torch's own chain in the same dtype, for the output,
    the autoencoder loss and every parameter gradient."""
    ws, bs = _chain(SMALL_AE, dtype, device=device)
    x = torch.rand(33, SMALL_AE[0], device=device).to(dtype)

    def torch_loss(x, ws, bs):
        h = x
        for w, b, a in zip(ws, bs, SMALL_AE_ACTS):
            h = _act64(F.linear(h, w, b), a)
        return F.mse_loss(h, x), h

    params = [p.requires_grad_() for p in ws + bs]
    exact = [p.detach().double().requires_grad_() for p in params]
    loss64, y64 = torch_loss(x.double(), exact[:4], exact[4:])
    g64 = torch.autograd.grad(loss64, exact)
    loss_t, y_t = torch_loss(x, params[:4], params[4:])
    g_t = torch.autograd.grad(loss_t, params)
    y_ours = ops.mlp(x, ws, bs, SMALL_AE_ACTS, backend="triton")
    loss_ours = ops.mlp_mse_loss(x, ws, bs, SMALL_AE_ACTS, None, "mean", backend="triton")
    g_ours = torch.autograd.grad(loss_ours, params)

    def check(ours, theirs, exact, what):
        scale = exact.abs().max().item() or 1.0
        e_ours = (ours.double() - exact).abs().max().item()
        e_torch = (theirs.double() - exact).abs().max().item()
        # floor: about one ulp of the dtype at the tensor's scale (TOL/2: fp16 2^-10, bf16 2^-7). A stored
        # 16-bit value is already up to half an ulp off, and the fused sum adds its own rounding; a
        # quarter-ulp floor failed on fresh seeds for a small bias gradient (2.85e-6 at scale 0.0047)
        assert e_ours <= max(2 * e_torch, TOL[dtype] * scale / 2), (
            f"{what}: error {e_ours:.3g} vs torch {dtype} {e_torch:.3g} (scale {scale:.3g})")

    check(y_ours, y_t, y64.detach(), "output")
    check(loss_ours, loss_t, loss64.detach(), "loss")
    for i, (a, b, c) in enumerate(zip(g_ours, g_t, g64)):
        check(a, b, c, f"grad {i}")


# ----------------------------------------------------------------------------------------
# interpreter tests: widths beyond the on-chip limit
# ----------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def clear(self):
        self.records.clear()


@interpreted
def test_wide_chains_split_and_say_so():
    """float32 keeps <= 128 on chip, 16-bit types <= 256 (the Hopper limits, which the
    interpreter mirrors): a wider intermediate splits the chain there, with a debug message;
    every answer is still right."""
    from aecomp.kernels import mlp as km

    km.plan_chain.cache_clear()  # the message is logged once per chain structure
    caplog = _Records()
    logger = logging.getLogger("aecomp")
    level = logger.level
    logger.addHandler(caplog)
    logger.setLevel(logging.DEBUG)
    try:
        _check_wide_chains(km, caplog)
    finally:
        logger.removeHandler(caplog)
        logger.setLevel(level)


def _check_wide_chains(km, caplog):
    # float32 130 > 128: layer 0 alone (linear_act), layers 1-2 fused
    _run_chain((20, 130, 9, 20), ("relu", "relu", "sigmoid"), 7, F32, True)
    assert km.plan_chain((20, 130, 9, 20), 128) == (km.Segment(0, 1), km.Segment(1, 3))
    assert any("130" in r.getMessage() and "exceed the on-chip limit 128" in r.getMessage() for r in caplog.records)
    # the same width in bfloat16 fits (the 256-wide "wide" tiles): one kernel
    assert km.plan_chain((20, 130, 9, 20), 256) == (km.Segment(0, 3),)
    _run_chain((20, 130, 9, 20), ("relu", "relu", "sigmoid"), 7, BF16, True)
    # every intermediate too wide: one linear_act per layer, with the fused loss composed
    caplog.clear()
    _run_chain((12, 257, 7), ("relu", "sigmoid"), 7, BF16, (True, False), target="t", reduction="mean")
    assert km.plan_chain((12, 257, 7), 256) == (km.Segment(0, 1), km.Segment(1, 2))
    assert any("one linear_act per layer" in r.getMessage() for r in caplog.records)
    # wide input and output never split a chain; a split in the middle of a longer chain
    assert km.plan_chain((784, 128, 64, 32, 64, 128, 784), 128) == (km.Segment(0, 6),)
    assert km.plan_chain((4, 8, 300, 8, 300, 8, 4), 256) == (
        km.Segment(0, 2), km.Segment(2, 4), km.Segment(4, 6))
    _run_chain((4, 8, 300, 8, 300, 8, 4), ("relu", "none", "sigmoid", "relu", "relu", "none"), 7, F32,
               (True, False, True, True, False, True), target="t", reduction="sum")


@interpreted
def test_zero_sizes():
    ws, bs = _chain(SMALL_AE)
    for p in ws + bs:
        p.requires_grad_()
    x = torch.randn(0, SMALL_AE[0], requires_grad=True)
    y = ops.mlp(x, ws, bs, SMALL_AE_ACTS, backend="triton")
    assert y.shape == (0, SMALL_AE[-1])
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ws + bs)
    y3 = ops.mlp(torch.randn(2, 0, SMALL_AE[0]), ws, bs, SMALL_AE_ACTS, backend="triton")
    assert y3.shape == (2, 0, SMALL_AE[-1])
    mean = ops.mlp_mse_loss(x.detach(), ws, bs, SMALL_AE_ACTS, None, "mean", backend="triton")
    assert mean.shape == () and mean.isnan().item()  # 0/0, as torch
    total = ops.mlp_mse_loss(x.detach(), ws, bs, SMALL_AE_ACTS, None, "sum", backend="triton")
    assert total.shape == () and total.item() == 0.0
    # zero input features: the first layer is its bias
    _run_chain((0, 9, 5), ("sigmoid", "relu"), 7, F32, True)


# ----------------------------------------------------------------------------------------
# interpreter tests: errors, registration, compile
# ----------------------------------------------------------------------------------------
def _raises(exc, fn, *needles):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in error message {msg!r}"


@interpreted
def test_only_the_output_carries_a_gradient():
    """The inner ops return every layer's output (for the backward); the intermediates are
    marked non-differentiable, so using one cannot silently lose its gradient."""
    ws, bs = _chain(SMALL_AE)
    x = torch.randn(5, SMALL_AE[0], requires_grad=True)
    outs, loss = _forward_op(x, ws, bs, SMALL_AE_ACTS, torch.rand(5, SMALL_AE[-1]), "mean")
    assert loss.requires_grad and not any(o.requires_grad for o in outs)
    outs, _ = _forward_op(x, ws, bs, SMALL_AE_ACTS)
    assert outs[-1].requires_grad and not any(o.requires_grad for o in outs[:-1])


@interpreted
def test_bad_input():
    ws, bs = _chain((5, 4, 3))
    x = torch.randn(6, 5)
    m = lambda *a: ops.mlp(*a, backend="triton")  # noqa: E731
    L = lambda *a: ops.mlp_mse_loss(*a, backend="triton")  # noqa: E731
    _raises(ValueError, lambda: m(x, [ws[0], torch.randn(3, 5)], bs, ["relu", "relu"]),
            "mlp", "weights[1]", "[3, 5]")
    _raises(ValueError, lambda: m(torch.randn(6, 7), ws, bs, ["relu", "relu"]), "mlp", "x.shape[-1]", "[6, 7]")
    _raises(ValueError, lambda: m(x, ws, bs, ["relu"]), "mlp", "activations")
    _raises(ValueError, lambda: m(x, ws, bs, ["relu", "tanh"]), "mlp", "tanh")
    _raises(ValueError, lambda: m(x, ws, [bs[0], torch.randn(4)], ["relu", "relu"]), "mlp", "biases[1]", "[4]")
    _raises(TypeError, lambda: m(x, [ws[0], ws[1].bfloat16()], bs, ["relu", "relu"]), "mlp", "weights[1]",
            "bfloat16")
    _raises(TypeError, lambda: m(x, ws, [bs[0], bs[1].half()], ["relu", "relu"]), "mlp", "biases[1]", "float16")
    _raises(TypeError, lambda: m(x.double(), [w.double() for w in ws], None, ["relu", "relu"]), "mlp", "float64",
            "[6, 5]")
    _raises(ValueError, lambda: m(torch.randn(()), ws, bs, ["relu", "relu"]), "mlp", "x")
    _raises(ValueError, lambda: L(x, ws, bs, ["relu", "relu"], torch.randn(6, 4), "mean"), "mlp_mse_loss",
            "target", "[6, 3]", "[6, 4]")
    _raises(ValueError, lambda: L(x, ws, bs, ["relu", "relu"], torch.randn(6, 3), "avg"), "mlp_mse_loss", "avg")
    _raises(TypeError, lambda: L(x, ws, bs, ["relu", "relu"], torch.randn(6, 3).half(), "mean"),
            "mlp_mse_loss", "target", "float16")
    # the inner ops check what the public entry points would never pass wrong
    _raises(ValueError, lambda: _triton_ops().mlp_forward(x, ws, bs, [1, 0], "relu,relu"),
            "mlp", "has_bias")
    _raises(ValueError, lambda: _triton_ops().mlp_forward(x, ws, bs, [1, 1], "relu"), "mlp",
            "activations")
    outs, _ = _forward_op(x, ws, bs, ("relu", "relu"))
    _raises(ValueError, lambda: _triton_ops().mlp_backward(
        torch.randn(6, 4), x, ws, outs, "relu,relu", True, [1, 1]), "mlp_backward", "grad", "[6, 4]")
    _raises(ValueError, lambda: _triton_ops().mlp_backward(
        torch.randn(6, 3), x, ws, outs[:1], "relu,relu", True, [1, 1]), "mlp_backward", "saved outputs")
    _raises(ValueError, lambda: _triton_ops().mlp_backward(
        torch.randn(6, 3), x, ws, [outs[0], torch.randn(5, 3)], "relu,relu", True, [1, 1]),
        "mlp_backward", "outputs[1]", "[5, 3]")
    _raises(ValueError, lambda: _triton_ops().mlp_mse_backward(
        torch.randn(6, 3), x, ws, outs, "relu,relu", torch.randn(6, 3), "mean", True, [1, 1]),
        "mlp_mse_backward", "grad", "[6, 3]")


@interpreted
def test_backend_registration_and_info():
    import aecomp
    from aecomp.ops import _triton

    assert {"mlp", "mlp_mse_loss"} <= set(_triton.BACKEND.ops)
    text = _triton.BACKEND.describe_mlp()
    assert "fused" in text and "256" in text and "128" in text
    assert "fused" in ops.mlp_fusion_info()["triton"]
    # routed through use_backend too
    ws, bs = _chain((5, 17, 3))
    x = torch.randn(4, 5)
    with aecomp.use_backend("triton"):
        y = ops.mlp(x, ws, bs, ["relu", "sigmoid"])
    ref = torch.sigmoid(F.linear(torch.relu(F.linear(x.double(), ws[0].double(), bs[0].double())),
                                 ws[1].double(), bs[1].double()))
    _close(y, ref, F32, "use_backend('triton') mlp")


@interpreted
def test_opcheck():
    ws, bs = _chain((5, 17, 3), bias=(True, False))
    x = torch.randn(7, 5)
    t = torch.rand(7, 3)
    acts = "relu,sigmoid"
    tops = _triton_ops()
    torch.library.opcheck(tops.mlp_forward.default, (x, ws, [bs[0]], [1, 0], acts))
    torch.library.opcheck(tops.mlp_forward.default, (x.requires_grad_(), [w.requires_grad_() for w in ws],
                                                     [bs[0].requires_grad_()], [1, 0], acts))
    x, ws, bs = x.detach(), [w.detach() for w in ws], [b if b is None else b.detach() for b in bs]
    torch.library.opcheck(tops.mlp_mse_forward.default, (x, ws, [bs[0]], [1, 0], acts, t, "mean"))
    torch.library.opcheck(tops.mlp_mse_forward.default, (x, ws, [bs[0]], [1, 0], acts, t, "none"))
    outs, _ = _forward_op(x, ws, bs, acts.split(","))
    torch.library.opcheck(tops.mlp_backward.default, (torch.randn(7, 3), x, ws, outs, acts, True, [1, 0]))
    torch.library.opcheck(tops.mlp_mse_backward.default,
                          (torch.rand(()), x, ws, outs, acts, t, "sum", False, [1, 0]))


@interpreted
def test_torch_compile_fullgraph():
    ws, bs = _chain(SMALL_AE, bias=(True, False, True, True))
    for p in ws + [b for b in bs if b is not None]:
        p.requires_grad_()
    x = torch.rand(9, SMALL_AE[0])
    params = ws + [b for b in bs if b is not None]

    def loss(x, ws, bs):
        return ops.mlp_mse_loss(x, ws, bs, SMALL_AE_ACTS, None, "mean", backend="triton")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(x, ws, bs)
    grads = torch.autograd.grad(out, params)
    ref = loss(x, ws, bs)
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.equal(out, ref)
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# compiled-mode tests (no GPU needed)
# ----------------------------------------------------------------------------------------
def _kernels_interpreted() -> bool:
    from aecomp.kernels.linear_act import INTERPRETED

    return INTERPRETED


def test_compiled_chain_traces_into_chain_kernels(monkeypatch):
    """With fake CUDA tensors the autoencoder's fused loss + backward is: one forward chain
    kernel, the fixed-order loss sum, one dgrad-chain kernel (with the MSE entry), and the
    per-layer weight-gradient GEMMs (+ their split sums); no MSE backward kernel."""
    if _kernels_interpreted():
        pytest.skip("this process runs Triton's interpreter")
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    from aecomp.kernels import _configs

    monkeypatch.setattr(_configs, "cuda_family", lambda index: ("hopper", 132))
    _triton_ops()

    def step(x, *params):
        ws, bs = list(params[:6]), list(params[6:])
        defined = bs
        res = torch.ops.aecomp_triton.mlp_mse_forward(x, ws, defined, [1] * 6, ",".join(AE_ACTS), x, "mean")
        loss, outs = res[0], list(res[1:])
        grads = _triton_ops().mlp_mse_backward(torch.ones_like(loss), x, ws, outs, ",".join(AE_ACTS), x,
                                                         "mean", False, [1] * 6)
        return loss, grads

    with FakeTensorMode():
        x = torch.empty(65536, 784, device="cuda", dtype=BF16)
        ws = [torch.empty(o, i, device="cuda", dtype=BF16) for i, o in zip(AE_DIMS, AE_DIMS[1:])]
        bs = [torch.empty(o, device="cuda", dtype=BF16) for o in AE_DIMS[1:]]
    gm = make_fx(dispatch_functionalize(step), tracing_mode="fake")(x, *ws, *bs)
    names = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            names.append(getattr(kernel, "fn", kernel).__name__)
    assert names.count("mlp_fwd_6") == 1 and names.count("mlp_bwd_6") == 1, names
    assert names.count("linear_act_wgrad_kernel") == 6, names
    assert "mse_bwd_kernel" not in names and "mse_fwd_kernel" not in names, names
    assert set(names) <= {"mlp_fwd_6", "mlp_bwd_6", "mse_sum_kernel", "linear_act_wgrad_kernel",
                          "sum_splits_kernel"}, names
    assert not any("aecomp_triton" in str(n.target) for n in gm.graph.nodes), gm.code


# ----------------------------------------------------------------------------------------
# GPU tests
# ----------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


def _gpu_tol(dtype):
    if dtype == F32 and torch.backends.cuda.matmul.allow_tf32:
        return 3e-4
    # float32: sums of up to 65536 products in the weight gradients (a few ulps of the largest partial sum)
    return {F32: 3e-5, BF16: 1.6e-2, F16: 2e-3}[dtype]


def _gpu_chain(dtype):
    torch.manual_seed(0)
    ws, bs = _chain(AE_DIMS, dtype, device="cuda")
    x = torch.rand(65536, 784, device="cuda").to(dtype)
    for t in [x] + ws + bs:
        t.requires_grad_()
    return x, ws, bs


@gpu
@pytest.mark.parametrize("dtype", [BF16, F32], ids=lambda d: str(d).replace("torch.", ""))
def test_gpu_reference_autoencoder(dtype):
    """The whole reference autoencoder at batch 65536: the chain, the fused loss and every
    gradient, layer by layer against float64 on the op's own inputs."""
    x, ws, bs = _gpu_chain(dtype)
    tol = _gpu_tol(dtype)
    outs, loss = _forward_op(x, ws, bs, AE_ACTS, x, "mean")
    _check_layers(x, ws, bs, AE_ACTS, outs, dtype, tol)
    y = outs[-1]
    d = y.detach().double() - x.detach().double()
    _close(loss, (d * d).mean(), dtype, "loss", tol)
    leaves = [x] + ws + bs
    grads = torch.autograd.grad(loss, leaves)
    g_last = 2.0 / d.numel() * d
    dx, dws, dbs = _ref_backward(g_last, x, ws, outs, AE_ACTS, dtype)
    _close(grads[0], dx - g_last, dtype, "dx", tol)
    for i in range(6):
        _close(grads[1 + i], dws[i], dtype, f"dW[{i}]", tol)
        _close(grads[7 + i], dbs[i], dtype, f"db[{i}]", tol)
    # the public op gives the same bits as the inner op
    assert torch.equal(ops.mlp_mse_loss(x, ws, bs, AE_ACTS, None, "mean", backend="triton"), loss)
    y2 = ops.mlp(x, ws, bs, AE_ACTS, backend="triton")
    assert torch.equal(y2, y)


@gpu
def test_gpu_bf16_error_not_worse_than_torch():
    torch.manual_seed(4)
    _check_error_not_worse_than_torch(BF16, "cuda")


@gpu
def test_gpu_deterministic_and_wide():
    x, ws, bs = _gpu_chain(BF16)
    params = ws + bs
    runs = []
    for _ in range(3):
        loss = ops.mlp_mse_loss(x, ws, bs, AE_ACTS, None, "mean", backend="triton")
        runs.append((loss, *torch.autograd.grad(loss, params)))
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
    # a chain at the 16-bit limit (the "wide" tiles) and one past it (split)
    for dims in ((784, 256, 200, 784), (784, 300, 64, 784)):
        torch.manual_seed(1)
        _gpu_check_chain(dims, ("relu", "relu", "sigmoid"), BF16)


def _gpu_check_chain(dims, acts, dtype):
    ws, bs = _chain(dims, dtype, device="cuda")
    x = torch.rand(8191, dims[0], device="cuda").to(dtype)
    for t in [x] + ws + bs:
        t.requires_grad_()
    outs, _ = _forward_op(x, ws, bs, acts)
    _check_layers(x, ws, bs, acts, outs, dtype, _gpu_tol(dtype))
    g = torch.randn_like(outs[-1])
    grads = torch.autograd.grad(outs[-1], [x] + ws, g)
    dx, dws, _ = _ref_backward(g.double(), x, ws, outs, acts, dtype)
    _close(grads[0], dx, dtype, "dx", _gpu_tol(dtype))
    for i in range(len(ws)):
        _close(grads[1 + i], dws[i], dtype, f"dW[{i}]", _gpu_tol(dtype))


@gpu
def test_gpu_compile():
    """torch.compile (inductor) traces through the composite op into the chain kernels."""
    torch.manual_seed(3)
    ws, bs = _chain(AE_DIMS, BF16, device="cuda")
    for p in ws + bs:
        p.requires_grad_()
    x = torch.rand(300, 784, device="cuda").to(BF16)

    def loss(x):
        return ops.mlp_mse_loss(x, ws, bs, AE_ACTS, None, "mean", backend="triton")

    out = torch.compile(loss, fullgraph=True)(x)
    grads = torch.autograd.grad(out, ws + bs)
    ref = loss(x)
    ref_grads = torch.autograd.grad(ref, ws + bs)
    _close(out, ref.detach().double(), BF16, "compiled loss")
    for a, r in zip(grads, ref_grads):
        _close(a, r.double(), BF16, "compiled grad")


def test_float32_ieee_chains_run_per_layer_below_triton_3_9(monkeypatch):
    """Under triton 3.6 (the GPU machine's) every float32 "ieee" chain tile spills registers
    (test_triton_aot.py, under .venv-triton36), so there those chains run one linear_act per
    layer; tf32 and 16-bit chains stay fused, and triton 3.9 fuses float32 too."""
    from aecomp.kernels import _configs, mlp

    monkeypatch.setattr(_configs, "triton_version", lambda: (3, 6))
    assert _configs.chain_max_width("hopper", 4, "ieee") == 0
    assert _configs.chain_max_width("hopper", 4, "tf32") == 128
    assert _configs.chain_max_width("hopper", 2, "ieee") == 256
    segs = mlp.plan_chain((784, 128, 64, 32, 64, 128, 784), _configs.chain_max_width("hopper", 4, "ieee"))
    assert len(segs) == 6 and not any(s.fused for s in segs)
    monkeypatch.setattr(_configs, "triton_version", lambda: (3, 9))
    assert _configs.chain_max_width("hopper", 4, "ieee") == 128
