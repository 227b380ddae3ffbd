"""Packed-weight inference (aecomp::packed_mlp): every format x compute path against plain-torch
references on fresh random data and odd shapes; file -> packed model; bad inputs and files.

References (float64 where the kernel is float):
* float path  == dequantize-then-float-GEMM: ``act(x @ W'^T + b)`` with ``W' = q * s`` (int8) or
  ``W' = codebook[codes] * mask`` (shared). Tolerance: float32 accumulation over K products,
  rtol 1e-5 / atol 1e-5 * (1 + sum_k |x W'|) (the scale moves out of the sum in the kernel).
* int8 path   == :func:`int8_reference`: ONNX DynamicQuantizeLinear on the layer input, the
  integer sum in int64, the same float32 epilogue; equal to float rounding (1e-6 relative),
  because the integers are exact on every ISA.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aecomp import ops
from aecomp.ops import PackedChain, codebook_layer, int8_layer

ACTS = ("none", "relu", "sigmoid")


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "sigmoid":
        return torch.sigmoid(y)
    return y


def _rand_int8(n, k, g, sparsity=0.0):
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int16).to(torch.int8)
    if sparsity:
        q[torch.rand(n, k, generator=g) < sparsity] = 0
    s = torch.rand(n, generator=g) * 0.02 + 1e-3
    return q, s


def _rand_shared(n, k, bits, g, pruned):
    codes = torch.randint(0, 1 << bits, (n, k), generator=g).to(torch.uint8)
    cb = torch.sort(torch.randn(1 << bits, generator=g) * 0.1).values
    mask = (torch.rand(n, k, generator=g) > 0.6) if pruned else None
    if mask is not None:
        codes = codes * mask.to(torch.uint8)
    return codes, cb, mask


def float_reference(x, weights, biases, acts):
    h = x.double()
    for w, b, a in zip(weights, biases, acts):
        h = h @ w.double().T
        if b is not None:
            h = h + b.double()
        h = _act(h, a)
    return h


def float_tolerance(x, weights):
    """Per-output bound of float32 rounding: 1e-5 * (1 + sum_k |x_k W_jk|), propagated loosely."""
    h = x.double().abs()
    for w in weights:
        h = h @ w.double().abs().T + 1.0
    return 1e-5 * h


def int8_reference(x, layers):
    """The int8 path in plain torch: ``layers`` = [(q, s, b, act)]; float32 epilogue like the kernel."""
    h = x.float()
    for q, s, b, act in layers:
        lo = torch.clamp(h.min(), max=0.0) if h.numel() else torch.tensor(0.0)
        hi = torch.clamp(h.max(), min=0.0) if h.numel() else torch.tensor(0.0)
        sx = (hi - lo) / 255.0 if bool(hi > lo) else torch.tensor(1.0)
        zp = torch.clamp(torch.round(-lo / sx), 0, 255)
        hq = torch.clamp(torch.round(h / sx) + zp, 0, 255).long()
        acc = (hq - zp.long()) @ q.long().T
        y = acc.float() * (s.float() * sx)
        if b is not None:
            y = y + b.float()
        h = _act(y, act)
    return h


def _int8_chain(dims, acts, g, bias=True, sparsity=0.0):
    raw, layers = [], []
    for i in range(len(dims) - 1):
        q, s = _rand_int8(dims[i + 1], dims[i], g, sparsity)
        b = torch.randn(dims[i + 1], generator=g) * 0.1 if bias else None
        raw.append((q, s, b, acts[i]))
        layers.append(int8_layer(q, s, b, acts[i]))
    return raw, layers


# ------------------------------------------------------------------------------------ int8 layers
@pytest.mark.parametrize("m", [0, 1, 7, 9, 33])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (16, 4), (17, 5), (130, 64), (10, 784)])
def test_int8_layer_both_paths_match_their_references(m, n, k):
    g = torch.Generator().manual_seed(1000 * m + 10 * n + k)
    for act in ACTS:
        raw, layers = _int8_chain([k, n], [act], g)
        x = torch.rand(m, k, generator=g) * 2 - 0.5
        q, s, b, _ = raw[0]
        w = q.float() * s[:, None]
        got = PackedChain(layers, "float")(x)
        want = float_reference(x, [w], [b], [act])
        assert got.shape == (m, n) and got.dtype == torch.float32
        assert (got.double() - want).abs().le(float_tolerance(x, [w])).all(), act
        got8 = PackedChain(layers, "int8")(x)
        assert torch.allclose(got8, int8_reference(x, raw), rtol=1e-6, atol=1e-6), act
        # and the int8 path stays within the activation rounding of the float answer
        if m:
            sx = (torch.clamp(x.max(), min=0) - torch.clamp(x.min(), max=0)) / 255
            bound = (sx / 2 + 1e-6) * w.abs().sum(1) + 1e-4
            assert ((got8 - got).abs() <= bound).all(), act


def test_int8_chain_reference_shape_784_128_64_32_10():
    g = torch.Generator().manual_seed(3)
    acts = ["relu", "relu", "none", "none"]
    raw, layers = _int8_chain([784, 128, 64, 32, 10], acts, g)
    x = torch.rand(37, 784, generator=g)
    chain = PackedChain(layers)  # auto: int8 layers on the integer path
    assert torch.allclose(chain(x), int8_reference(x, raw), rtol=1e-5, atol=1e-5)
    ws = [q.float() * s[:, None] for q, s, _, _ in raw]
    want = float_reference(x, ws, [b for *_, b, _ in raw], acts)
    got = chain.with_compute("float")(x)
    assert (got.double() - want).abs().le(float_tolerance(x, ws)).all()


def test_inputs_any_layout_and_leading_dims():
    g = torch.Generator().manual_seed(4)
    raw, layers = _int8_chain([13, 20, 5], ["relu", "sigmoid"], g)
    chain = PackedChain(layers, "float")
    base = torch.randn(6, 13, 2, generator=g)
    x = base[..., 0]  # strided rows
    assert not x.is_contiguous()
    assert torch.equal(chain(x), chain(x.contiguous()))
    x3 = torch.randn(2, 3, 13, generator=g)
    assert chain(x3).shape == (2, 3, 5)
    assert torch.equal(chain(x3).reshape(6, 5), chain(x3.reshape(6, 13)))
    xt = torch.randn(13, 4, generator=g).T  # column-major
    assert torch.equal(chain(xt), chain(xt.contiguous()))


def test_nan_input_propagates_on_every_path():
    g = torch.Generator().manual_seed(5)
    _, layers = _int8_chain([8, 16, 3], ["relu", "none"], g)
    x = torch.rand(4, 8, generator=g)
    x[1, 2] = float("nan")
    for compute in ("float", "int8"):
        y = PackedChain(layers, compute)(x)
        assert torch.isnan(y[1]).all(), compute


# ------------------------------------------------------------------------------------ codebook layers
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("pruned", [False, True])
def test_codebook_layer_matches_dequantize_then_gemm(bits, pruned):
    if bits == 8 and pruned:
        codes, cb, mask = _rand_shared(5, 7, 8, torch.Generator().manual_seed(0), True)
        with pytest.raises(ValueError, match="do not fit"):
            codebook_layer(codes, cb, mask, None, "none")
        return
    g = torch.Generator().manual_seed(bits * 2 + pruned)
    for m, n, k in [(1, 1, 1), (7, 17, 3), (9, 33, 784), (1, 128, 64)]:
        codes, cb, mask = _rand_shared(n, k, bits, g, pruned)
        b = torch.randn(n, generator=g)
        act = ACTS[(m + n) % 3]
        layer = codebook_layer(codes, cb, mask, b, act)
        x = torch.randn(m, k, generator=g)
        w = cb[codes.long()] * (mask if mask is not None else 1)
        got = PackedChain([layer])(x)
        want = float_reference(x, [w], [b], [act])
        assert (got.double() - want).abs().le(float_tolerance(x, [w])).all(), (m, n, k)


def test_mixed_chain_shared_then_int8():
    g = torch.Generator().manual_seed(6)
    codes, cb, mask = _rand_shared(32, 64, 4, g, True)
    q, s = _rand_int8(10, 32, g)
    b0, b1 = torch.randn(32, generator=g) * 0.1, torch.randn(10, generator=g) * 0.1
    chain = PackedChain([codebook_layer(codes, cb, mask, b0, "relu"), int8_layer(q, s, b1, "none")], "float")
    x = torch.rand(11, 64, generator=g)
    ws = [cb[codes.long()] * mask, q.float() * s[:, None]]
    want = float_reference(x, ws, [b0, b1], ["relu", "none"])
    assert (chain(x).double() - want).abs().le(float_tolerance(x, ws)).all()
    with pytest.raises(ValueError, match="no int8 path"):
        PackedChain(chain.layers, "int8")


# ------------------------------------------------------------------------------------ every ISA path
_ISA_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from test_packed import _int8_chain, _rand_shared, int8_reference, float_reference, float_tolerance
from aecomp.ops import PackedChain, codebook_layer
from aecomp.ops._packed import load_module
print("vnni", load_module().has_avx512_vnni())
g = torch.Generator().manual_seed(7)
raw, layers = _int8_chain([37, 40, 17, 3], ["relu", "sigmoid", "none"], g)
x = torch.rand(19, 37, generator=g) - 0.2
assert torch.allclose(PackedChain(layers, "int8")(x), int8_reference(x, raw), rtol=1e-6, atol=1e-6)
ws = [q.float() * s[:, None] for q, s, _, _ in raw]
want = float_reference(x, ws, [b for *_, b, _ in raw], ["relu", "sigmoid", "none"])
assert (PackedChain(layers, "float")(x).double() - want).abs().le(float_tolerance(x, ws)).all()
for bits, pruned in [(3, True), (4, False), (5, True), (7, False)]:
    codes, cb, mask = _rand_shared(21, 9, bits, g, pruned)
    w = cb[codes.long()] * (mask if mask is not None else 1)
    x = torch.randn(5, 9, generator=g)
    got = PackedChain([codebook_layer(codes, cb, mask, None, "none")])(x)
    assert (got.double() - float_reference(x, [w], [None], ["none"])).abs().le(float_tolerance(x, [w])).all()
print("ok")
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_isa_path_matches_the_references(isa):
    """AECOMP_CPU_ISA caps the kernels' ISA (read once per process): run each in a subprocess."""
    script = _ISA_SCRIPT.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, AECOMP_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok" in res.stdout
    if isa == "generic":
        assert "vnni False" in res.stdout


# ------------------------------------------------------------------------------------ op contract
def test_gradients_are_refused_with_a_clear_error():
    g = torch.Generator().manual_seed(8)
    _, layers = _int8_chain([4, 3], ["none"], g)
    chain = PackedChain(layers)
    x = torch.rand(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        chain(x)
    with pytest.raises(RuntimeError, match="inference-only"):
        torch.ops.aecomp.packed_mlp(x, chain.data, chain.meta, chain.activations, chain.compute)
    with torch.no_grad():
        assert chain(x).shape == (2, 3)


def test_bad_inputs_name_the_op_and_the_shapes():
    g = torch.Generator().manual_seed(9)
    _, layers = _int8_chain([4, 3], ["none"], g)
    chain = PackedChain(layers)
    with pytest.raises(ValueError, match=r"aecomp::packed_mlp: x must be \[\.\.\., 4\], got \[2, 5\]"):
        chain(torch.rand(2, 5))
    with pytest.raises(TypeError, match="float32"):
        chain(torch.rand(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown activation"):
        PackedChain([int8_layer(*_rand_int8(3, 4, g), None, "tanh")])
    with pytest.raises(ValueError, match="compute must be"):
        PackedChain(layers, "fast")
    with pytest.raises(ValueError, match="takes 5 inputs but layer 0 gives 3"):
        PackedChain(layers + [int8_layer(*_rand_int8(2, 5, g), None, "none")])
    with pytest.raises(ValueError, match="packed weights must be"):
        torch.ops.aecomp.packed_mlp(torch.rand(1, 4), [chain.data[0][:-1]] + chain.data[1:], chain.meta, "none",
                                    "auto")
    q = torch.full((2, 3), -128, dtype=torch.int8)
    with pytest.raises(ValueError, match="-128"):
        int8_layer(q, torch.ones(2), None, "none")


def test_opcheck_and_compile():
    g = torch.Generator().manual_seed(10)
    _, layers = _int8_chain([12, 9, 4], ["relu", "none"], g)
    chain = PackedChain(layers)
    x = torch.rand(5, 12, generator=g)
    torch.library.opcheck(torch.ops.aecomp.packed_mlp.default,
                          (x, chain.data, chain.meta, chain.activations, chain.compute),
                          test_utils=("test_schema", "test_faketensor"))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(t):
        return ops.packed_mlp(t, chain) * 2

    with torch.no_grad():
        assert torch.allclose(f(x), chain(x) * 2)
