r"""The optimizer fused into the Triton chain backward: each weight (and bias) tile is updated
by Adam / AdamW / SGD(momentum) where its gradient becomes complete; no gradient tensor is stored.

Math (per element of a parameter ``p`` with complete gradient ``g``; hyper-parameters as in
``torch.optim``; ``t`` the step count AFTER its increment, the bias corrections computed on the
host per step: ``bc1 = 1 - beta1^t``, ``sbc2 = sqrt(1 - beta2^t)``)::

    Adam    g  = g + wd p                              (AdamW instead: p = p (1 - lr wd))
            m  = m + (1 - beta1) (g - m)               (torch's lerp)
            v  = beta2 v + (1 - beta2) g^2
            p  = p - (lr / bc1) m / (sqrt(v) / sbc2 + eps)
    SGD     g  = g + wd p
            buf = g (first step)  |  momentum buf + (1 - dampening) g      (momentum != 0 only)
            g  = g + momentum buf (nesterov)  |  buf
            p  = p - lr g

Kernels:

* :func:`wgrad_optim_kernel` -- the weight-gradient GEMM of :func:`kernels.linear_act.
  linear_act_wgrad_kernel` (``dW = gz^T h``, ``db = sum_rows gz``; each program owns one
  ``[BLOCK_N, BLOCK_K]`` tile and walks a fixed range of rows in order; ``act'(y)`` applied on
  load for a layer whose ``gz`` is not formed yet) with the optimizer in its epilogue. With
  ONE row split (``SPLIT`` false) the tile's reduction is complete in the program, and the
  program updates ``W`` (and, for ``pid_k == 0``, ``b``) and the optimizer state of that tile
  right there: ``dW`` never reaches memory. With ``S`` splits it stores float32 partials
  ``[S, N, K]`` / ``[S, N]``, and the update is fused into the FINAL reduction pass:
* :func:`sum_splits_optim_kernel` -- adds the partials in split order (the same fixed order,
  hence the same bits, as ``sum_splits_kernel``) and applies the update to the summed element.

Ordering (the dgrad must use the OLD weights): the chain backward (kernels/mlp.py
``chain_backward`` with ``update=``) runs, for each segment from the output down, the segment's
dgrad kernel -- every read of that segment's ``W_i`` for ``g_{i} = gz_i W_i`` happens there --
and only THEN, in later launches on the same stream, the update kernels of the segment's
layers. Earlier segments read only their own weights, which are updated after their own dgrad.
The update kernels read ``gz`` and the layer's input ``h`` (saved activations), never another
layer's ``W``; inside them each element of ``W``/``b`` and of its state is read and written by
exactly one program (tiles do not overlap; the bias only by the ``pid_k == 0`` programs, in the
split path by the one program owning that flat index), so no program reads a tile another has
updated. Autotuning re-runs the one-split kernel: the parameter and state arguments are
``restore_value``, so timing runs never apply an update twice.

Precision: the gradient is the float32 accumulator (not rounded to the data dtype, unlike the
stored ``dW`` of the plain path); the update runs in float32 and the parameter and state are
stored back in their own dtype. Against ``torch.optim`` on the gradients of the plain path the
difference is the gradient's rounding (none in float32) plus float32 rounding of the update.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import triton
import triton.language as tl

from . import _configs
from .linear_act import INTERPRETED, _split_sum, _wgrad_rows, _wgrad_tile, device_family, precision_for, wgrad_splits

__all__ = ["INTERPRETED", "OptimHyper", "wgrad_optim"]

ADAM, SGD = 1, 2


@triton.jit
def _apply(p_ptrs, s1_ptrs, s2_ptrs, g, mask, lr, beta1, beta2, eps, wd, decay, bc1, sbc2, momentum, dampening,
           KIND: tl.constexpr, MOM: tl.constexpr, NESTEROV: tl.constexpr):
    """One optimizer update of the elements at ``p_ptrs`` from their complete float32 gradient ``g``.

    ``wd`` the coupled weight decay (Adam, SGD; 0 for AdamW), ``decay`` = ``1 - lr wd`` for AdamW's
    decoupled decay (1 otherwise: exact). Both are always applied: a branch that leaves the
    reduced gradient ``g`` with several uses trips triton 3.6's OptimizeThreadLocality pass.
    ``MOM`` (SGD): 0 no momentum buffer, 1 first step (``buf = g``), 2 ``buf`` updated."""
    p = tl.load(p_ptrs, mask=mask, other=0.0).to(tl.float32)
    g = g + wd * p
    if KIND == 1:
        p = p * decay
        m = tl.load(s1_ptrs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(s2_ptrs, mask=mask, other=0.0).to(tl.float32)
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * (g * g)
        tl.store(s1_ptrs, m.to(s1_ptrs.dtype.element_ty), mask=mask)
        tl.store(s2_ptrs, v.to(s2_ptrs.dtype.element_ty), mask=mask)
        p = p - (lr / bc1) * (m / (tl.sqrt(v) / sbc2 + eps))
    else:
        if MOM == 1:
            buf = g
            tl.store(s1_ptrs, buf.to(s1_ptrs.dtype.element_ty), mask=mask)
        if MOM == 2:
            buf = tl.load(s1_ptrs, mask=mask, other=0.0).to(tl.float32) * momentum + (1.0 - dampening) * g
            tl.store(s1_ptrs, buf.to(s1_ptrs.dtype.element_ty), mask=mask)
        if MOM != 0:
            if NESTEROV:
                g = g + momentum * buf
            else:
                g = buf
        p = p - lr * g
    tl.store(p_ptrs, p.to(p_ptrs.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_split"])
def wgrad_optim_kernel(
    g_ptr, y_ptr, x_ptr, dwp_ptr, dbp_ptr, w_ptr, ws1_ptr, ws2_ptr, b_ptr, bs1_ptr, bs2_ptr,
    M, N, K, rows_per_split,
    stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
    lr, beta1, beta2, eps, wd, decay, bc1, sbc2, momentum, dampening, M_BUCKET,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr,
    KIND: tl.constexpr, MOM: tl.constexpr, NESTEROV: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr,
):
    """``dW`` tile (and ``db``) over rows ``[s R, min((s+1) R, M))``; with one split, the optimizer
    update of that ``W`` (``b``) tile in the epilogue, else float32 partials ``[S, N, K]``/``[S, N]``.
    ``W``, ``b`` and their state are contiguous (flat index ``n K + k``)."""
    pid_k, split, rn, rk, nmask, kmask = _wgrad_tile(N, K, True, BLOCK_N, BLOCK_K, GROUP_M)
    acc, db_acc = _wgrad_rows(g_ptr, y_ptr, x_ptr, split, rn, rk, nmask, kmask, M, rows_per_split,
                              stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
                              True, HAS_BIAS, ACT, PRECISION, BLOCK_N, BLOCK_K, BLOCK_M)
    wmask = nmask[:, None] & kmask[None, :]
    flat = rn[:, None].to(tl.int64) * K + rk[None, :]
    if SPLIT:
        s64 = split.to(tl.int64)
        tl.store(dwp_ptr + s64 * N * K + flat, acc, mask=wmask)
        if HAS_BIAS:
            if pid_k == 0:
                tl.store(dbp_ptr + s64 * N + rn, db_acc, mask=nmask)
    else:
        # the reduction of this tile is complete: update it (W was last read by the dgrad launch)
        _apply(w_ptr + flat, ws1_ptr + flat, ws2_ptr + flat, acc, wmask, lr, beta1, beta2, eps, wd, decay, bc1, sbc2,
               momentum, dampening, KIND, MOM, NESTEROV)
        if HAS_BIAS:
            if pid_k == 0:
                _apply(b_ptr + rn, bs1_ptr + rn, bs2_ptr + rn, db_acc, nmask, lr, beta1, beta2, eps, wd, decay,
                       bc1, sbc2, momentum, dampening, KIND, MOM, NESTEROV)


@triton.jit
def sum_splits_optim_kernel(src_ptr, p_ptr, s1_ptr, s2_ptr, S, numel, lr, beta1, beta2, eps, wd, decay, bc1, sbc2,
                            momentum, dampening, KIND: tl.constexpr, MOM: tl.constexpr, NESTEROV: tl.constexpr,
                            BLOCK: tl.constexpr):
    """``g[i] = sum_{s = 0..S-1} src[s, i]`` (float32, in split order) and the update of ``p[i]``."""
    offs, mask, acc = _split_sum(src_ptr, S, numel, BLOCK)
    _apply(p_ptr + offs, s1_ptr + offs, s2_ptr + offs, acc, mask, lr, beta1, beta2, eps, wd, decay, bc1, sbc2,
           momentum, dampening, KIND, MOM, NESTEROV)


class OptimHyper:
    """One parameter pair's update on the host: kind (ADAM/SGD), float hyper-parameters, the
    step-dependent bias corrections, and the constexpr variant."""

    def __init__(self, kind: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, step: int = 1, first: bool = False) -> None:
        self.kind = kind
        coupled = 0.0 if decoupled else float(weight_decay)
        self.args = [float(lr), float(beta1), float(beta2), float(eps), coupled,
                     1.0 - lr * weight_decay if decoupled else 1.0,
                     1.0 - beta1 ** step if kind == ADAM else 1.0,
                     (1.0 - beta2 ** step) ** 0.5 if kind == ADAM else 1.0, float(momentum), float(dampening)]
        mom = 0 if kind == ADAM or momentum == 0 else (1 if first else 2)
        self.consts = dict(KIND=kind, MOM=mom, NESTEROV=bool(nesterov))


# Tiles. The one-split epilogue holds the float32 dW accumulator AND the parameter and its state
# (Adam: p, m, v) in registers at once: wgrad tiles with more than 32 accumulator elements a
# thread spill there (sm_90, triton 3.9: 128x256 w8, 128x128 w8, 128x64 w4 spill 80-2000 stack
# bytes), so this kernel keeps the wgrad tiles with <= 32 and adds 8-warp / 64-row ones of that size.
_EPILOGUE_ELEMS = 32
_EXTRA_TILES = {
    ("hopper", 2): (_configs.Tile(128, 64, 64, 8, 4), _configs.Tile(64, 64, 64, 4, 4)),
    ("hopper", 4): (_configs.Tile(128, 64, 32, 8, 4), _configs.Tile(64, 64, 32, 4, 3)),
}


def epilogue_tiles(family: str, element_size: int):
    """The :func:`wgrad_optim_kernel` tiles (``Tile(BLOCK_N, BLOCK_K, BLOCK_M, warps, stages)``)."""
    esize = 4 if element_size >= 4 else 2
    base = _configs.gemm_tiles(family, esize, "wgrad")
    tiles = [t for t in base if t.a * t.b <= _EPILOGUE_ELEMS * 32 * t.warps]
    tiles += [t for t in _EXTRA_TILES.get((family, esize), ()) if t not in tiles]
    return tuple(tiles) or (min(base, key=lambda t: t.a * t.b),)


_KEYS = ["M_BUCKET", "N", "K", "HAS_BIAS", "ACT", "PRECISION", "SPLIT", "KIND", "MOM", "NESTEROV"]
_TUNED: dict = {}


def tuned_kernel(family: str, element_size: int):
    """``triton.autotune`` of :func:`wgrad_optim_kernel` over the wgrad tiles, keyed on the sizes
    and every constexpr variant; the updated tensors are restored between timing runs."""
    key = (family, 4 if element_size >= 4 else 2)
    tuned = _TUNED.get(key)
    if tuned is None:
        tuned = triton.autotune(
            configs=[triton.Config({"BLOCK_N": t.a, "BLOCK_K": t.b, "BLOCK_M": t.r, "GROUP_M": _configs.GROUP_M},
                                   num_warps=t.warps, num_stages=t.stages) for t in epilogue_tiles(family, element_size)],
            key=_KEYS,
            prune_configs_by={"early_config_prune": _configs.make_prune("wgrad", ("N", "K"))},
            restore_value=["w_ptr", "ws1_ptr", "ws2_ptr", "b_ptr", "bs1_ptr", "bs2_ptr"],
        )(wgrad_optim_kernel)
        _TUNED[key] = tuned
    return tuned


def _plain(kernel):
    return kernel


def wgrad_optim(gz: torch.Tensor, h: torch.Tensor, y: torch.Tensor, activation_code: int, weight: torch.Tensor,
                bias: Optional[torch.Tensor], wstate: Sequence[Optional[torch.Tensor]],
                bstate: Sequence[Optional[torch.Tensor]], hyper: OptimHyper, wrap_triton: Callable = _plain) -> None:
    """Update ``weight`` (``[N, K]``) and ``bias`` in place from ``dW = (gz act'(y))^T h``, ``db``.

    ``gz``/``y``: ``[M, N]`` (any strides), ``h``: ``[M, K]``; ``wstate``/``bstate``: the
    optimizer state ``(exp_avg, exp_avg_sq)`` or ``(momentum_buffer, None)`` (``None`` where
    unused), contiguous like the parameter."""
    M, K = h.shape
    N = weight.shape[0]
    if M == 0 or N == 0 or K == 0:  # an empty gradient is zero: torch.optim still updates (decay, momentum)
        raise ValueError(f"wgrad_optim: empty shapes M={M}, N={N}, K={K} take the plain path")
    for name, t in (("weight", weight), ("bias", bias), *((f"state{i}", s) for i, s in enumerate((*wstate, *bstate)))):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"wgrad_optim: {name} must be contiguous, got strides {tuple(t.stride())}")
    family, sms = device_family(h.device)
    splits, rows = wgrad_splits(M, N, K, family, sms)
    ws1, ws2 = (s if s is not None else weight for s in wstate)
    b = bias if bias is not None else weight
    bs1, bs2 = (s if s is not None else b for s in bstate) if bias is not None else (weight, weight)
    split = not (type(splits) is int and splits == 1)
    dwp = torch.empty((splits * N * K,), device=h.device, dtype=torch.float32) if split else weight
    dbp = torch.empty((splits * N,), device=h.device, dtype=torch.float32) if split and bias is not None else dwp
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * max(1, triton.cdiv(K, meta["BLOCK_K"])), splits)  # noqa: E731
    wrap_triton(tuned_kernel(family, h.element_size()))[grid](
        gz, y, h, dwp, dbp, weight, ws1, ws2, b, bs1, bs2, M, N, K, rows,
        gz.stride(0), gz.stride(1), y.stride(0), y.stride(1), h.stride(0), h.stride(1),
        *hyper.args, _configs.bucket(M),
        HAS_BIAS=bias is not None, ACT=activation_code, PRECISION=precision_for(h.dtype, h.device), SPLIT=split,
        **hyper.consts,
    )
    if split:
        cfg = _configs.STREAM[family]
        for src, p, s1, s2 in ((dwp, weight, ws1, ws2), (dbp, bias, bs1, bs2)):
            if p is not None:
                n = p.numel()
                wrap_triton(sum_splits_optim_kernel)[(triton.cdiv(n, cfg["REDUCE_BLOCK"]),)](
                    src, p, s1, s2, splits, n, *hyper.args, **hyper.consts, BLOCK=cfg["REDUCE_BLOCK"],
                    num_warps=cfg["reduce_warps"])
