r"""Fused linear + activation in Triton: forward, dgrad and wgrad kernels, and their launchers.

Math (``x: [M, K]`` rows of input, ``W: [N, K]`` like ``nn.Linear.weight``, ``b: [N]``)::

    forward   z = x W^T + b,            y = act(z)          act in {none, relu, sigmoid}
    backward  gz = g * act'(y)          (from the saved OUTPUT y, never z)
                  none:    act'(y) = 1
                  relu:    act'(y) = 0 where y <= 0, else 1      (torch's threshold_backward)
                  sigmoid: act'(y) = y (1 - y)                   (since s' = s (1 - s))
              dx = gz W          [M, K]  = sum_n gz[m, n] W[n, k]
              dW = gz^T x        [N, K]  = sum_m gz[m, n] x[m, k]
              db = gz^T 1        [N]     = sum_m gz[m, n]

Kernels:

* :func:`linear_act_fwd_kernel` -- tiled GEMM over ``K`` with float32 accumulation; the
  epilogue adds ``b`` and applies ``act`` in registers before the one store of ``y``.
* :func:`linear_act_dgrad_kernel` -- ``dx = gz W``: loads tiles of ``g`` and ``y``, forms
  ``gz`` in registers as it loads them (no separate elementwise pass, no ``gz`` in memory),
  and feeds it to the tensor cores.
* :func:`linear_act_wgrad_kernel` -- ``dW = gz^T x`` and ``db`` in the same pass. Each
  program owns one ``[BLOCK_N, BLOCK_K]`` tile of ``dW`` and a fixed range of rows ("split");
  it walks its rows in order. With one split it writes ``dW``/``db`` directly; with ``S``
  splits (a tall batch and a small weight, e.g. 65536 x 784 -> 128, has too few tiles to fill
  a GPU) it writes float32 partials ``[S, N, K]`` / ``[S, N]`` and :func:`sum_splits_kernel`
  adds them in split order. No atomics anywhere.

Reproducibility, exactly: an output's bits depend on the shapes, the GPU (its SM count sets the
wgrad split) and the tile (its BLOCK sizes set the order of the ``tl.dot`` / ``tl.sum``
reductions). Within a process a shape always runs the tile autotuning picked for it, so repeated
calls give the same bits. Autotuning times the tiles, and another process may pick another tile:
the bits can then differ across processes. ``AECOMP_TRITON_AUTOTUNE=off`` pins the tile (one per
kernel and shape, chosen by rule, see ``_configs.pinned``): then the same shapes on the same GPU
model give the same bits in every process. Under ``torch.compile`` with a dynamic batch size the
wgrad split does not depend on the batch (see :func:`wgrad_splits`), so compiled and eager dW/db
may differ in the last bits.

Precision: products of bfloat16/float16 tiles are exact in float32 and are accumulated in
float32. float32 inputs use ``input_precision="tf32"`` on the GPU only when
``torch.backends.cuda.matmul.allow_tf32`` is set (the same switch as torch's matmuls, off by
default), else ``"ieee"`` (full float32 FMA; exact float32 products). Tolerances against
float64: float32 ieee ~1e-5 relative, bfloat16 ~1e-2 (output rounding); tf32 truncates each
operand to 10 mantissa bits, so an output summing L products errs by up to
(2^-9 + L 2^-24) sum |a_l b_l| (tests/test_triton_ops.py ``_tf32_bound``).

Strides: every tensor is passed with its strides, so transposed and sliced inputs need no
copy; only leading batch dims that cannot be merged into one (rare) make ``reshape`` copy.
Loads along ``M``/``N`` past the edge read wrapped-around rows (index modulo the size), so
the hot loop only masks the reduction tail; those rows are never stored.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import triton
import triton.language as tl

from . import _configs

INTERPRETED = _configs.interpreting()
_INTERP = tl.constexpr(INTERPRETED)

ACT_CODES = {"none": 0, "relu": 1, "sigmoid": 2}


# ----------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------
@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation."""
    if _INTERP:
        # Triton's interpreter stores bfloat16 as uint16 and multiplies the raw integers in
        # tl.dot; upcasting first gives the same math (bf16/fp16 products are exact in fp32).
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def _tile_ids(pid, n_a, n_b, GROUP: tl.constexpr):
    """Grouped launch order: GROUP consecutive tiles along ``a`` share each ``b`` column,
    so the operand indexed by ``b`` (the weight) stays in L2 while they run."""
    width = GROUP * n_b
    group = pid // width
    first = group * GROUP
    size = tl.minimum(n_a - first, GROUP)
    pa = first + (pid % width) % size
    pb = (pid % width) // size
    return pa, pb


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 2:
        z = tl.sigmoid(z)
    return z


@triton.jit
def _act_grad(g, y, ACT: tl.constexpr):
    """``g * act'(y)`` from the activation's output ``y`` (float32 in, float32 out)."""
    if ACT == 1:
        g = tl.where(y <= 0.0, 0.0, g)
    elif ACT == 2:
        g = g * (y * (1.0 - y))
    return g


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["M"])
def linear_act_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b, stride_ym, stride_yn, M_BUCKET,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``y[m, n] = act(sum_k x[m, k] W[n, k] + b[n])`` for one ``[BLOCK_M, BLOCK_N]`` tile."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    am = (rm % M).to(tl.int64)
    bn = (rn % N).to(tl.int64)
    x_ptrs = x_ptr + am[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rk[:, None] * stride_wk + bn[None, :] * stride_wn  # the [BLOCK_K, BLOCK_N] tile of W^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = rk < K - k0
        a = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=kmask[:, None], other=0.0)
        acc = _mma(a, b, acc, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        bias = tl.load(b_ptr + bn * stride_b).to(tl.float32)
        acc += bias[None, :]
    acc = _act(acc, ACT)
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit(do_not_specialize=["M"])
def linear_act_dgrad_kernel(
    g_ptr, y_ptr, w_ptr, dx_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_ym, stride_yn, stride_wn, stride_wk, stride_dxm, stride_dxk, M_BUCKET,
    ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``dx[m, k] = sum_n g[m, n] act'(y[m, n]) W[n, k]`` for one ``[BLOCK_M, BLOCK_K]`` tile."""
    pid_m, pid_k = _tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    am = (rm % M).to(tl.int64)
    bk = (rk % K).to(tl.int64)
    g_ptrs = g_ptr + am[:, None] * stride_gm + rn[None, :] * stride_gn
    y_ptrs = y_ptr + am[:, None] * stride_ym + rn[None, :] * stride_yn
    w_ptrs = w_ptr + rn[:, None] * stride_wn + bk[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nmask = rn < N - n0
        g = tl.load(g_ptrs, mask=nmask[None, :], other=0.0).to(tl.float32)
        if ACT != 0:
            y = tl.load(y_ptrs, mask=nmask[None, :], other=0.0).to(tl.float32)
            g = _act_grad(g, y, ACT)
        w = tl.load(w_ptrs, mask=nmask[:, None], other=0.0)
        acc = _mma(g.to(w.dtype), w, acc, PRECISION)
        g_ptrs += BLOCK_N * stride_gn
        y_ptrs += BLOCK_N * stride_yn
        w_ptrs += BLOCK_N * stride_wn
    dx_ptrs = dx_ptr + rm.to(tl.int64)[:, None] * stride_dxm + rk[None, :] * stride_dxk
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rk < K)[None, :])


@triton.jit
def _wgrad_tile(N, K, COMPUTE_DW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    """This wgrad program's ``(pid_k, split, rn, rk, nmask, kmask)``: its ``dW`` tile (grouped
    launch order over ``program_id(0)``) and its row split ``program_id(1)``."""
    if COMPUTE_DW:
        n_k = tl.maximum(tl.cdiv(K, BLOCK_K), 1)
    else:
        n_k = 1
    pid_n, pid_k = _tile_ids(tl.program_id(0), tl.cdiv(N, BLOCK_N), n_k, GROUP_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    return pid_k, tl.program_id(1), rn, rk, rn < N, rk < K


@triton.jit
def _split_sum(src_ptr, S, numel, BLOCK: tl.constexpr):
    """``(offs, mask, sum_{s = 0..S-1} src[s, offs])`` for this program's ``BLOCK`` elements
    (float32, in split order)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ptrs = src_ptr + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(0, S):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += numel
    return offs, mask, acc


@triton.jit
def _wgrad_rows(g_ptr, y_ptr, x_ptr, split, rn, rk, nmask, kmask, M, rows_per_split,
                stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
                COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """``(dW tile, db)`` float32 over rows ``[s R, min((s+1) R, M))`` of split ``s``, in row order:
    ``sum_m gz[m, rn] x[m, rk]`` and ``sum_m gz[m, rn]`` with ``gz = g act'(y)``."""
    rm = tl.arange(0, BLOCK_M)
    m_start = split * rows_per_split
    m_end = tl.minimum(m_start + rows_per_split, M)
    row0 = m_start.to(tl.int64)
    # gz^T tiles are [BLOCK_N, BLOCK_M]: rows of g walk along the tile's second axis.
    g_ptrs = g_ptr + row0 * stride_gm + rn[:, None].to(tl.int64) * stride_gn + rm[None, :] * stride_gm
    y_ptrs = y_ptr + row0 * stride_ym + rn[:, None].to(tl.int64) * stride_yn + rm[None, :] * stride_ym
    x_ptrs = x_ptr + row0 * stride_xm + rm[:, None] * stride_xm + rk[None, :].to(tl.int64) * stride_xk
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        mmask = rm < m_end - m0
        gt = tl.load(g_ptrs, mask=nmask[:, None] & mmask[None, :], other=0.0).to(tl.float32)
        if ACT != 0:
            yt = tl.load(y_ptrs, mask=nmask[:, None] & mmask[None, :], other=0.0).to(tl.float32)
            gt = _act_grad(gt, yt, ACT)
        if COMPUTE_DB:
            db_acc += tl.sum(gt, axis=1)
        if COMPUTE_DW:
            xt = tl.load(x_ptrs, mask=mmask[:, None] & kmask[None, :], other=0.0)
            acc = _mma(gt.to(xt.dtype), xt, acc, PRECISION)
        g_ptrs += BLOCK_M * stride_gm
        y_ptrs += BLOCK_M * stride_ym
        x_ptrs += BLOCK_M * stride_xm
    return acc, db_acc


@triton.jit(do_not_specialize=["M", "rows_per_split"])
def linear_act_wgrad_kernel(
    g_ptr, y_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K, rows_per_split,
    stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
    stride_dws, stride_dwn, stride_dwk, stride_dbs, stride_dbn, M_BUCKET,
    COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr,
):
    """For rows ``[s R, min((s+1) R, M))`` of split ``s = program_id(1)``:
    ``dW_s[n, k] = sum_m gz[m, n] x[m, k]`` on one ``[BLOCK_N, BLOCK_K]`` tile and, from the
    programs of the first K tile, ``db_s[n] = sum_m gz[m, n]``; rows in increasing order."""
    pid_k, split, rn, rk, nmask, kmask = _wgrad_tile(N, K, COMPUTE_DW, BLOCK_N, BLOCK_K, GROUP_M)
    acc, db_acc = _wgrad_rows(g_ptr, y_ptr, x_ptr, split, rn, rk, nmask, kmask, M, rows_per_split,
                              stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
                              COMPUTE_DW, COMPUTE_DB, ACT, PRECISION, BLOCK_N, BLOCK_K, BLOCK_M)
    s64 = split.to(tl.int64)
    if COMPUTE_DW:
        dw_ptrs = dw_ptr + s64 * stride_dws + rn[:, None].to(tl.int64) * stride_dwn + rk[None, :] * stride_dwk
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=nmask[:, None] & kmask[None, :])
    if COMPUTE_DB:
        if pid_k == 0:
            db_ptrs = db_ptr + s64 * stride_dbs + rn * stride_dbn
            tl.store(db_ptrs, db_acc.to(db_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def sum_splits_kernel(src_ptr, dst_ptr, S, numel, BLOCK: tl.constexpr):
    """``dst[i] = sum_{s = 0..S-1} src[s, i]`` (float32, in split order), cast to dst's dtype."""
    offs, mask, acc = _split_sum(src_ptr, S, numel, BLOCK)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _plain(kernel):
    return kernel


def device_family(device: torch.device) -> Tuple[str, int]:
    """(config family, streaming multiprocessor count) for kernels launched on ``device``."""
    return _configs.device_family(device, INTERPRETED)


_OUT_DIMS = {"fwd": ("M", "N"), "dgrad": ("M", "K"), "wgrad": ("N", "K")}
# The autotuning key: the batch size bucketed (M_BUCKET = next power of two of M, so a ragged
# last batch or a new batch size in the same bucket reuses the tuned tile; M itself is not
# specialised on either, do_not_specialize), the other sizes, and every constexpr variant (a
# tile tuned for relu without bias is not reused for sigmoid with bias, nor ieee for tf32).
# The autotuner adds the tensors' dtypes itself.
_KEYS = {
    "fwd": ["M_BUCKET", "N", "K", "HAS_BIAS", "ACT", "PRECISION"],
    "dgrad": ["M_BUCKET", "N", "K", "ACT", "PRECISION"],
    "wgrad": ["M_BUCKET", "N", "K", "COMPUTE_DW", "COMPUTE_DB", "ACT", "PRECISION"],
}
_JIT = {"fwd": linear_act_fwd_kernel, "dgrad": linear_act_dgrad_kernel, "wgrad": linear_act_wgrad_kernel}
_TUNED: dict = {}


def tuned_kernel(kernel: str, family: str, element_size: int):
    """The ``triton.autotune`` wrapper of ``kernel`` for a config family, keyed on ``_KEYS``."""
    key = (kernel, family, 4 if element_size >= 4 else 2)
    tuned = _TUNED.get(key)
    if tuned is None:
        tuned = triton.autotune(
            configs=_configs.gemm_configs(kernel, family, element_size),
            key=_KEYS[kernel],
            prune_configs_by={"early_config_prune": _configs.make_prune(kernel, _OUT_DIMS[kernel])},
        )(_JIT[kernel])
        _TUNED[key] = tuned
    return tuned


def precision_for(dtype: torch.dtype, device: torch.device) -> str:
    """``tl.dot`` input precision: tf32 for float32 only where torch allows it for matmuls."""
    if dtype == torch.float32 and device.type == "cuda" and not INTERPRETED and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _rows(t: torch.Tensor) -> int:
    return math.prod(t.shape[:-1])


_SYMBOLIC_REFERENCE_M = 65536


def wgrad_splits(M: int, N: int, K: int, family: str, sms: int) -> Tuple[int, int]:
    """(number of row splits S, rows per split) for the wgrad kernel.

    Enough splits to give about two programs per SM when the ``dW`` tiles alone are too few,
    but never fewer than ``min_rows`` rows per split; rows per split are a multiple of the
    largest BLOCK_M so that only the last split has a ragged end. Depends on the shapes and
    the device only, so the summation order (and the bits) of ``dW``/``db`` is fixed.
    """
    if family == "interpreter":
        target, min_rows, align = 4, 32, 32
    else:
        target, min_rows, align = 2 * sms, 512, 128
    tiles = triton.cdiv(N, 128) * max(1, triton.cdiv(K, 128))
    if _configs._static_int(M) is None:
        # A symbolic batch size (torch.compile with dynamic shapes): no branch on M, which would
        # guard on it; the rows per split are those eager mode picks at batch 65536, and the
        # split path always runs (S = 1 included). Eager and compiled dW/db may then differ in
        # the last bits for other batch sizes (another split of the same sum).
        if target // tiles <= 1:
            return 1, M
        rows = max(min_rows, triton.cdiv(triton.cdiv(_SYMBOLIC_REFERENCE_M, target // tiles), align) * align)
        return triton.cdiv(M, rows), rows
    splits = max(1, min(target // tiles, triton.cdiv(M, min_rows)))
    if splits == 1 or M == 0:
        return 1, M
    rows = triton.cdiv(triton.cdiv(M, splits), align) * align
    return triton.cdiv(M, rows), rows


@_configs.on_tensor_device
def linear_act_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
                       wrap_triton: Callable = _plain) -> torch.Tensor:
    """``act(x @ weight.T + bias)``; ``x`` is ``[..., K]``, the result ``[..., N]`` (contiguous).

    ``wrap_triton`` wraps each kernel before its launch (the op layer passes
    ``torch.library.wrap_triton`` so that torch.compile can trace the launch).
    """
    K = x.shape[-1]
    N = weight.shape[0]
    M = _rows(x)
    x2 = x.reshape(M, K)
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M > 0 and N > 0:
        family, _ = device_family(x.device)
        b = bias if bias is not None else y  # never read when HAS_BIAS is False
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        kernel = tuned_kernel("fwd", family, x.element_size())
        wrap_triton(kernel)[grid](
            x2, weight, b, y, M, N, K,
            x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
            b.stride(0), y.stride(0), y.stride(1), _configs.bucket(M),
            HAS_BIAS=bias is not None, ACT=ACT_CODES[activation], PRECISION=precision_for(x.dtype, x.device),
        )
    return y.view(*x.shape[:-1], N)


@_configs.on_tensor_device
def linear_act_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                        activation: str, need_x: bool, need_weight: bool, need_bias: bool,
                        wrap_triton: Callable = _plain) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dW, db)`` of ``y = act(x W^T + b)`` given ``grad_y``; a gradient not needed is an
    empty tensor of shape ``[0]``. ``grad_y`` may have any strides (including 0)."""
    K = x.shape[-1]
    N = weight.shape[0]
    M = _rows(x)
    g2 = grad_y.reshape(M, N)
    y2 = y.reshape(M, N)
    x2 = x.reshape(M, K)
    act = ACT_CODES[activation]
    precision = precision_for(x.dtype, x.device)
    family, sms = device_family(x.device)

    def empty():  # a distinct [0] tensor per output: outputs of an op must not alias
        return weight.new_empty((0,))

    dx = empty()
    if need_x:
        dx2 = torch.empty((M, K), device=x.device, dtype=x.dtype)
        if M > 0 and K > 0:
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)  # noqa: E731
            kernel = tuned_kernel("dgrad", family, x.element_size())
            wrap_triton(kernel)[grid](
                g2, y2, weight, dx2, M, N, K,
                g2.stride(0), g2.stride(1), y2.stride(0), y2.stride(1),
                weight.stride(0), weight.stride(1), dx2.stride(0), dx2.stride(1), _configs.bucket(M),
                ACT=act, PRECISION=precision,
            )
        dx = dx2.view(x.shape)

    dw = empty()
    db = empty()
    if (need_weight or need_bias) and N > 0:
        splits, rows = wgrad_splits(M, N, K, family, sms)
        if need_weight:
            dw = torch.empty((N, K), device=x.device, dtype=weight.dtype)
        if need_bias:
            db = torch.empty((N,), device=x.device, dtype=weight.dtype)
        if type(splits) is int and splits == 1:  # (a symbolic split count takes the split path)
            dw_buf, db_buf = dw, db
            dws, dbs = (0, K, 1), (0, 1)
        else:
            # float32 partials [S, N, K] / [S, N], allocated flat: a multi-dimensional empty with a
            # symbolic S would guard on S != 1 under torch.compile (its contiguity check)
            dw_buf = torch.empty((splits * N * K,), device=x.device, dtype=torch.float32) if need_weight else dw
            db_buf = torch.empty((splits * N,), device=x.device, dtype=torch.float32) if need_bias else db
            dws, dbs = (N * K, K, 1), (N, 1)
        dw_arg = dw_buf if need_weight else db_buf
        db_arg = db_buf if need_bias else dw_buf
        if not need_weight:
            dws = (0, 0, 0)
        if not need_bias:
            dbs = (0, 0)
        if need_weight:
            grid = lambda meta: (  # noqa: E731
                triton.cdiv(N, meta["BLOCK_N"]) * max(1, triton.cdiv(K, meta["BLOCK_K"])), splits)
        else:
            grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), splits)  # noqa: E731
        kernel = tuned_kernel("wgrad", family, x.element_size())
        wrap_triton(kernel)[grid](
            g2, y2, x2, dw_arg, db_arg, M, N, K, rows,
            g2.stride(0), g2.stride(1), y2.stride(0), y2.stride(1), x2.stride(0), x2.stride(1),
            dws[0], dws[1], dws[2], dbs[0], dbs[1], _configs.bucket(M),
            COMPUTE_DW=bool(need_weight), COMPUTE_DB=bool(need_bias), ACT=act, PRECISION=precision,
        )
        if dw_buf is not dw or db_buf is not db:  # partials to add up (no guard on a symbolic count)
            block = _configs.STREAM[family]["REDUCE_BLOCK"]
            warps = _configs.STREAM[family]["reduce_warps"]
            for src, dst in ((dw_buf, dw), (db_buf, db)):
                if dst.numel() > 0:
                    n = dst.numel()
                    wrap_triton(sum_splits_kernel)[(triton.cdiv(n, block),)](
                        src, dst, splits, n, BLOCK=block, num_warps=warps)
    elif need_weight or need_bias:  # N == 0: nothing to reduce
        if need_weight:
            dw = torch.empty((0, K), device=x.device, dtype=weight.dtype)
        if need_bias:
            db = torch.empty((0,), device=x.device, dtype=weight.dtype)
    return dx, dw, db
