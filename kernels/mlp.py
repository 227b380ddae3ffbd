r"""Fused layer chains in Triton: a whole chain of ``linear_act`` layers in one forward kernel,
its backward in one chain kernel plus one weight-gradient GEMM per layer.

Math. A chain of ``L`` layers, ``h_0 = x`` (``[M, D_0]``), ``W_i: [D_{i+1}, D_i]``::

    forward    y_i = h_{i+1} = act_i(h_i W_i^T + b_i)                      i = 0 .. L-1
    backward   gz_{L-1} = g act_{L-1}'(y_{L-1})                 (mlp: g = dLoss/dy given)
               gz_{L-1} = s g_loss (y_{L-1} - t) act_{L-1}'(y_{L-1})   (fused MSE entry:
                          s = 2/n for mean, 2 for sum and none; g_loss the loss gradient)
               g_i      = gz_i W_i                           [M, D_i]  (dgrad, chained)
               gz_{i-1} = g_i act_{i-1}'(y_{i-1})            (act' from the saved OUTPUT y)
               dW_i     = gz_i^T h_i,  db_i = sum_rows gz_i  (wgrad: a reduction over rows)
               dx       = g_0
    act' as in linear_act: none 1, relu 0 where y <= 0 (a NaN y passes), sigmoid y (1 - y).
    MSE: loss = mean/sum/none of (y_{L-1} - t)^2, formed in the forward kernel's epilogue.

Kernels (generated per number of layers, see below):

* ``mlp_fwd_<L>`` -- one program per ``BLOCK_M`` rows runs every layer of the chain. The first
  layer streams ``x`` over ``D_0`` in ``BLOCK_K`` steps (``D_0`` may be wide, e.g. 784); each
  middle layer is one ``tl.dot`` of the register-resident activation tile ``[BLOCK_M, P_i]``
  with the whole weight ``W_i^T`` ``[P_i, P_{i+1}]``, bias and activation in registers; the last
  layer produces its output in ``BLOCK_N`` column tiles (``D_L`` may be wide). With the fused
  loss the epilogue of each output tile also reads the target tile and either accumulates
  ``(y - t)^2`` into one float32 partial sum per row (summed in a fixed order afterwards: no
  atomics) or writes it out (reduction none).
* ``mlp_bwd_<L>`` -- one program per ``BLOCK_M`` rows runs the dgrad chain from the output
  down: the output layer's ``gz`` column tile by column tile (from ``g``, or from ``y`` and
  the target -- the MSE gradient and the output activation's derivative are formed in the
  same registers and never written apart), then ``g_i``, ``gz_{i-1}`` layer by layer in
  registers, and ``dx`` in ``BLOCK_K`` column tiles. It writes each ``gz_i`` (the input of
  the weight gradient) and ``dx``.
* the weight gradients ``dW_i = gz_i^T h_i``, ``db_i``: :func:`linear_act_wgrad_kernel`
  with ``act = none`` per layer -- a reduction over all rows cannot stay in one program, and
  that kernel's fixed-order split-M reduction makes ``dW``/``db`` bitwise deterministic for a
  given tile (what holds across processes: see "Reproducibility" in kernels/linear_act.py; the
  chain tiles are autotuned too, and ``AECOMP_TRITON_AUTOTUNE=off`` pins them).
* the training step with the optimizer fused in (``chain_backward(..., update=)``, used by
  ``aecomp.ops._triton.mlp_mse_train_step_triton``): the weight-gradient pass of each layer is
  :func:`kernels.optim.wgrad_optim_kernel`, which applies Adam / AdamW / SGD to each ``W``/``b``
  tile where its reduction completes (its epilogue with one row split; else the final
  split-sum pass) -- launched after the segment's dgrad kernel, the last reader of the old
  weights (the ordering argument is in kernels/optim.py).

Widths: ``D_0`` and ``D_L`` (the chain's input and output) may be anything; every
intermediate width ``D_1 .. D_{L-1}`` lives on chip, padded to ``P_i`` = the next power of
two >= 16 (a constexpr; masked loads and stores, so any widths and any batch size work with
no padding by the caller). The limit is the middle layers' weight tile in shared memory:
256 for bfloat16/float16 and 128 for float32 on Hopper (``_configs.CHAIN_MAX_WIDTH``). A
wider intermediate splits the chain there into segments that run one after another (the
wide activation goes through memory); a segment of one layer is a plain ``linear_act``, so
a chain whose every intermediate is too wide runs as one ``linear_act`` per layer. The
split is logged (``logging.getLogger("aecomp")``, debug) and described by ``aecomp info``.
On Hopper the reference autoencoder 784-128-64-32-64-128-784 is ONE forward kernel and ONE
dgrad kernel (+ 6 weight-gradient GEMMs) in every dtype (on other GPUs float32 keeps <= 64
on chip, so there it splits at its two 128-wide layers: linear_act, 128-64-32-64-128 fused,
linear_act).

Saved for the backward: every layer's output ``y_i`` (what the C++ CPU chain saves too),
not recomputation. Why: the weight gradient of layer ``i`` reads its input ``h_i`` over all
rows in a separate reduction kernel, so ``h_i`` must be in memory for the backward whichever
way the forward goes; recomputing would re-read ``x`` (784 wide in the reference chain: more
bytes than all five intermediates together, 416 wide) and redo a third of the FLOPs. The
intermediates are narrow by construction (<= 256), so saving them is the cheap option: for
the reference chain in bfloat16 the saved intermediates are 832 bytes a row against 3136
for ``x`` and ``y``.

Precision: float32 accumulation everywhere; each layer's output is rounded to the data dtype
before it is stored *and* before it feeds the next layer, exactly as a chain of separate
``linear_act`` calls would; ``g_i`` is carried in float32 between layers (better than torch's
bfloat16 autograd, which rounds every ``g_i``); ``gz_i`` is rounded to the data dtype before
each tensor-core product, like ``linear_act``'s backward.

Generated kernels: the number of layers changes the kernel's argument list (one weight, bias
and output pointer per layer) and its body, so :func:`fwd_kernel` / :func:`bwd_kernel` write
the source of the ``L``-layer kernel from a template (a list of calls to the ``@triton.jit``
helpers below), register it with :mod:`linecache` (``triton.jit`` and Triton's interpreter both
read a kernel's source with :func:`inspect.getsourcelines`) and ``exec`` it in this module's
namespace; the result is cached per ``L``. Everything else -- activations, bias flags, padded
widths, tiles -- is a constexpr of that one kernel, so ``triton.jit`` specialises it per chain
structure as usual, and ``triton.compile(ASTSource(fwd_kernel(6), ...))`` compiles it ahead
of time like any other kernel.
"""
from __future__ import annotations

import functools
import linecache
import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import _configs
from .linear_act import ACT_CODES, INTERPRETED, _act, _act_grad, _mma, linear_act_backward, linear_act_forward
from .linear_act import device_family, precision_for
from .mse import mse_backward, mse_forward, mse_sum_kernel

LOG = logging.getLogger("aecomp")

__all__ = [
    "INTERPRETED", "Segment", "plan_chain", "fwd_kernel", "bwd_kernel", "chain_forward", "chain_backward",
    "describe",
]


# ----------------------------------------------------------------------------------------
# device helpers (inlined into the generated kernels)
# ----------------------------------------------------------------------------------------
@triton.jit
def _bias_act(acc, b_ptr, stride_b, N, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PN: tl.constexpr):
    """``act(acc + b)`` on a ``[BLOCK_M, PN]`` float32 tile (padded columns get ``b = 0``)."""
    if HAS_BIAS:
        rn = tl.arange(0, PN)
        bias = tl.load(b_ptr + rn * stride_b, mask=rn < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    return _act(acc, ACT)


@triton.jit
def _store_h(o_ptr, h, rm, mmask, N, PN: tl.constexpr):
    """Store a layer's output (contiguous ``[M, N]``), rounded to the output dtype; return the
    rounded tile: the next layer's input is exactly the stored (saved) value."""
    hc = h.to(o_ptr.dtype.element_ty)
    rn = tl.arange(0, PN)
    tl.store(o_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], hc, mask=mmask[:, None] & (rn < N)[None, :])
    return hc


@triton.jit
def _fwd_first(x_ptr, w_ptr, b_ptr, am, K, N, stride_xm, stride_xk, stride_wn, stride_wk, stride_b,
               HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PN: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``act(x W^T + b)`` for one row tile, ``x`` streamed over ``K`` in ``BLOCK_K`` steps."""
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, PN)
    nmask = rn < N
    x_ptrs = x_ptr + am[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rk[:, None] * stride_wk + rn[None, :] * stride_wn  # [BLOCK_K, PN] tile of W^T
    acc = tl.zeros((BLOCK_M, PN), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = rk < K - k0
        a = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = _mma(a, b, acc, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return _bias_act(acc, b_ptr, stride_b, N, HAS_BIAS, ACT, PN)


@triton.jit
def _fwd_mid(h, w_ptr, b_ptr, K, N, stride_wn, stride_wk, stride_b, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
             PK: tl.constexpr, PN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    """``act(h W^T + b)`` with the whole ``W^T`` (``[PK, PN]``, zero padded) in one tile."""
    rk = tl.arange(0, PK)
    rn = tl.arange(0, PN)
    wt = tl.load(w_ptr + rk[:, None] * stride_wk + rn[None, :] * stride_wn,
                 mask=(rk < K)[:, None] & (rn < N)[None, :], other=0.0)
    acc = _mma(h, wt, tl.zeros((BLOCK_M, PN), dtype=tl.float32), PRECISION)
    return _bias_act(acc, b_ptr, stride_b, N, HAS_BIAS, ACT, PN)


@triton.jit
def _fwd_last(h, w_ptr, b_ptr, y_ptr, t_ptr, l_ptr, rm, am, mmask, K, N,
              stride_wn, stride_wk, stride_b, stride_tm, stride_tn,
              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PK: tl.constexpr, LOSS: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The output layer in ``BLOCK_N`` column tiles: ``y = act(h W^T + b)`` stored, and with
    ``LOSS`` the squared error against the target: 1 = one float32 sum per row into
    ``l_ptr[M]``, 2 = elementwise into ``l_ptr[M, N]``."""
    rk = tl.arange(0, PK)
    rn = tl.arange(0, BLOCK_N)
    kmask = rk < K
    rows = rm.to(tl.int64)
    wt_ptrs = w_ptr + rk[:, None] * stride_wk + rn[None, :].to(tl.int64) * stride_wn
    sq_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + rn
        nmask = cols < N
        wt = tl.load(wt_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = _mma(h, wt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols * stride_b, mask=nmask, other=0.0).to(tl.float32)[None, :]
        y = _act(acc, ACT).to(y_ptr.dtype.element_ty)
        omask = mmask[:, None] & nmask[None, :]
        tl.store(y_ptr + rows[:, None] * N + cols[None, :], y, mask=omask)
        if LOSS != 0:
            t_ptrs = t_ptr + am[:, None] * stride_tm + cols.to(tl.int64)[None, :] * stride_tn
            t = tl.load(t_ptrs, mask=nmask[None, :], other=0.0).to(tl.float32)
            d = y.to(tl.float32) - t  # the loss of the stored (rounded) y, as mse_loss(mlp(x)) would
            sq = d * d
            if LOSS == 1:
                sq_acc += tl.where(omask, sq, 0.0)
            else:
                tl.store(l_ptr + rows[:, None] * N + cols[None, :], sq.to(l_ptr.dtype.element_ty), mask=omask)
        wt_ptrs += BLOCK_N * stride_wn
    if LOSS == 1:
        tl.store(l_ptr + rows, tl.sum(sq_acc, axis=1), mask=mmask)


@triton.jit
def _gz(g, y_ptr, z_ptr, rm, am, mmask, N, stride_ym, stride_yn, ACT: tl.constexpr, PN: tl.constexpr):
    """``gz = g act'(y)`` (``g`` float32 ``[BLOCK_M, PN]``, ``y`` the saved output) rounded to the
    data dtype, stored to ``z`` (contiguous ``[M, N]``: the weight gradient's input) and returned."""
    rn = tl.arange(0, PN)
    nmask = rn < N
    if ACT != 0:
        y = tl.load(y_ptr + am[:, None] * stride_ym + rn[None, :] * stride_yn, mask=nmask[None, :],
                    other=0.0).to(tl.float32)
        g = _act_grad(g, y, ACT)
    gz = g.to(z_ptr.dtype.element_ty)
    tl.store(z_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], gz, mask=mmask[:, None] & nmask[None, :])
    return gz


@triton.jit
def _bwd_last(g_ptr, t_ptr, y_ptr, z_ptr, w_ptr, rm, am, mmask, K, N,
              stride_gm, stride_gn, stride_tm, stride_tn, stride_ym, stride_yn, stride_wn, stride_wk, scale,
              ACT: tl.constexpr, ENTRY: tl.constexpr, PK: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The output layer's ``gz``, ``BLOCK_N`` columns at a time (stored), and the gradient of its
    input ``sum_n gz[:, n] W[n, :]`` (returned, float32 ``[BLOCK_M, PK]``).

    ``ENTRY``: 0 = ``g`` is the incoming gradient ``[M, N]``; 1 = fused MSE with a scalar loss
    gradient (mean, sum): ``g = scale * g_loss * (y - t)``; 2 = fused MSE, reduction none:
    ``g = scale * g_loss[m, n] * (y - t)``."""
    rk = tl.arange(0, PK)
    rn = tl.arange(0, BLOCK_N)
    kmask = rk < K
    rows = rm.to(tl.int64)
    acc = tl.zeros((BLOCK_M, PK), dtype=tl.float32)
    if ENTRY == 1:
        gs = tl.load(g_ptr).to(tl.float32) * scale
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + rn).to(tl.int64)
        nmask = cols < N
        y = tl.load(y_ptr + am[:, None] * stride_ym + cols[None, :] * stride_yn, mask=nmask[None, :],
                    other=0.0).to(tl.float32)
        if ENTRY == 0:
            g = tl.load(g_ptr + am[:, None] * stride_gm + cols[None, :] * stride_gn, mask=nmask[None, :],
                        other=0.0).to(tl.float32)
        else:
            t = tl.load(t_ptr + am[:, None] * stride_tm + cols[None, :] * stride_tn, mask=nmask[None, :],
                        other=0.0).to(tl.float32)
            if ENTRY == 1:
                g = (y - t) * gs
            else:
                gl = tl.load(g_ptr + am[:, None] * stride_gm + cols[None, :] * stride_gn, mask=nmask[None, :],
                             other=0.0).to(tl.float32)
                g = (y - t) * (gl * scale)
        gz = _act_grad(g, y, ACT).to(z_ptr.dtype.element_ty)
        tl.store(z_ptr + rows[:, None] * N + cols[None, :], gz, mask=mmask[:, None] & nmask[None, :])
        w = tl.load(w_ptr + cols[:, None] * stride_wn + rk[None, :] * stride_wk,
                    mask=nmask[:, None] & kmask[None, :], other=0.0)  # [BLOCK_N, PK] rows of W
        acc = _mma(gz, w, acc, PRECISION)
    return acc


@triton.jit
def _bwd_mid(g, y_ptr, z_ptr, w_ptr, rm, am, mmask, K, N, stride_ym, stride_yn, stride_wn, stride_wk,
             ACT: tl.constexpr, PK: tl.constexpr, PN: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    """``gz = g act'(y)`` (stored) and the gradient of the layer's input ``gz W`` (``[BLOCK_M, PK]``)."""
    gz = _gz(g, y_ptr, z_ptr, rm, am, mmask, N, stride_ym, stride_yn, ACT, PN)
    rn = tl.arange(0, PN)
    rk = tl.arange(0, PK)
    w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :] * stride_wk,
                mask=(rn < N)[:, None] & (rk < K)[None, :], other=0.0)
    return _mma(gz, w, tl.zeros((BLOCK_M, PK), dtype=tl.float32), PRECISION)


@triton.jit
def _bwd_first(g, y_ptr, z_ptr, w_ptr, dx_ptr, rm, am, mmask, K, N, stride_ym, stride_yn, stride_wn, stride_wk,
               ACT: tl.constexpr, PN: tl.constexpr, NEED_X: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``gz_0`` (stored) and, with ``NEED_X``, ``dx = gz_0 W_0`` in ``BLOCK_K`` column tiles."""
    gz = _gz(g, y_ptr, z_ptr, rm, am, mmask, N, stride_ym, stride_yn, ACT, PN)
    if NEED_X:
        rn = tl.arange(0, PN)
        rk = tl.arange(0, BLOCK_K)
        nmask = rn < N
        rows = rm.to(tl.int64)
        w_ptrs = w_ptr + rn[:, None] * stride_wn + rk[None, :].to(tl.int64) * stride_wk
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + rk
            kmask = cols < K
            w = tl.load(w_ptrs, mask=nmask[:, None] & kmask[None, :], other=0.0)
            dx = _mma(gz, w, tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32), PRECISION)
            tl.store(dx_ptr + rows[:, None] * K + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=mmask[:, None] & kmask[None, :])
            w_ptrs += BLOCK_K * stride_wk


# ----------------------------------------------------------------------------------------
# kernel generation: one forward and one backward kernel per number of layers
# ----------------------------------------------------------------------------------------
def _fwd_source(L: int) -> str:
    """Source of the ``L``-layer forward kernel (``L >= 2``)."""
    j = L - 1
    params = (
        ["x_ptr"] + [f"w{i}_ptr, b{i}_ptr, o{i}_ptr" for i in range(L)] + ["t_ptr, l_ptr", "M"]
        + [", ".join(f"D{i}" for i in range(L + 1)), "sxm, sxk"]
        + [f"swn{i}, swk{i}, sb{i}" for i in range(L)] + ["stm, stn", "M_BUCKET"]
        + [f"ACT{i}: tl.constexpr, HAS_BIAS{i}: tl.constexpr" for i in range(L)]
        + [", ".join(f"P{i}: tl.constexpr" for i in range(1, L))]
        + ["LOSS: tl.constexpr, PRECISION: tl.constexpr",
           "BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr"]
    )
    body = [
        "pid = tl.program_id(0)",
        "rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)",
        "am = (rm % M).to(tl.int64)  # rows past M re-read real rows; they are never stored",
        "mmask = rm < M",
        "h = _fwd_first(x_ptr, w0_ptr, b0_ptr, am, D0, D1, sxm, sxk, swn0, swk0, sb0,",
        "               HAS_BIAS0, ACT0, P1, PRECISION, BLOCK_M, BLOCK_K)",
        "h = _store_h(o0_ptr, h, rm, mmask, D1, P1)",
    ]
    for i in range(1, j):
        body += [
            f"h = _fwd_mid(h, w{i}_ptr, b{i}_ptr, D{i}, D{i + 1}, swn{i}, swk{i}, sb{i}, HAS_BIAS{i}, ACT{i},",
            f"             P{i}, P{i + 1}, PRECISION, BLOCK_M)",
            f"h = _store_h(o{i}_ptr, h, rm, mmask, D{i + 1}, P{i + 1})",
        ]
    body += [
        f"_fwd_last(h, w{j}_ptr, b{j}_ptr, o{j}_ptr, t_ptr, l_ptr, rm, am, mmask, D{j}, D{L}, swn{j}, swk{j}, sb{j},",
        f"          stm, stn, HAS_BIAS{j}, ACT{j}, P{j}, LOSS, PRECISION, BLOCK_M, BLOCK_N)",
    ]
    doc = f'"""Forward of a {L}-layer chain for one BLOCK_M-row tile (generated by kernels/mlp.py)."""'
    return _assemble(f"mlp_fwd_{L}", params, doc, body)


def _bwd_source(L: int) -> str:
    """Source of the ``L``-layer backward (dgrad chain) kernel (``L >= 2``)."""
    j = L - 1
    params = (
        ["g_ptr, t_ptr"] + [f"w{i}_ptr, o{i}_ptr, z{i}_ptr" for i in range(L)] + ["dx_ptr", "M"]
        + [", ".join(f"D{i}" for i in range(L + 1)), "sgm, sgn, stm, stn"]
        + [f"swn{i}, swk{i}, som{i}, son{i}" for i in range(L)] + ["scale", "M_BUCKET"]
        + [f"ACT{i}: tl.constexpr" for i in range(L)]
        + [", ".join(f"P{i}: tl.constexpr" for i in range(1, L))]
        + ["ENTRY: tl.constexpr, NEED_X: tl.constexpr, PRECISION: tl.constexpr",
           "BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr"]
    )
    body = [
        "pid = tl.program_id(0)",
        "rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)",
        "am = (rm % M).to(tl.int64)",
        "mmask = rm < M",
        f"g = _bwd_last(g_ptr, t_ptr, o{j}_ptr, z{j}_ptr, w{j}_ptr, rm, am, mmask, D{j}, D{L},",
        f"              sgm, sgn, stm, stn, som{j}, son{j}, swn{j}, swk{j}, scale,",
        f"              ACT{j}, ENTRY, P{j}, PRECISION, BLOCK_M, BLOCK_N)",
    ]
    for i in range(j - 1, 0, -1):
        body += [
            f"g = _bwd_mid(g, o{i}_ptr, z{i}_ptr, w{i}_ptr, rm, am, mmask, D{i}, D{i + 1},",
            f"             som{i}, son{i}, swn{i}, swk{i}, ACT{i}, P{i}, P{i + 1}, PRECISION, BLOCK_M)",
        ]
    body += [
        "_bwd_first(g, o0_ptr, z0_ptr, w0_ptr, dx_ptr, rm, am, mmask, D0, D1, som0, son0, swn0, swk0,",
        "           ACT0, P1, NEED_X, PRECISION, BLOCK_M, BLOCK_K)",
    ]
    doc = f'"""Dgrad chain of a {L}-layer chain for one BLOCK_M-row tile (generated by kernels/mlp.py)."""'
    return _assemble(f"mlp_bwd_{L}", params, doc, body)


def _assemble(name: str, params: List[str], doc: str, body: List[str]) -> str:
    # M_BUCKET (next power of two of M) is only an autotuning key; M is not specialised on (a
    # ragged last batch must not compile the kernel again)
    lines = ['@triton.jit(do_not_specialize=["M"])', f"def {name}("]
    lines += [f"    {p}," for p in params]
    lines += ["):", f"    {doc}"]
    lines += [f"    {b}" for b in body]
    return "\n".join(lines) + "\n"


def _define(name: str, source: str):
    """``exec`` generated kernel source in this module's namespace, with the source registered
    in :mod:`linecache` under a pseudo file name so that ``inspect.getsourcelines`` (used by
    ``triton.jit``, Triton's interpreter and torch.compile) finds it."""
    filename = f"<aecomp.kernels.mlp generated {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), globals())  # noqa: S102 - our own template
    return globals()[name]


@functools.lru_cache(maxsize=None)
def fwd_kernel(layers: int):
    """The ``@triton.jit`` forward kernel of a chain of ``layers`` (>= 2) layers."""
    if layers < 2:
        raise ValueError(f"a fused chain has at least 2 layers, got {layers}")
    return _define(f"mlp_fwd_{layers}", _fwd_source(layers))


@functools.lru_cache(maxsize=None)
def bwd_kernel(layers: int):
    """The ``@triton.jit`` dgrad-chain kernel of a chain of ``layers`` (>= 2) layers."""
    if layers < 2:
        raise ValueError(f"a fused chain has at least 2 layers, got {layers}")
    return _define(f"mlp_bwd_{layers}", _bwd_source(layers))


_TUNED: dict = {}


def _chain_keys(kind: str, layers: int) -> List[str]:
    """Autotuning key of a chain kernel: the batch size's bucket (next power of two), the widths
    and every constexpr variant (activations, bias flags, padded widths, loss entry, precision)."""
    keys = ["M_BUCKET"] + [f"D{i}" for i in range(layers + 1)] + [f"ACT{i}" for i in range(layers)]
    keys += [f"P{i}" for i in range(1, layers)] + ["PRECISION"]
    if kind == "fwd":
        return keys + [f"HAS_BIAS{i}" for i in range(layers)] + ["LOSS"]
    return keys + ["ENTRY", "NEED_X"]


def tuned_kernel(kind: str, layers: int, family: str, element_size: int, widest: int):
    """``triton.autotune`` over the chain tiles for ``kind`` ('fwd', 'bwd'), keyed on the sizes."""
    esize = 4 if element_size >= 4 else 2
    tiles = _configs.chain_tiles(family, esize, widest)
    key = (kind, layers, family, esize, tiles, _configs.pinned())
    tuned = _TUNED.get(key)
    if tuned is None:
        fn = fwd_kernel(layers) if kind == "fwd" else bwd_kernel(layers)
        tuned = triton.autotune(
            configs=_configs.chain_configs(family, esize, widest),
            key=_chain_keys(kind, layers),
        )(fn)
        _TUNED[key] = tuned
    return tuned


# ----------------------------------------------------------------------------------------
# the plan: which layers run fused
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Layers ``[start, stop)`` of a chain, run by one fused kernel when ``fused``."""

    start: int
    stop: int

    @property
    def fused(self) -> bool:
        return self.stop - self.start >= 2


def pad(width: int) -> int:
    """The on-chip width of an intermediate: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(int(width)))


@functools.lru_cache(maxsize=1024)
def plan_chain(widths: Tuple[int, ...], max_width: int) -> Tuple[Segment, ...]:
    """Split a chain with layer widths ``widths`` (``D_0 .. D_L``) into segments.

    An intermediate width ``D_i`` (``0 < i < L``) above ``max_width`` (or zero) ends one
    segment and starts the next; the chain's input and output widths never split it.
    Logged once per chain structure (debug) when the chain does not run as one kernel.
    """
    L = len(widths) - 1
    cuts = [i for i in range(1, L) if widths[i] > max_width or widths[i] == 0]
    bounds = [0, *cuts, L]
    segments = tuple(Segment(a, b) for a, b in zip(bounds, bounds[1:]))
    chain = "-".join(map(str, widths))
    if len(segments) == 1 and segments[0].fused:
        LOG.debug("aecomp triton mlp %s: one fused kernel (intermediate widths <= %d)", chain, max_width)
    elif all(not s.fused for s in segments):
        LOG.debug("aecomp triton mlp %s: no intermediate width fits on chip (limit %d): one linear_act per "
                  "layer", chain, max_width)
    else:
        parts = ", ".join(f"layers {s.start}-{s.stop - 1} " + ("fused" if s.fused else "as linear_act")
                          for s in segments)
        LOG.debug("aecomp triton mlp %s: intermediate width(s) %s exceed the on-chip limit %d; split into %s",
                  chain, ", ".join(str(widths[i]) for i in cuts), max_width, parts)
    return segments


def describe() -> str:
    """How the triton backend runs a chain (``aecomp info``)."""
    lim = _configs.CHAIN_MAX_WIDTH
    return (
        "one fused Triton kernel per chain forward (intermediates on chip: widths <= "
        f"{lim[('hopper', 2)]} in bfloat16/float16, <= {lim[('hopper', 4)]} in float32 on Hopper; "
        f"<= {lim[('default', 2)]}/{lim[('default', 4)]} on other GPUs; input and output widths "
        "unlimited), fused MSE loss entry, backward = one dgrad-chain kernel + one deterministic "
        "wgrad GEMM per layer; a wider intermediate splits the chain there (a one-layer piece "
        "runs as linear_act)"
    )


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _plain(kernel):
    return kernel


def _rows(t: torch.Tensor) -> int:
    return math.prod(t.shape[:-1])


def _widths(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> Tuple[int, ...]:
    return (int(x.shape[-1]), *(int(w.shape[0]) for w in weights))


def chain_plan(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> Tuple[Segment, ...]:
    family, _ = device_family(x.device)
    limit = _configs.chain_max_width(family, x.element_size(), precision_for(x.dtype, x.device))
    return plan_chain(_widths(x, weights), limit)


def _widest(widths: Sequence[int], seg: Segment) -> int:
    return max(pad(widths[i]) for i in range(seg.start + 1, seg.stop))


@_configs.on_tensor_device
def chain_forward(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                  activations: Sequence[str], target: Optional[torch.Tensor] = None, reduction: str = "mean",
                  wrap_triton: Callable = _plain) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Every layer's output (each a contiguous ``[M, D_{i+1}]``) and, with ``target``, the MSE
    loss of the last one (``reduction`` mean/sum: a 0-d tensor; none: ``target``'s shape).

    ``x`` is ``[..., D_0]``; ``target`` has the chain output's shape ``[..., D_L]``.
    """
    L = len(weights)
    M = _rows(x)
    widths = _widths(x, weights)
    x2 = x.reshape(M, widths[0])
    dev, dtype = x.device, x.dtype
    family, _ = device_family(dev)
    precision = precision_for(dtype, dev)
    segments = chain_plan(x, weights)
    outputs: List[Optional[torch.Tensor]] = [None] * L
    fused_loss = target is not None and segments[-1].fused and M > 0
    t2 = target.reshape(M, widths[L]) if target is not None else None
    loss_buf = None
    if fused_loss:
        if reduction == "none":
            loss_buf = torch.empty((M, widths[L]), device=dev, dtype=dtype)
        else:
            loss_buf = torch.empty((M,), device=dev, dtype=torch.float32)  # one partial per row
    h = x2
    for seg in segments:
        if not seg.fused:
            i = seg.start
            outputs[i] = linear_act_forward(h, weights[i], biases[i], activations[i], wrap_triton=wrap_triton)
            h = outputs[i]
            continue
        n = seg.stop - seg.start
        outs = [torch.empty((M, widths[i + 1]), device=dev, dtype=dtype) for i in range(seg.start, seg.stop)]
        for k, o in enumerate(outs):
            outputs[seg.start + k] = o
        if M > 0:
            last = seg.stop == L
            loss_kind = 0 if not (fused_loss and last) else (2 if reduction == "none" else 1)
            t_arg = t2 if loss_kind else h
            l_arg = loss_buf if loss_kind else h
            args: list = [h]
            for i in range(seg.start, seg.stop):
                b = biases[i]
                args += [weights[i], b if b is not None else weights[i], outputs[i]]
            args += [t_arg, l_arg, M, *widths[seg.start:seg.stop + 1], h.stride(0), h.stride(1)]
            for i in range(seg.start, seg.stop):
                b = biases[i]
                args += [weights[i].stride(0), weights[i].stride(1), b.stride(0) if b is not None else 0]
            args += [t_arg.stride(0), t_arg.stride(1) if t_arg.dim() > 1 else 1]
            consts = {}
            for k, i in enumerate(range(seg.start, seg.stop)):
                consts[f"ACT{k}"] = ACT_CODES[activations[i]]
                consts[f"HAS_BIAS{k}"] = biases[i] is not None
                if k > 0:
                    consts[f"P{k}"] = pad(widths[i])
            kernel = tuned_kernel("fwd", n, family, x.element_size(), _widest(widths, seg))
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
            wrap_triton(kernel)[grid](*args, **consts, M_BUCKET=_configs.bucket(M), LOSS=loss_kind,
                                      PRECISION=precision)
        h = outputs[seg.stop - 1]
    if target is None:
        return outputs, None
    if not fused_loss:
        y = outputs[-1].view(target.shape)
        return outputs, mse_forward(y, target, reduction, wrap_triton=wrap_triton)
    if reduction == "none":
        return outputs, loss_buf.view(target.shape)
    out = torch.empty((), device=dev, dtype=dtype)
    numel = M * widths[L]
    if numel == 0:  # 0/0 for mean, as torch; an empty sum is 0
        return outputs, out.fill_(float("nan") if reduction == "mean" else 0.0)
    cfg = _configs.STREAM[family]
    scale = 1.0 / numel if reduction == "mean" else 1.0
    wrap_triton(mse_sum_kernel)[(1,)](loss_buf, out, M, scale, BLOCK=cfg["REDUCE_BLOCK"], num_warps=cfg["reduce_warps"])
    return outputs, out


@_configs.on_tensor_device
def chain_backward(grad: torch.Tensor, x: torch.Tensor, weights: Sequence[torch.Tensor],
                   outputs: Sequence[torch.Tensor], activations: Sequence[str], need_x: bool,
                   need_bias: Sequence[bool], target: Optional[torch.Tensor] = None, reduction: str = "mean",
                   wrap_triton: Callable = _plain, update: Optional[Callable] = None,
                   ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """``(dx, [dW_i], [db_i])`` of the chain; ``db_i`` (and ``dx``) not needed is an empty ``[0]``.

    With ``update`` (the optimizer fused into the backward, kernels/optim.py) no ``dW_i``/``db_i``
    is formed: after the dgrad launch of each segment (the last read of its weights) the
    layer's weight-gradient pass is ``update(i, g, h_i, y, act_code)`` (gradient ``g act'(y)``
    w.r.t. the pre-activation, ``h_i`` the layer input), which updates ``W_i``/``b_i`` in place;
    the returned gradient lists hold empty ``[0]`` tensors.

    Without ``target``, ``grad`` is the gradient of the chain's output (``[M, D_L]`` or
    ``[..., D_L]``, any strides). With ``target`` the loss is ``mse(outputs[-1], target)`` and
    ``grad`` its gradient (0-d for mean/sum, ``target``'s shape for none): the fused entry.
    ``outputs`` are the forward's saved layer outputs (``[M, D_{i+1}]``, any strides).
    """
    L = len(weights)
    M = _rows(x)
    widths = _widths(x, weights)
    x2 = x.reshape(M, widths[0])
    dev, dtype = x.device, x.dtype
    family, _ = device_family(dev)
    precision = precision_for(dtype, dev)
    segments = chain_plan(x, weights)
    outs = [o.reshape(M, widths[i + 1]) for i, o in enumerate(outputs)]
    dws: List[Optional[torch.Tensor]] = [None] * L
    dbs: List[Optional[torch.Tensor]] = [None] * L

    def empty():  # a distinct [0] tensor per output: outputs of an op must not alias
        return weights[0].new_empty((0,))

    mse_entry = target is not None
    if mse_entry:
        t2 = target.reshape(M, widths[L])
        g2 = grad.reshape(()) if reduction != "none" else grad.reshape(M, widths[L])
    else:
        g2 = grad.reshape(M, widths[L])
    dx = empty()
    for seg in reversed(segments):
        first = seg.start == 0
        last = seg.stop == L
        need_in = need_x if first else True
        h_in = x2 if first else outs[seg.start - 1]
        if not seg.fused:
            i = seg.start
            if last and mse_entry:  # no fused entry for a one-layer piece: form dLoss/dy first
                g2 = mse_backward(grad, outs[L - 1].reshape(target.shape), target, reduction, True, False,
                                  wrap_triton=wrap_triton)[0].reshape(M, widths[L])
            if update is not None:  # dgrad first (reads the old W_i), then the fused update of W_i, b_i
                gin, _, _ = linear_act_backward(g2, h_in, weights[i], outs[i], activations[i], need_in, False,
                                                False, wrap_triton=wrap_triton)
                update(i, g2, h_in, outs[i], ACT_CODES[activations[i]])
                dws[i], dbs[i] = empty(), empty()
            else:
                gin, dws[i], db = linear_act_backward(g2, h_in, weights[i], outs[i], activations[i], need_in, True,
                                                      bool(need_bias[i]), wrap_triton=wrap_triton)
                dbs[i] = db if need_bias[i] else empty()
            if need_in:
                g2 = gin
                if first:
                    dx = gin
            continue
        n = seg.stop - seg.start
        zs = [torch.empty((M, widths[i + 1]), device=dev, dtype=dtype) for i in range(seg.start, seg.stop)]
        gin = torch.empty((M, widths[seg.start]), device=dev, dtype=dtype) if need_in else None
        if M > 0:
            entry = 0 if not (last and mse_entry) else (2 if reduction == "none" else 1)
            numel = max(M * widths[L], 1)
            scale = (2.0 / numel if reduction == "mean" else 2.0) if entry else 1.0
            t_arg = t2 if entry else g2
            args: list = [g2, t_arg]
            for k, i in enumerate(range(seg.start, seg.stop)):
                args += [weights[i], outs[i], zs[k]]
            args += [gin if gin is not None else zs[0], M, *widths[seg.start:seg.stop + 1]]
            gs = (0, 0) if g2.dim() == 0 else (g2.stride(0), g2.stride(1))
            args += [*gs, t_arg.stride(0) if t_arg.dim() else 0, t_arg.stride(1) if t_arg.dim() > 1 else 0]
            for i in range(seg.start, seg.stop):
                args += [weights[i].stride(0), weights[i].stride(1), outs[i].stride(0), outs[i].stride(1)]
            args.append(scale)
            consts = {}
            for k, i in enumerate(range(seg.start, seg.stop)):
                consts[f"ACT{k}"] = ACT_CODES[activations[i]]
                if k > 0:
                    consts[f"P{k}"] = pad(widths[i])
            kernel = tuned_kernel("bwd", n, family, x.element_size(), _widest(widths, seg))
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)  # noqa: E731
            wrap_triton(kernel)[grid](*args, **consts, M_BUCKET=_configs.bucket(M), ENTRY=entry,
                                      NEED_X=gin is not None, PRECISION=precision)
        for k, i in enumerate(range(seg.start, seg.stop)):
            h_i = h_in if k == 0 else outs[i - 1]
            if update is not None:  # after the segment's dgrad launch: its W reads are done
                update(i, zs[k], h_i, zs[k], 0)
                dws[i], dbs[i] = empty(), empty()
                continue
            _, dws[i], db = linear_act_backward(zs[k], h_i, weights[i], zs[k], "none", False, True,
                                                bool(need_bias[i]), wrap_triton=wrap_triton)
            dbs[i] = db if need_bias[i] else empty()
        if gin is not None:
            g2 = gin
            if first:
                dx = gin
    if need_x and dx.dim() == 2:
        dx = dx.view(x.shape)
    return dx, dws, dbs
