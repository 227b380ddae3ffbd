"""``aecomp.ops.packed_mlp`` behind backend dispatch: the triton backend (the kernels of
aecomp/kernels/packed.py as ``torch.ops.aecomp_triton.packed_mlp``, run here under Triton's
interpreter on CPU tensors in the worker of ``_triton_interp_runner``) and the reference backend,
each against dequantize-then-float-GEMM in float64; the CPU layout's unpacking; backend selection
(argument > use_backend > environment > automatic); inference-only refusal; bad input errors;
the fake implementation (shapes under FakeTensorMode, opcheck).

Tolerance (float32, "ieee" dot): 1e-5 * (1 + max|ref|) per layer, float32 accumulation of K
products with the scale applied after the sum (as in test_packed_triton.py).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

import aecomp.ops as ops  # noqa: E402
from aecomp.ops import PackedChain, codebook_layer, int8_layer  # noqa: E402
from aecomp.ops._packed import unpack_weight  # noqa: E402


def _act(y, act):
    return torch.relu(y) if act == "relu" else torch.sigmoid(y) if act == "sigmoid" else y


def _chain(dims, acts, bits=None, pruned=False, bias=True):
    """A random chain: int8 layers, or (bits given) shared-weight layers; plus the float64 weights."""
    layers, ws, bs = [], [], []
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        b = torch.randn(n) if bias else None
        if bits is None or i % 2:
            q = torch.randint(-127, 128, (n, k), dtype=torch.int16).to(torch.int8)
            s = torch.rand(n) * 0.05 + 1e-3
            layers.append(int8_layer(q, s, b, acts[i]))
            ws.append(q.double() * s.double()[:, None])
        else:
            codes = torch.randint(0, 1 << bits, (n, k)).to(torch.uint8)
            cb = torch.randn(1 << bits) * 0.1
            mask = torch.rand(n, k) > 0.6 if pruned else None
            layers.append(codebook_layer(codes, cb, mask, b, acts[i]))
            w = cb.double()[codes.long()]
            ws.append(w * mask if mask is not None else w)
        bs.append(b)
    return layers, ws, bs


def _reference(x, ws, bs, acts):
    h = x.double()
    for w, b, a in zip(ws, bs, acts):
        h = h @ w.T + (b.double() if b is not None else 0)
        h = _act(h, a)
    return h


def _close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.numel():
        tol = 1e-5 * (1 + float(want.abs().max())) * 4
        err = float((got.double() - want).abs().max())
        assert err <= tol, f"max error {err} > {tol}"


@pytest.mark.parametrize("kind,bits,pruned", [("int8", None, False), ("codebook", 4, False),
                                              ("codebook", 5, True), ("codebook", 8, False)])
def test_unpack_inverts_the_cpu_layout(kind, bits, pruned):
    n, k = 19, 37
    if kind == "int8":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int16).to(torch.int8)
        assert torch.equal(unpack_weight(int8_layer(q, torch.rand(n), None, "none")), q)
    else:
        codes = torch.randint(0, 1 << bits, (n, k)).to(torch.uint8)
        cb = torch.randn(1 << bits)
        mask = torch.rand(n, k) > 0.5 if pruned else None
        layer = codebook_layer(codes, cb, mask, None, "none")
        got = layer.scale[unpack_weight(layer).long()]
        want = cb[codes.long()] * (mask if mask is not None else 1)
        assert torch.equal(got, want)


@interpreted
@pytest.mark.parametrize("dims,bits,pruned", [((1, 1), None, False), ((13, 7, 3), None, False),
                                              ((37, 17, 10), 4, True), ((64, 33, 5), 7, False)])
def test_triton_backend_matches_dequantized_gemm(dims, bits, pruned):
    acts = ("relu", "sigmoid", "none")[-(len(dims) - 1):]
    layers, ws, bs = _chain(dims, acts, bits, pruned)
    chain = PackedChain(layers, "float")
    for m in (1, 7, 33):
        x = torch.randn(m, dims[0])
        got = ops.packed_mlp(x, chain, backend="triton")
        _close(got, _reference(x, ws, bs, acts))
    # the op itself, as torch.ops sees it
    data, meta, a = chain.gpu_args(x.device)
    _close(torch.ops.aecomp_triton.packed_mlp(x, data, meta, a), _reference(x, ws, bs, acts))


@interpreted
def test_triton_backend_layouts_selection_and_errors():
    from aecomp import use_backend

    acts = ("relu", "none")
    layers, ws, bs = _chain((13, 20, 3), acts, bits=4, bias=True)
    layers[1] = int8_layer(torch.randint(-127, 128, (3, 20), dtype=torch.int16).to(torch.int8),
                           torch.rand(3) * 0.05, None, "none")
    ws[1], bs[1] = unpack_weight(layers[1]).double() * layers[1].scale.double()[:, None], None
    chain = PackedChain(layers, "float")
    base = torch.randn(2, 4, 13, 2)
    x = base[..., 0]  # non-contiguous, leading dims
    want = _reference(x.reshape(-1, 13), ws, bs, acts).reshape(2, 4, 3)
    with use_backend("triton"):
        _close(ops.packed_mlp(x, chain), want)
        assert ops.packed_mlp(torch.randn(0, 13), chain).shape == (0, 3)
        with pytest.raises(ValueError, match=r"x must be \[\.\.\., 13\], got \[3, 12\]"):
            ops.packed_mlp(torch.randn(3, 12), chain)
        with pytest.raises(TypeError, match="x must be one of"):
            ops.packed_mlp(torch.randn(3, 13, dtype=torch.float64), chain)
        with pytest.raises(RuntimeError, match="inference-only"):
            ops.packed_mlp(torch.randn(3, 13, requires_grad=True), chain)
        with torch.no_grad():
            ops.packed_mlp(torch.randn(3, 13, requires_grad=True), chain)
    # the registered op refuses a gradient too (its autograd registration), not only the entry
    data, meta, a = chain.gpu_args("cpu")
    with pytest.raises(RuntimeError, match="inference-only"):
        torch.ops.aecomp_triton.packed_mlp(torch.randn(3, 13, requires_grad=True), data, meta, a)
    with pytest.raises(ValueError, match="layer 1 takes 20 inputs but layer 0 gives 19"):
        torch.ops.aecomp_triton.packed_mlp(torch.randn(3, 13), [data[0][:19], data[1], data[2][:19], *data[3:]],
                                           meta, a)
    # bfloat16 input: the tile is converted to x's dtype (interpreter: float32 accumulate)
    y = ops.packed_mlp(x.to(torch.bfloat16), chain, backend="triton")
    assert y.dtype == torch.bfloat16
    assert (y.double() - want).abs().max() <= 2e-2 * (1 + want.abs().max())
    # the fake: shapes under FakeTensorMode, and opcheck
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fdata = [mode.from_tensor(t) for t in data]
        assert torch.ops.aecomp_triton.packed_mlp(fx, fdata, meta, a).shape == (2, 4, 3)
    torch.library.opcheck(torch.ops.aecomp_triton.packed_mlp.default, (x, data, meta, a),
                          test_utils=("test_schema", "test_faketensor"))


def test_backend_selection_and_reference(monkeypatch):
    from aecomp import use_backend
    from aecomp._backend import _FAST, auto_backend_name, get_backend
    from aecomp.ops import _packed

    acts = ("relu", "sigmoid")
    layers, ws, bs = _chain((13, 7, 5), acts, bits=3, pruned=True)
    chain = PackedChain(layers, "float")
    x = torch.randn(6, 13)
    want = _reference(x, ws, bs, acts)
    _close(ops.packed_mlp(x, chain, backend="reference"), want)
    _close(ops.packed_mlp(x.double(), chain, backend="reference"), want)
    calls = []
    counting = lambda *a: calls.append(1) or _packed._reference(*a)  # noqa: E731
    monkeypatch.setitem(get_backend("reference").ops, "packed_mlp", counting)
    _FAST.clear()
    try:
        ops.packed_mlp(x, chain)  # automatic on CPU float32: the C++ kernel
        assert calls == []
        with use_backend("reference"):
            ops.packed_mlp(x, chain)
        assert calls == [1]
        monkeypatch.setenv("AECOMP_BACKEND", "reference")
        ops.packed_mlp(x, chain)
        assert calls == [1, 1]
        ops.packed_mlp(x, chain, backend="cpu")  # the argument beats the environment
        assert calls == [1, 1]
    finally:
        monkeypatch.undo()
        _FAST.clear()
    assert auto_backend_name("cpu", torch.float32, "packed_mlp") == "cpu"
    with pytest.raises(RuntimeError, match="inference-only"):
        ops.packed_mlp(torch.randn(2, 13, requires_grad=True), chain, backend="reference")
    with pytest.raises(TypeError, match="chain must be a PackedChain"):
        ops.packed_mlp(x, [layers[0]])


@interpreted
def test_triton_backend_compiles_and_serves_the_cpu_layout_op():
    """torch.compile traces the triton backend's op (fullgraph); ``torch.ops.aecomp.packed_mlp``'s
    CUDA kernel (the CPU-layout arguments unpacked, then the Triton op) run here on CPU tensors."""
    from aecomp.ops import _packed

    acts = ("sigmoid", "relu", "none")
    layers, ws, bs = _chain((29, 17, 9, 4), acts, bits=5, pruned=True)
    chain = PackedChain(layers, "float")
    x = torch.randn(7, 29)
    want = _reference(x, ws, bs, acts)
    f = torch.compile(lambda t: ops.packed_mlp(t, chain, backend="triton"), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        _close(f(x), want)
    got = _packed._cuda_impl(x, chain.data, chain.meta, chain.activations, chain.compute)
    _close(got, want)
    with pytest.raises(ValueError, match="3 layers but 2 activations"):
        _packed._cuda_impl(x, chain.data, chain.meta, "relu,none", chain.compute)


@interpreted
@pytest.mark.parametrize("dims,bits", [((13, 7), None), ((29, 17, 9, 4), 5), ((784, 128, 64, 32, 10), 4),
                                       ((40, 33, 1, 70), None)])
def test_fused_chain_kernel_matches_per_layer_and_reference(dims, bits):
    """packed_chain_kernel (one launch, 2..4 layers) against dequantize-then-GEMM and against the
    per-layer launches; and the automatic choice of it for small batches only."""
    from aecomp.kernels import packed as kp

    acts = ("relu", "sigmoid", "none", "relu")[:len(dims) - 1]
    layers, ws, bs = _chain(dims, acts, bits, pruned=bits is not None)
    chain = PackedChain(layers, "float")
    glayers = kp.layers_from_data(*chain.gpu_args("cpu"))
    base = torch.randn(dims[0], 17).T  # non-contiguous rows
    for m in (1, 5, 17):
        x = base[:m]
        want = _reference(x, ws, bs, acts)
        fused = kp.packed_chain(x, glayers, fused=True)
        _close(fused, want)
        _close(fused, kp.packed_chain(x, glayers, fused=False).double())
    assert kp.use_fused(1, glayers) == (1 < len(glayers) <= 4)
    assert not kp.use_fused(kp.FUSED_MAX_M + 1, glayers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the compiled Triton kernels)")
@pytest.mark.parametrize("m", [1, 7, 33, 200])
def test_cuda_tensors_run_the_triton_kernels(m):
    """On a GPU: automatic selection sends CUDA tensors to the triton backend; both launch paths
    (fused for m <= 64, per layer above) and ``torch.ops.aecomp.packed_mlp``'s CUDA kernel."""
    from aecomp._backend import auto_backend_name

    assert auto_backend_name("cuda", torch.float32, "packed_mlp") == "triton"
    acts = ("relu", "relu", "none", "none")
    layers, ws, bs = _chain((784, 128, 64, 32, 10), acts, bits=4)
    chain = PackedChain(layers, "float")
    x = torch.randn(m, 784)
    want = _reference(x, ws, bs, acts)
    with torch.no_grad():
        _close(ops.packed_mlp(x.cuda(), chain).cpu(), want)
        _close(torch.ops.aecomp.packed_mlp(x.cuda(), chain.data, chain.meta, chain.activations, "float").cpu(), want)
        y16 = ops.packed_mlp(x.cuda().bfloat16(), chain).cpu().double()
    # bfloat16 inputs and intermediates over K = 784: a coarse bound (not derived; catches a broken
    # kernel, not a precision regression)
    assert (y16 - want).abs().max() <= 1e-1 * (1 + want.abs().max())


def test_packed_layouts_do_not_import_the_triton_backend():
    """aecomp/ops/_triton.py imports _packed (the layouts and the op's checks); _packed reaches the
    triton op through the backend registry and its torch op name, so there is no import circle."""
    import ast
    from pathlib import Path

    from aecomp.ops import _packed

    tree = ast.parse(Path(_packed.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported + modules if "_triton" in m or m == "triton"], imported + modules


@pytest.mark.parametrize("k", [784, 70, 16, 3])
@pytest.mark.parametrize("rows", [1, 7, 64, 257])
def test_int8_quantization_matches_the_division_on_random_data(k, rows):
    """The quantizer's multiply-by-reciprocal path (the division only for lanes near a
    half-integer) gives the division's integers on random data of every shape: 64-wide steps,
    16-wide tails and odd widths, on the AVX-512 VNNI path (and from 64 rows AMX, where the CPU has it); scales from tiny to large."""
    from aecomp.compress.quantize import quantize_per_channel

    q, s = quantize_per_channel(torch.randn(16, k) / 8)
    chain = PackedChain([int8_layer(q, s, None, "none")])
    for mag in (1e-30, 1e-3, 1.0, 3e4):
        xb = (torch.randn(rows, k) * mag).float()
        lo_b, hi_b = min(float(xb.min()), 0.0), max(float(xb.max()), 0.0)
        sx_b = (torch.tensor(hi_b) - torch.tensor(lo_b)) / 255.0  # in float32, as the kernel
        zp_b = torch.clamp(torch.round(-torch.tensor(lo_b) / sx_b), 0, 255)
        hq = torch.clamp(torch.round(xb / sx_b) + zp_b, 0, 255).long()
        want = ((hq - zp_b.long()) @ q.long().T).float() * (s.float() * sx_b)
        assert torch.equal(chain(xb), want), (k, rows, mag)
