"""``packed_mlp``: a chain of layers whose weights stay packed (int8 + per-channel scales, or
b-bit codes + codebook), run by the C++ kernels of ``csrc/cpu/packed_mlp.cpp`` (the math, the
two compute paths and the byte layouts are in that file's header comment).

This module owns the layouts' Python side: :func:`int8_layer` / :func:`codebook_layer` turn a
layer's integer weights into the kernel's packed tensors (done once, at load time), and
:class:`PackedChain` holds a whole chain and runs it: outside ``torch.compile`` through the
pybind11 handle (``aecomp._packed.Chain``: parsed once, called with ``x`` only), under
``torch.compile`` as ``torch.ops.aecomp.packed_mlp``. Inference only: the op refuses a gradient.

Backends (``aecomp.ops.packed_mlp(x, chain, backend=None)``; the usual order: the argument >
``aecomp.use_backend`` > ``AECOMP_BACKEND`` > automatic): ``cpu`` the C++ kernel above (float32);
``triton`` the kernels of ``aecomp/kernels/packed.py`` as ``torch.ops.aecomp_triton.packed_mlp``
(CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``); ``reference`` dequantize-then-GEMM in
plain PyTorch. The GPU/reference layout (row-major int8 ``q`` or uint8 codes, see
:meth:`PackedChain.gpu_args`) is unpacked from the CPU layout once per device and cached.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .. import _ext
from .._backend import _STATE, BackendUnavailableError, _env_backend, get_backend, resolve, resolve_fast

__all__ = ["GROUP", "PackedChain", "PackedLayer", "codebook_layer", "int8_layer", "load_module", "packed_mlp"]

GROUP = 16  # output columns per packed group (the kernels' layout)
KINDS = {"int8": 0, "codebook": 1}
COMPUTE = ("auto", "int8", "float")
_MODULE = None


def load_module():
    """``aecomp._packed``: the pybind11 module that lives in the same shared library as ``aecomp._C``."""
    global _MODULE
    if _MODULE is None:
        mod, err = _ext.load()
        if mod is None:
            raise RuntimeError(f"aecomp::packed_mlp: {err}")
        loader = importlib.machinery.ExtensionFileLoader("aecomp._packed", mod.__file__)
        spec = importlib.util.spec_from_loader("aecomp._packed", loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        _MODULE = module
    return _MODULE


@dataclass
class PackedLayer:
    """One packed layer as the kernel reads it (see csrc/cpu/packed_mlp.cpp, "layouts")."""

    kind: str  # "int8" | "codebook"
    out_features: int
    in_features: int
    weight: torch.Tensor  # uint8, the packed layout
    scale: torch.Tensor  # float32: int8 per-channel scales [N], or the codebook table [T]
    bias: Optional[torch.Tensor]
    activation: str
    colsum: Optional[torch.Tensor] = None  # int32 [N] (int8)
    table: int = 0  # codebook table size T (16, 32 or 256)

    @property
    def nbytes(self) -> int:
        """Bytes this layer holds in memory (packed weights, scales/table, bias, column sums)."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale, self.bias, self.colsum)
                   if t is not None)


def _groups(n: int) -> int:
    return (n + GROUP - 1) // GROUP


def int8_layer(q: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> PackedLayer:
    """Pack an int8 layer ``W = q * scale[:, None]`` (``q`` int8 ``[N, K]`` in [-127, 127])."""
    if q.dim() != 2 or q.dtype != torch.int8:
        raise ValueError(f"aecomp::packed_mlp: q must be int8 [out, in], got {q.dtype} {list(q.shape)}")
    n, k = q.shape
    if scale.shape != (n,):
        raise ValueError(f"aecomp::packed_mlp: scale must have shape [{n}], got {list(scale.shape)}")
    if n and k and int(q.min()) < -127:
        raise ValueError("aecomp::packed_mlp: q holds -128; the int8 format is symmetric, [-127, 127]")
    g, k4 = _groups(n), (k + 3) // 4
    pad = torch.zeros(g * GROUP, k4 * 4, dtype=torch.int8)
    pad[:n, :k] = q
    w = pad.view(g, GROUP, k4, 4).permute(0, 2, 1, 3).contiguous().view(torch.uint8).reshape(-1)
    return PackedLayer("int8", n, k, w, scale.detach().float().contiguous().clone(), _bias(bias, n), activation,
                       colsum=q.to(torch.int32).sum(dim=1, dtype=torch.int32).contiguous())


def codebook_layer(codes: torch.Tensor, codebook: torch.Tensor, mask: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], activation: str) -> PackedLayer:
    """Pack a shared-weight layer ``W = where(mask, codebook[codes], 0)`` (codes uint8 ``[N, K]``).

    A pruned layer's masked weights get one extra table entry holding 0.0, so the alphabet is
    ``len(codebook) (+ 1)``; it is stored as 4-bit codes (alphabet <= 16) or bytes (<= 256).
    """
    if codes.dim() != 2:
        raise ValueError(f"aecomp::packed_mlp: codes must be 2-D [out, in], got {list(codes.shape)}")
    n, k = codes.shape
    values = codebook.detach().float().reshape(-1)
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= values.numel()):
        raise ValueError(f"aecomp::packed_mlp: a code is outside the codebook of {values.numel()} values")
    if mask is not None:
        if mask.shape != codes.shape:
            raise ValueError(f"aecomp::packed_mlp: mask must have the codes' shape {list(codes.shape)}, got "
                             f"{list(mask.shape)}")
        zero = values.numel()
        values = torch.cat([values, values.new_zeros(1)])
        c = torch.where(mask.bool(), c, torch.full_like(c, zero))
    alphabet = values.numel()
    if alphabet > 256:
        raise ValueError(f"aecomp::packed_mlp: {alphabet} shared values (8-bit codes plus the pruned zero) do not "
                         f"fit the byte codes of the kernel; share with at most 7 bits when pruned")
    table = 16 if alphabet <= 16 else (32 if alphabet <= 32 else 256)
    tab = torch.zeros(table)
    tab[:alphabet] = values
    g = _groups(n)
    if table == 16:
        k2 = (k + 1) // 2
        pad = torch.zeros(g * GROUP, k2 * 2, dtype=torch.int64)
        pad[:n, :k] = c
        pairs = pad.view(g, GROUP, k2, 2).permute(0, 2, 1, 3)
        w = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8).contiguous().reshape(-1)
    else:
        pad = torch.zeros(g * GROUP, k, dtype=torch.int64)
        pad[:n] = c
        w = pad.view(g, GROUP, k).permute(0, 2, 1).to(torch.uint8).contiguous().reshape(-1)
    return PackedLayer("codebook", n, k, w, tab.contiguous(), _bias(bias, n), activation, table=table)


def _bias(bias: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    if bias is None:
        return None
    b = bias.detach().float().reshape(-1).contiguous().clone()
    if b.shape != (n,):
        raise ValueError(f"aecomp::packed_mlp: bias must have shape [{n}], got {list(bias.shape)}")
    return b


_EMPTY_F = torch.empty(0)
_EMPTY_I = torch.empty(0, dtype=torch.int32)


class PackedChain:
    """A chain of :class:`PackedLayer` run in one call: ``chain(x)`` (see :func:`packed_mlp`).

    ``compute``: ``"auto"`` (int8 layers on the integer path, codebook layers in float),
    ``"int8"`` or ``"float"`` (every layer in float: dequantize-then-GEMM semantics).
    """

    def __init__(self, layers: Sequence[PackedLayer], compute: str = "auto") -> None:
        if compute not in COMPUTE:
            raise ValueError(f"aecomp::packed_mlp: compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
        if not layers:
            raise ValueError("aecomp::packed_mlp: a chain needs at least one layer")
        self.layers: List[PackedLayer] = list(layers)
        self.compute = compute
        self.data: List[torch.Tensor] = []
        self.meta: List[int] = []
        for layer in self.layers:
            self.data += [layer.weight, layer.scale, _EMPTY_F if layer.bias is None else layer.bias,
                          _EMPTY_I if layer.colsum is None else layer.colsum]
            self.meta += [KINDS[layer.kind], layer.out_features, layer.in_features, layer.table]
        self.activations = ",".join(layer.activation for layer in self.layers)
        self._handle = load_module().Chain(self.data, self.meta, self.activations, compute)
        self.in_features = self.layers[0].in_features
        self.out_features = self.layers[-1].out_features
        self._gpu = {}

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the chain holds (the resident weights)."""
        return sum(layer.nbytes for layer in self.layers)

    def with_compute(self, compute: str) -> "PackedChain":
        return PackedChain(self.layers, compute)

    def gpu_args(self, device) -> Tuple[List[torch.Tensor], List[int], str]:
        """``(data, meta, activations)`` for ``aecomp_triton::packed_mlp`` on ``device``: per layer
        ``w`` (int8 ``q [N, K]`` or uint8 codes ``[N, K]``, row-major), ``s`` (scales ``[N]`` or
        the table), ``bias`` (or an empty tensor) and ``(kind code, has_bias)``; cached per device."""
        key = str(torch.device(device))
        if key not in self._gpu:
            self._gpu[key] = (*_gpu_data(self.layers, device), self.activations)
        return self._gpu[key]

    def __call__(self, x: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
        return packed_mlp(x, self, backend)


def _gpu_data(layers: Sequence[PackedLayer], device) -> Tuple[List[torch.Tensor], List[int]]:
    data: List[torch.Tensor] = []
    meta: List[int] = []
    for layer in layers:
        bias = _EMPTY_F if layer.bias is None else layer.bias
        data += [t.to(device) for t in (unpack_weight(layer), layer.scale, bias)]
        meta += [KINDS[layer.kind], int(layer.bias is not None)]
    return data, meta


def _cuda_impl(x, data, meta, activations, compute):
    """``torch.ops.aecomp.packed_mlp`` on CUDA tensors: the CPU-layout arguments unpacked (on every
    call: the cached route is ``aecomp.ops.packed_mlp``) and run by ``aecomp_triton::packed_mlp``.
    ``compute`` is ignored there: the Triton kernels always have the float (dequantize) semantics.

    The triton op is reached through the backend registry and its torch op name, not by importing
    ``_triton`` (which imports this module: the dependency runs one way, triton -> packed)."""
    triton_backend = get_backend("triton")  # registers torch.ops.aecomp_triton.* on first use
    ok, reason = triton_backend.status()
    if not ok:
        raise BackendUnavailableError(f"aecomp::packed_mlp: CUDA tensors run on the triton backend, which is not "
                                      f"available: {reason}. {triton_backend.how_to_get}".rstrip())
    if len(meta) < 4 or len(meta) % 4 or len(data) != len(meta):
        raise ValueError(f"aecomp::packed_mlp: expected 4 tensors and 4 meta ints per layer, got {len(data)} "
                         f"tensors and {len(meta)} ints")
    acts = activations.split(",")
    if len(acts) != len(meta) // 4:
        raise ValueError(f"aecomp::packed_mlp: {len(meta) // 4} layers but {len(acts)} activations ({activations!r})")
    kinds = {v: k for k, v in KINDS.items()}
    layers = []
    for i, act in enumerate(acts):
        w, s, b, _ = data[4 * i:4 * i + 4]
        kind, n, k, table = meta[4 * i:4 * i + 4]
        if kind not in kinds:
            raise ValueError(f"aecomp::packed_mlp: layer {i} has kind code {kind}; expected 0 (int8) or 1 (codebook)")
        layers.append(PackedLayer(kinds[kind], n, k, w, s, b if b.numel() else None, act, table=table))
    gdata, gmeta = _gpu_data(layers, x.device)
    return torch.ops.aecomp_triton.packed_mlp(x, gdata, gmeta, activations)


def unpack_weight(layer: PackedLayer) -> torch.Tensor:
    """The CPU layout back to row-major ``[N, K]``: int8 ``q``, or uint8 codes into ``layer.scale``."""
    n, k, g, w = layer.out_features, layer.in_features, _groups(layer.out_features), layer.weight
    if layer.kind == "int8":
        k4 = (k + 3) // 4
        full = w.view(torch.int8).view(g, k4, GROUP, 4).permute(0, 2, 1, 3).reshape(g * GROUP, k4 * 4)
    elif layer.table == 16:
        k2 = (k + 1) // 2
        pairs = torch.stack([w & 15, w >> 4], dim=-1).view(g, k2, GROUP, 2)
        full = pairs.permute(0, 2, 1, 3).reshape(g * GROUP, k2 * 2)
    else:
        full = w.view(g, k, GROUP).permute(0, 2, 1).reshape(g * GROUP, k)
    return full[:n, :k].contiguous()


def packed_mlp(x: torch.Tensor, chain: PackedChain, backend: Optional[str] = None) -> torch.Tensor:
    """``act_L(... act_1(x @ W_1^T + b_1) ...)`` with every ``W_i`` held packed (inference only).

    Runs on the backend chosen for ``x`` (module doc); one op call for the whole chain."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"aecomp::packed_mlp: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(chain, PackedChain):
        raise TypeError(f"aecomp::packed_mlp: chain must be a PackedChain, got {type(chain).__name__}")
    if (backend is None and x.is_cpu and x.dtype == torch.float32 and _STATE["backend"] is None
            and _env_backend() is None):
        # the common CPU call (what automatic selection picks), without the resolution's frames
        if torch.compiler.is_compiling():
            return _cpu_traced(x, chain)
        return chain._handle(x)
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return resolve("packed_mlp", x.device, x.dtype, backend)(x, chain)
    return resolve_fast("packed_mlp", x, backend)(x, chain)


def _cpu_traced(x, chain):
    return torch.ops.aecomp.packed_mlp.default(x, chain.data, chain.meta, chain.activations, chain.compute)


def _cpu_eager(x, chain):
    return chain._handle(x)


def _reference(x: torch.Tensor, chain: PackedChain) -> torch.Tensor:
    """Dequantize-then-GEMM in plain PyTorch (in ``x``'s dtype): the reference backend's packed_mlp."""
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(INFERENCE_ONLY)
    data, meta, acts = chain.gpu_args(x.device)
    h = x
    for i, act in enumerate(acts.split(",")):
        w, s, b = data[3 * i:3 * i + 3]
        if h.shape[-1] != w.shape[1]:
            raise ValueError(f"aecomp::packed_mlp: x must be [..., {w.shape[1]}], got {list(h.shape)}")
        wf = (w.to(s.dtype) * s[:, None]) if meta[2 * i] == KINDS["int8"] else s[w.long()]
        h = torch.nn.functional.linear(h, wf.to(h.dtype), b.to(h.dtype) if meta[2 * i + 1] else None)
        h = torch.relu(h) if act == "relu" else torch.sigmoid(h) if act == "sigmoid" else h
    return h


INFERENCE_ONLY = ("aecomp::packed_mlp: packed ops are inference-only (their weights are integers); no gradient "
                  "flows through them. Call it under torch.no_grad() / torch.inference_mode().")


def check_gpu_args(op: str, x, data, meta, activations: str, dtypes) -> List[int]:
    """The checks of ``aecomp_triton::packed_mlp`` (also its fake): the output width."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    acts = activations.split(",")
    nl = len(acts)
    if len(data) != 3 * nl or len(meta) != 2 * nl:
        raise ValueError(f"{op}: {nl} activations need {3 * nl} tensors and {2 * nl} meta ints, got {len(data)} "
                         f"and {len(meta)}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must be [..., in_features], got shape {list(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{op}: x must be one of {', '.join(str(d) for d in dtypes)}, got {x.dtype} "
                        f"(shape {list(x.shape)})")
    width = x.shape[-1]
    for i, act in enumerate(acts):
        w, s, b = data[3 * i:3 * i + 3]
        kind, has_bias = meta[2 * i], meta[2 * i + 1]
        if act not in ("none", "relu", "sigmoid"):
            raise ValueError(f"{op}: unknown activation {act!r} for layer {i}")
        want = torch.int8 if kind == KINDS["int8"] else torch.uint8
        if kind not in KINDS.values() or w.dim() != 2 or w.dtype != want:
            raise ValueError(f"{op}: layer {i}'s weight must be 2-D {want} for kind code {kind}, got {w.dtype} "
                             f"{list(w.shape)}")
        if w.shape[1] != width:
            raise ValueError(f"{op}: x must be [..., {w.shape[1]}], got {list(x.shape)}" if i == 0 else
                             f"{op}: layer {i} takes {w.shape[1]} inputs but layer {i - 1} gives {width}")
        if kind == KINDS["int8"] and tuple(s.shape) != (w.shape[0],):
            raise ValueError(f"{op}: layer {i}'s scales must be [{w.shape[0]}], got {list(s.shape)}")
        if has_bias and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"{op}: layer {i}'s bias must be [{w.shape[0]}], got {list(b.shape)}")
        for name, t in (("weight", w), ("scale", s), ("bias", b)):
            if t.device != x.device and (name != "bias" or has_bias):
                raise ValueError(f"{op}: layer {i}'s {name} is on {t.device} but x is on {x.device}")
        width = w.shape[0]
    return width


def _register_backends() -> None:
    """Adds packed_mlp to the cpu and reference backends (the triton one adds its own)."""
    cpu = get_backend("cpu")
    cpu.ops["packed_mlp"] = _cpu_traced
    cpu.fast_ops["packed_mlp"] = _cpu_eager
    get_backend("reference").ops["packed_mlp"] = _reference


_DATA_NAMES = ("packed weights", "scale/table", "bias", "colsum")


def register_fake() -> None:
    try:
        torch.ops.aecomp.packed_mlp
    except (AttributeError, RuntimeError):  # an extension built before packed_mlp.cpp existed
        return

    torch.library.impl("aecomp::packed_mlp", "CUDA")(_cuda_impl)

    @torch.library.register_fake("aecomp::packed_mlp")
    def _packed_mlp_fake(x, data, meta, activations, compute):
        if len(meta) < 4 or len(meta) % 4 or len(data) != len(meta):
            raise ValueError(f"aecomp::packed_mlp: expected 4 tensors and 4 meta ints per layer, got {len(data)} "
                             f"tensors and {len(meta)} ints")
        for i, t in enumerate(data):  # the CPU layout: on the CPU (a CUDA x unpacks it) or on x's device
            if t.device != x.device and t.device.type != "cpu":
                raise ValueError(f"aecomp::packed_mlp: layer {i // 4} {_DATA_NAMES[i % 4]} is on {t.device} but x is "
                                 f"on {x.device}")
        k, n = meta[2], meta[-3]
        if x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(f"aecomp::packed_mlp: x must be [..., {k}], got {list(x.shape)}")
        if x.dtype != torch.float32:
            raise TypeError(f"aecomp::packed_mlp: x must be float32, got {x.dtype} (shape {list(x.shape)})")
        return x.new_empty((*x.shape[:-1], n))


_register_backends()
