r"""Mean-squared error in Triton: one-pass forward, deterministic two-stage sum, fused backward.

Math (``a`` = input, ``b`` = target, both with ``n`` elements, ``g`` = incoming gradient)::

    none:  out_i = (a_i - b_i)^2                    d a_i = 2 (a_i - b_i) g_i
    sum:   out   = sum_i (a_i - b_i)^2              d a_i = 2 (a_i - b_i) g
    mean:  out   = (1/n) sum_i (a_i - b_i)^2        d a_i = 2 (a_i - b_i) g / n
                                                    d b_i = -d a_i  (every reduction)

Kernels:

* :func:`mse_fwd_kernel` -- each program reads ``BLOCK`` elements of ``a`` and ``b`` once
  (wide loads: 4096 elements over 8 warps is 16 per thread on Hopper), squares the
  differences in float32 and either stores them (``none``) or stores their sum to a float32
  partial buffer, one slot per program.
* :func:`mse_sum_kernel` -- one program adds the partials in a fixed order (``BLOCK``-wide
  lanes, then a tree) and scales by ``1/n`` for ``mean``. No atomics and no autotuning (the
  block sizes are fixed per GPU family, ``_configs.STREAM``): the loss has the same bits for
  the same values, shapes and strides on every run, in every process, on GPUs of the same
  family (another family has another BLOCK, so another summation order).
* :func:`mse_bwd_kernel` -- ``d a`` and ``d b`` in one pass over ``a``, ``b`` (and ``g`` for
  ``none``); the scalar ``g`` of mean/sum is read from device memory (no host sync).

Strides: tensors are viewed as 2-D ``[rows, last dim]`` and passed with both strides; when
every operand is contiguous the kernels use flat indices (``CONTIG``), otherwise they split
the flat index into (row, column). An incoming ``g`` expanded from a scalar (strides 0) is
read in place. Only leading dims that cannot be merged into one make ``reshape`` copy.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import triton
import triton.language as tl

from . import _configs

INTERPRETED = _configs.interpreting()


@triton.jit
def _offsets(offs, C, s0, s1, CONTIG: tl.constexpr):
    if CONTIG:
        out = offs
    else:
        out = (offs // C) * s0 + (offs % C) * s1
    return out


@triton.jit
def mse_fwd_kernel(
    a_ptr, b_ptr, out_ptr, numel, C,
    stride_a0, stride_a1, stride_b0, stride_b1,
    REDUCE: tl.constexpr, CONTIG: tl.constexpr, BLOCK: tl.constexpr,
):
    """``REDUCE``: ``out[pid] = sum over the block of (a - b)^2`` (float32 partials);
    else ``out[i] = (a_i - b_i)^2`` (contiguous, input dtype)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + _offsets(offs, C, stride_a0, stride_a1, CONTIG), mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + _offsets(offs, C, stride_b0, stride_b1, CONTIG), mask=mask, other=0.0).to(tl.float32)
    d = a - b
    sq = d * d
    if REDUCE:
        tl.store(out_ptr + pid, tl.sum(sq, axis=0))
    else:
        tl.store(out_ptr + offs, sq.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def mse_sum_kernel(partial_ptr, out_ptr, P, scale, BLOCK: tl.constexpr):
    """``out = scale * sum_p partial[p]``, in a fixed order; one program."""
    r = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK):
        acc += tl.load(partial_ptr + p0 + r, mask=r < P - p0, other=0.0)
    total = tl.sum(acc, axis=0) * scale
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit
def mse_bwd_kernel(
    g_ptr, a_ptr, b_ptr, ga_ptr, gb_ptr, numel, C,
    stride_a0, stride_a1, stride_b0, stride_b1, stride_g0, stride_g1, scale,
    G_SCALAR: tl.constexpr, NEED_A: tl.constexpr, NEED_B: tl.constexpr, CONTIG: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``ga = scale (a - b) g`` and ``gb = -ga`` (``scale`` = 2/n for mean, 2 otherwise)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + _offsets(offs, C, stride_a0, stride_a1, CONTIG), mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + _offsets(offs, C, stride_b0, stride_b1, CONTIG), mask=mask, other=0.0).to(tl.float32)
    if G_SCALAR:
        g = tl.load(g_ptr).to(tl.float32)
    else:
        g = tl.load(g_ptr + _offsets(offs, C, stride_g0, stride_g1, CONTIG), mask=mask, other=0.0).to(tl.float32)
    ga = (a - b) * (g * scale)
    if NEED_A:
        tl.store(ga_ptr + offs, ga.to(ga_ptr.dtype.element_ty), mask=mask)
    if NEED_B:
        tl.store(gb_ptr + offs, (-ga).to(gb_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _plain(kernel):
    return kernel


def _family(device: torch.device) -> str:
    return _configs.device_family(device, INTERPRETED)[0]


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[rows, last dim]``: a view unless its leading dims cannot be merged."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, t.shape[-1])


def _strides(t: torch.Tensor) -> Tuple[int, int]:
    return t.stride(0), t.stride(1)


@_configs.on_tensor_device
def mse_forward(input: torch.Tensor, target: torch.Tensor, reduction: str,
                wrap_triton: Callable = _plain) -> torch.Tensor:
    """``reduction`` ('mean', 'sum', 'none') of ``(input - target)^2``."""
    n = input.numel()
    dev, dtype = input.device, input.dtype
    if reduction == "none":
        out = torch.empty(input.shape, device=dev, dtype=dtype)
    else:
        out = torch.empty((), device=dev, dtype=dtype)
    if n == 0:
        if reduction == "mean":
            return out.fill_(float("nan"))  # 0/0, as torch
        return out.zero_() if reduction == "sum" else out
    a2, b2 = _as_2d(input), _as_2d(target)
    contig = a2.is_contiguous() and b2.is_contiguous()
    C = a2.shape[1]
    cfg = _configs.STREAM[_family(dev)]
    block, warps = cfg["BLOCK"], cfg["warps"]
    programs = triton.cdiv(n, block)
    if reduction == "none":
        wrap_triton(mse_fwd_kernel)[(programs,)](
            a2, b2, out, n, C, *_strides(a2), *_strides(b2),
            REDUCE=False, CONTIG=contig, BLOCK=block, num_warps=warps)
        return out
    # one spare element: a size that may be 1 (programs, under torch.compile a symbolic count)
    # makes torch's contiguity check guard on it; programs + 1 >= 2 is known
    partials = torch.empty((programs + 1,), device=dev, dtype=torch.float32)
    wrap_triton(mse_fwd_kernel)[(programs,)](
        a2, b2, partials, n, C, *_strides(a2), *_strides(b2),
        REDUCE=True, CONTIG=contig, BLOCK=block, num_warps=warps)
    scale = 1.0 / n if reduction == "mean" else 1.0
    wrap_triton(mse_sum_kernel)[(1,)](
        partials, out, programs, scale, BLOCK=cfg["REDUCE_BLOCK"], num_warps=cfg["reduce_warps"])
    return out


@_configs.on_tensor_device
def mse_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, reduction: str,
                 need_input: bool, need_target: bool,
                 wrap_triton: Callable = _plain) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(d input, d target)``; one not needed is an empty tensor of shape ``[0]``.
    ``grad`` is a scalar for mean/sum and has ``input``'s shape (any strides) for none."""
    n = input.numel()
    dev, dtype = input.device, input.dtype
    gi = torch.empty(input.shape, device=dev, dtype=dtype) if need_input else input.new_empty((0,))
    gt = torch.empty(target.shape, device=dev, dtype=dtype) if need_target else input.new_empty((0,))
    if n == 0 or not (need_input or need_target):
        return gi, gt
    a2, b2 = _as_2d(input), _as_2d(target)
    g_scalar = reduction != "none"
    g2 = grad.reshape(()) if g_scalar else _as_2d(grad)
    contig = a2.is_contiguous() and b2.is_contiguous() and (g_scalar or g2.is_contiguous())
    gs = (0, 0) if g_scalar else _strides(g2)
    scale = 2.0 / n if reduction == "mean" else 2.0
    cfg = _configs.STREAM[_family(dev)]
    block = cfg["BLOCK"]
    ga_arg = gi if need_input else gt
    gb_arg = gt if need_target else gi
    wrap_triton(mse_bwd_kernel)[(triton.cdiv(n, block),)](
        g2, a2, b2, ga_arg, gb_arg, n, a2.shape[1],
        *_strides(a2), *_strides(b2), gs[0], gs[1], scale,
        G_SCALAR=g_scalar, NEED_A=bool(need_input), NEED_B=bool(need_target), CONTIG=contig,
        BLOCK=block, num_warps=cfg["warps"])
    return gi, gt
