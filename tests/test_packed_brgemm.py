"""Packed-weight inference at batch on the matrix engine (csrc/cpu/packed_brgemm.cpp): where AMX
runs and the batch is at or above the crossover (packed_mlp.cpp: kInt8BrgemmRows = 64,
kCodebookBrgemmRows = 16),

* int8 layers take u8 x s8 brgemm on the packed layout: the result equals the AVX-512 VNNI
  path's bit for bit (the integer sums are exact and the epilogue is the same code). The VNNI
  path is what runs with torch.backends.mkldnn off (brgemm is oneDNN's);
* codebook layers decode into bf16 tiles for the bf16 brgemm: against dequantize-then-GEMM in
  float64 within the bf16 bound of the file's header, (2^-7 + 2^-16) sum_k |x w| per layer, the
  errors of earlier layers carried through |W| (and act' <= 1);
* below the crossover (batch 1) nothing changes.
Skipped where the CPU has no AMX (the VNNI / float paths are tested in test_packed.py there).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from aecomp import _ext
from aecomp.ops import PackedChain, codebook_layer, int8_layer

C = _ext.load()[0]
AMX = C is not None and hasattr(C, "_brgemm_level") and C._brgemm_level() == "amx"
pytestmark = pytest.mark.skipif(not AMX, reason="the packed brgemm path runs only with AMX")
U = 2.0 ** -8


@contextlib.contextmanager
def mkldnn_off():
    """torch.backends.mkldnn off: brgemm (oneDNN's) is not called; the VNNI / float paths run."""
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old


def _int8_chain(dims, acts, seed=0):
    from aecomp.compress.quantize import quantize_per_channel

    g = torch.Generator().manual_seed(seed)
    layers = []
    for k, n, a in zip(dims[:-1], dims[1:], acts):
        q, s = quantize_per_channel(torch.randn(n, k, generator=g) / k ** 0.5)
        layers.append(int8_layer(q, s, torch.randn(n, generator=g) * 0.1, a))
    return PackedChain(layers)


def _codebook_chain(dims, acts, bits, seed=0, masked=False):
    g = torch.Generator().manual_seed(seed)
    layers, dense = [], []
    for k, n, a in zip(dims[:-1], dims[1:], acts):
        book = torch.randn(2 ** bits, generator=g) / k ** 0.5
        codes = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8)
        mask = torch.rand(n, k, generator=g) > 0.5 if masked else None
        b = torch.randn(n, generator=g) * 0.1
        layers.append(codebook_layer(codes, book, mask, b, a))
        w = book[codes.long()]
        if mask is not None:
            w = torch.where(mask, w, torch.zeros(()))
        dense.append((w.double(), b.double(), a))
    return PackedChain(layers), dense


def _act(z, a):
    return torch.relu(z) if a == "relu" else torch.sigmoid(z) if a == "sigmoid" else z


@pytest.mark.parametrize("batch", [16, 64, 93, 256])
@pytest.mark.parametrize("dims,acts", [([784, 128, 64, 32, 10], ["relu", "relu", "none", "none"]),
                                       ([33, 7, 19], ["sigmoid", "relu"])])
def test_int8_brgemm_equals_the_vnni_path_bit_for_bit(dims, acts, batch):
    chain = _int8_chain(dims, acts)
    x = torch.rand(batch, dims[0]) * 2 - 0.5
    y = chain(x)
    with mkldnn_off():
        y_vnni = chain(x)
    assert torch.equal(y, y_vnni)


@pytest.mark.parametrize("bits,masked", [(4, False), (5, False), (7, True), (3, True)])
@pytest.mark.parametrize("batch", [16, 33, 256])
def test_codebook_bf16_against_dequantize_then_gemm(bits, masked, batch):
    dims, acts = [785, 129, 63, 10], ["relu", "sigmoid", "none"]
    chain, dense = _codebook_chain(dims, acts, bits, seed=bits + batch, masked=masked)
    x = torch.rand(batch, dims[0])
    y = chain(x).double()
    h, hmag, err = x.double(), x.double().abs(), torch.zeros(batch, dims[0], dtype=torch.float64)
    for w, b, a in dense:
        z = h @ w.t() + b
        # this layer's bf16 rounding of x and w, plus what earlier layers handed down (act' <= 1)
        err = (2 * U + U * U) * (hmag @ w.abs().t()) + err @ w.abs().t()
        h = _act(z, a)
        hmag = h.abs() + err
    assert ((y - h).abs() <= err + 1e-6).all()
    with mkldnn_off():  # the float path: float32 rounding only
        assert (chain(x).double() - h).abs().max() <= 1e-4


def test_batch_one_keeps_the_microkernels():
    chain, dense = _codebook_chain([64, 32, 10], ["relu", "none"], 4)
    x = torch.rand(1, 64)
    with mkldnn_off():
        want = chain(x)
    assert torch.equal(chain(x), want)
    ichain = _int8_chain([64, 32, 10], ["relu", "none"])
    with mkldnn_off():
        want = ichain(x)
    assert torch.equal(ichain(x), want)


def test_compute_float_stays_float32_at_batch():
    chain, dense = _codebook_chain([64, 32, 10], ["relu", "none"], 4)
    x = torch.rand(64, 64)
    f = chain.with_compute("float")
    with mkldnn_off():
        want = f(x)
    assert torch.equal(f(x), want)


def test_int8_quantization_ties_round_like_the_division():
    """The AVX-512 quantizer (packed_mlp.cpp) on inputs placed exactly on and one ulp around
    half-integers of x / scale gives the reference's integers (torch.round(x / scale), round half
    to even), on the VNNI and the AMX GEMM alike, so the outputs match it exactly."""
    from aecomp.compress.quantize import quantize_per_channel

    q, s = quantize_per_channel(torch.randn(16, 64) / 8)
    chain = PackedChain([int8_layer(q, s, None, "none")])
    lo, hi = -1.0, 1.5
    sx = torch.tensor((hi - lo) / 255.0)
    zp = torch.round(-torch.tensor(lo) / sx)
    k = torch.arange(-100, 150, dtype=torch.float32) + 0.5
    ties = (k * sx).float()  # x / sx lands on (or within an ulp of) a half-integer
    vals = torch.cat([ties, torch.nextafter(ties, torch.full_like(ties, 1e9)),
                      torch.nextafter(ties, torch.full_like(ties, -1e9))])
    x = torch.zeros(vals.numel() // 64 + 2, 64)
    x.view(-1)[: vals.numel()] = vals
    x[-1, 0], x[-1, 1] = lo, hi  # pins min and max, so sx and zp are the ones above
    for xb in (x, torch.cat([x] * 6)):  # below 64 rows the VNNI GEMM, from 64 the AMX one
        lo_b, hi_b = min(float(xb.min()), 0.0), max(float(xb.max()), 0.0)
        sx_b = torch.tensor((hi_b - lo_b) / 255.0)
        zp_b = torch.clamp(torch.round(-torch.tensor(lo_b) / sx_b), 0, 255)
        hq = torch.clamp(torch.round(xb / sx_b) + zp_b, 0, 255).long()
        want = ((hq - zp_b.long()) @ q.long().T).float() * (s.float() * sx_b)
        assert torch.equal(chain(xb), want)

