r"""Packed-weight inference in Triton: one kernel per layer, weights unpacked in registers.

Math (``x: [M, K]``, packed ``W: [N, K]``, ``b: [N]``)::

    int8       y = act( (x @ q^T) * s + b )            q int8 [N, K] in [-127, 127], s float32 [N]
    codebook   y = act(  x @ T[c]^T      + b )         c uint8 [N, K] codes, T float32 [tsize] table

``q`` and ``c`` stay int8/uint8 in memory; a ``[BLOCK_N, BLOCK_K]`` tile of them is loaded and
turned into floats in registers (int8: a conversion, exact since |q| <= 127 fits bfloat16,
float16 and float32; codebook: a gather from the table, which stays in L1), then fed to
``tl.dot`` with float32 accumulation; the per-channel scale, the bias and the activation are
applied to the accumulator before the one store. A pruned shared layer's zeros are one extra
table entry holding 0.0 (as on the CPU, ``aecomp.ops._packed.codebook_layer``).

Precision: ``x`` in float32 uses ``input_precision="ieee"`` (float32 FMAs, the weights exact),
so the result is dequantize-then-float-GEMM up to float32 rounding (1e-5 relative, the scale
applied after the sum); bfloat16/float16 ``x`` multiplies the tile converted to ``x``'s dtype
(int8 values exact; codebook values rounded to it), tolerance 1e-2 / 2e-3.

The chain (:func:`packed_mlp`, and :func:`packed_chain` behind the op
``aecomp_triton::packed_mlp``) is one op call. Inside it, a chain of 2 to 4 layers on at most
``FUSED_MAX_M`` rows (inference batches; the reference CompressedNet is 4 layers) is ONE launch
of ``packed_chain_kernel``: each program owns ``BLOCK_M`` rows and runs every layer on them,
column tile by column tile, the intermediates in a ``[2, M, max width]`` global scratch (x's
dtype, as the per-layer path stores them; small enough to stay in L2) with a barrier between
layers. Longer chains and bigger batches get one ``packed_linear_kernel`` launch per layer.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from . import _configs

INTERPRETED = _configs.interpreting()
_INTERP = tl.constexpr(INTERPRETED)
ACT_CODES = {"none": 0, "relu": 1, "sigmoid": 2}
KIND_CODES = {"int8": 0, "codebook": 1}

# Hopper tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) compiled ahead of time; small batches
# (inference) first. The interpreter runs one small tile.
CONFIGS = ((16, 64, 64, 4, 3), (64, 64, 64, 4, 3), (128, 128, 64, 8, 3))


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)  # keeps NaN
    if ACT == 2:
        z = tl.sigmoid(z)
    return z


@triton.jit
def _packed_tile(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, rm, rn, M, N, K, stride_xm, stride_xk, stride_wn, stride_ym,
    KIND: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The ``[BLOCK_M, BLOCK_N]`` tile at rows ``rm``, columns ``rn`` of ``y = act(x W^T (* s) + b)``."""
    rk = tl.arange(0, BLOCK_K)
    am = (rm % M).to(tl.int64)
    wn = (rn % N).to(tl.int64)
    x_ptrs = x_ptr + am[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + wn[:, None] * stride_wn + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = rk < K - k0
        a = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
        if KIND == 0:
            wt = tl.load(w_ptrs, mask=kmask[None, :], other=0).to(tl.float32)
        else:
            codes = tl.load(w_ptrs, mask=kmask[None, :], other=0).to(tl.int32)
            wt = tl.load(s_ptr + codes)  # the table lookup: unpacked in registers
            wt = tl.where(kmask[None, :], wt, 0.0)
        if _INTERP or PRECISION == "ieee":
            acc = tl.dot(a.to(tl.float32), tl.trans(wt), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(wt.to(a.dtype)), acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K
    nmask = rn < N
    if KIND == 0:
        acc = acc * tl.load(s_ptr + rn, mask=nmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0)[None, :]
    acc = _act(acc, ACT)
    y_ptrs = y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & nmask[None, :])


@triton.jit
def packed_linear_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_ym,
    KIND: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``[BLOCK_M, BLOCK_N]`` tile of ``y = act(x W^T (* s) + b)`` with ``W`` packed (module doc)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _packed_tile(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, rm, rn, M, N, K, stride_xm, stride_xk, stride_wn, stride_ym,
                 KIND, HAS_BIAS, ACT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _packed_layer(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, rm, M, N, K, stride_xm, stride_xk, stride_ym,
    KIND: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A whole layer for rows ``rm``: every column tile in turn, then a barrier (the next layer
    reads what the other warps of this program wrote)."""
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        _packed_tile(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, rm, rn, M, N, K, stride_xm, stride_xk, K, stride_ym,
                     KIND, HAS_BIAS, ACT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.debug_barrier()


@triton.jit
def packed_chain_kernel(
    x_ptr, y_ptr, h_ptr,
    M, K0, stride_xm, stride_xk, stride_ym, stride_h,
    w0, s0, b0, N0, w1, s1, b1, N1, w2, s2, b2, N2, w3, s3, b3, N3,
    NL: tl.constexpr,
    KIND0: tl.constexpr, HAS_BIAS0: tl.constexpr, ACT0: tl.constexpr,
    KIND1: tl.constexpr, HAS_BIAS1: tl.constexpr, ACT1: tl.constexpr,
    KIND2: tl.constexpr, HAS_BIAS2: tl.constexpr, ACT2: tl.constexpr,
    KIND3: tl.constexpr, HAS_BIAS3: tl.constexpr, ACT3: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A chain of 2 to 4 packed layers in ONE launch: each program owns ``BLOCK_M`` rows and runs
    every layer on them; layer ``l``'s output goes to ``h[l % 2]`` (``[2, M, stride_h]``, x's
    dtype: what the per-layer path stores too), the last layer's to ``y``."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    h1 = h_ptr + M * stride_h
    o0 = y_ptr if NL == 1 else h_ptr
    so0 = stride_ym if NL == 1 else stride_h
    _packed_layer(x_ptr, w0, s0, b0, o0, rm, M, N0, K0, stride_xm, stride_xk, so0,
                  KIND0, HAS_BIAS0, ACT0, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if NL > 1:
        o1 = y_ptr if NL == 2 else h1
        so1 = stride_ym if NL == 2 else stride_h
        _packed_layer(h_ptr, w1, s1, b1, o1, rm, M, N1, N0, stride_h, 1, so1,
                      KIND1, HAS_BIAS1, ACT1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if NL > 2:
        o2 = y_ptr if NL == 3 else h_ptr
        so2 = stride_ym if NL == 3 else stride_h
        _packed_layer(h1, w2, s2, b2, o2, rm, M, N2, N1, stride_h, 1, so2,
                      KIND2, HAS_BIAS2, ACT2, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if NL > 3:
        _packed_layer(h_ptr, w3, s3, b3, y_ptr, rm, M, N3, N2, stride_h, 1, stride_ym,
                      KIND3, HAS_BIAS3, ACT3, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)


class GpuLayer(NamedTuple):
    """A packed layer in the GPU layout: ``w`` int8 ``q [N, K]`` or uint8 codes ``[N, K]``
    (row-major), ``s`` the scales ``[N]`` or the table, ``bias`` ``[N]`` or None."""

    kind: str
    w: torch.Tensor
    s: torch.Tensor
    bias: Optional[torch.Tensor]
    activation: str


def gpu_layer(kind: str, w: torch.Tensor, s: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
              mask: Optional[torch.Tensor] = None, device=None) -> GpuLayer:
    """Build a :class:`GpuLayer` (``mask``: a pruned codebook layer's kept weights)."""
    if kind not in KIND_CODES:
        raise ValueError(f"packed_mlp (triton): kind must be 'int8' or 'codebook', got {kind!r}")
    if activation not in ACT_CODES:
        raise ValueError(f"packed_mlp (triton): unknown activation {activation!r}")
    if kind == "int8" and w.dtype != torch.int8:
        raise ValueError(f"packed_mlp (triton): int8 weights must be torch.int8, got {w.dtype}")
    s = s.detach().float().reshape(-1)
    w = w.contiguous()
    if kind == "codebook":
        codes = w.to(torch.int64)
        if mask is not None:
            s = torch.cat([s, s.new_zeros(1)])
            codes = torch.where(mask.bool(), codes, torch.full_like(codes, s.numel() - 1))
        if s.numel() > 256:
            raise ValueError(f"packed_mlp (triton): {s.numel()} table entries do not fit uint8 codes")
        w = codes.to(torch.uint8)
    dev = device if device is not None else w.device
    b = None if bias is None else bias.detach().float().contiguous().to(dev)
    return GpuLayer(kind, w.to(dev), s.contiguous().to(dev), b, activation)


# float32 ("ieee": FMA dot products, no tensor cores) halves BLOCK_K: the 16x64x64 tile
# spills registers in float32 (184 stack bytes, sm_90 AOT), 16x64x32 does not.
FLOAT32_BLOCK_K = 32


def _config(m: int, dtype: torch.dtype = torch.bfloat16):
    if INTERPRETED:
        return 16, 32, 32, 4, 1
    cfg = next((c for c in CONFIGS if m <= c[0]), CONFIGS[-1])
    if dtype == torch.float32:
        cfg = (cfg[0], cfg[1], FLOAT32_BLOCK_K, cfg[3], cfg[4])
    return cfg


def _unwrapped(kernel):
    return kernel


def packed_linear(x: torch.Tensor, layer: GpuLayer, wrap_triton=_unwrapped) -> torch.Tensor:
    """One packed layer on ``x`` ``[M, K]`` (any strides)."""
    n, k = layer.w.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"packed_mlp (triton): x must be [M, {k}], got {list(x.shape)}")
    m = x.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    bm, bn, bk, warps, stages = _config(m, x.dtype)
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    b = layer.bias if layer.bias is not None else layer.s
    wrap_triton(packed_linear_kernel)[grid](
        x, layer.w, layer.s, b, y, m, n, k, x.stride(0), x.stride(1), layer.w.stride(0), y.stride(0),
        KIND=KIND_CODES[layer.kind], HAS_BIAS=layer.bias is not None, ACT=ACT_CODES[layer.activation],
        PRECISION=prec, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return y


def packed_mlp(x: torch.Tensor, layers: List[GpuLayer]) -> torch.Tensor:
    """The chain: ``x [..., K] -> [..., N_last]``, one launch per layer (inference only)."""
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("packed_mlp (triton): packed ops are inference-only; call it under torch.no_grad()")
    return packed_chain(x, layers)


# One launch for the chain (packed_chain_kernel) when it has 2..4 layers and at most FUSED_MAX_M
# rows (inference batches: each program runs the whole chain on its rows, so few rows means few
# programs anyway); otherwise one launch per layer (more programs per layer for big batches).
FUSED_MAX_LAYERS = 4
FUSED_MAX_M = 64


def use_fused(m: int, layers: List[GpuLayer]) -> bool:
    return 1 < len(layers) <= FUSED_MAX_LAYERS and 0 < m <= FUSED_MAX_M


def packed_chain(x: torch.Tensor, layers: List[GpuLayer], wrap_triton=_unwrapped,
                 fused: Optional[bool] = None) -> torch.Tensor:
    """The chain without the gradient check (the op body: autograd is handled above it).
    ``fused``: one launch (:func:`use_fused` decides when None) or one per layer."""
    lead = x.shape[:-1]
    h = x.reshape(-1, x.shape[-1])
    if fused is None:
        fused = use_fused(h.shape[0], layers)
    if fused:
        h = _fused_chain(h, layers, wrap_triton)
    else:
        for layer in layers:
            h = packed_linear(h, layer, wrap_triton)
    return h.reshape(*lead, h.shape[-1])


def _fused_chain(x: torch.Tensor, layers: List[GpuLayer], wrap_triton) -> torch.Tensor:
    nl = len(layers)
    if not 0 < nl <= FUSED_MAX_LAYERS:
        raise ValueError(f"packed_mlp (triton): the fused chain takes 1 to {FUSED_MAX_LAYERS} layers, got {nl}")
    for i, layer in enumerate(layers):
        width = x.shape[1] if i == 0 else layers[i - 1].w.shape[0]
        if layer.w.shape[1] != width:
            raise ValueError(f"packed_mlp (triton): x must be [M, {layer.w.shape[1]}], got {list(x.shape)}" if i == 0
                             else f"packed_mlp (triton): layer {i} takes {layer.w.shape[1]} inputs, gets {width}")
    m = x.shape[0]
    y = torch.empty(m, layers[-1].w.shape[0], device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    p = max([layer.w.shape[0] for layer in layers[:-1]] + [1])
    h = torch.empty(2, m, p, device=x.device, dtype=x.dtype)
    # float32 keeps the 16-row tile at any batch: the 64x64x32 float32 chain spills (sm_90 AOT)
    bm, bn, bk, warps, stages = _config(min(m, 16) if x.dtype == torch.float32 else m, x.dtype)
    args, ce = [], {}
    for i in range(FUSED_MAX_LAYERS):
        layer = layers[i] if i < nl else layers[0]
        args += [layer.w, layer.s, layer.bias if layer.bias is not None else layer.s, layer.w.shape[0]]
        ce.update({f"KIND{i}": KIND_CODES[layer.kind], f"HAS_BIAS{i}": layer.bias is not None,
                   f"ACT{i}": ACT_CODES[layer.activation]})
    wrap_triton(packed_chain_kernel)[(triton.cdiv(m, bm),)](
        x, y, h, m, x.shape[1], x.stride(0), x.stride(1), y.stride(0), p, *args, NL=nl,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=warps, num_stages=stages, **ce)
    return y


def layers_from_data(data, meta, activations: str) -> List[GpuLayer]:
    """:class:`GpuLayer` s from the op's flat arguments: 3 tensors ``(w, s, bias or [0])`` and 2 ints
    ``(kind code, has_bias)`` per layer, activations one comma-separated string."""
    kinds = {v: k for k, v in KIND_CODES.items()}
    acts = activations.split(",")
    return [GpuLayer(kinds[meta[2 * i]], data[3 * i].contiguous(), data[3 * i + 1].contiguous(),
                     data[3 * i + 2] if meta[2 * i + 1] else None,
                     acts[i]) for i in range(len(acts))]
