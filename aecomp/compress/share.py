"""Trained weight sharing (Deep Compression's "trained quantization") and the packed in-memory form.

**The in-memory representation** (what ``aecomp.compress.coding`` files load into, and what
packed-weight inference kernels read). A model is a :class:`PackedNet`: its ``config``
(``aecomp.compress.net.classifier_config``) and one layer object per linear layer, in chain order.
A layer computes ``y = act(x @ W.T + bias)`` with ``W`` of shape ``[out, in]``; ``W`` is held in
one of two forms:

=====================  ==========================================================================
class                  fields (all CPU tensors, contiguous)
=====================  ==========================================================================
:class:`SharedLinear`  ``codes``     uint8 ``[out, in]``, each in ``[0, 2^bits)``; 0 where ``mask`` is False
                       ``codebook``  float32 ``[2^bits]`` (the shared values, sorted ascending)
                       ``mask``      bool ``[out, in]`` (True = weight kept) or ``None`` (dense)
                       ``bias``      float32 ``[out]`` or ``None``;  ``bits`` int in 2..8;
                       ``activation`` ``"relu" | "sigmoid" | "none"``
                       ``W[r, c] = codebook[codes[r, c]] if mask[r, c] else 0``
:class:`Int8Linear`    ``q``  int8 ``[out, in]`` (in [-127, 127], 0 where pruned), ``scale`` float32
                       ``[out]``, ``bias``, ``activation``;  ``W[r, c] = q[r, c] * scale[r]``
                       (``aecomp.compress.quantize``'s per-channel int8)
=====================  ==========================================================================

``SharedLinear.packed_codes()`` gives the codes bit-packed tightly: the row-major sequence of
``out * in`` codes, ``bits`` bits each, least significant bit first, concatenated into bytes
(code ``k`` occupies bits ``k*bits .. k*bits+bits-1`` of the little-endian bit stream), so the
stream takes ``ceil(out * in * bits / 8)`` bytes; :func:`unpack_codes` inverts it.
``PackedNet.to_model()`` builds the float32 ``CompressedNet`` / ``FusedMLP`` with exactly
``dense_weight()`` as weights (what the accuracy in the report is measured on).

**Weight sharing** (Han, Mao, Dally, ICLR 2016, section 3). For each layer, over the surviving
weights ``w_1..w_n`` (the nonzeros when pruned), k-means with ``K = 2^b`` centroids minimising
``sum_i min_k (w_i - c_k)^2``, initialised linearly ``c_k = min w + k (max w - min w) / (K - 1)``
(the paper found linear init best: it keeps the rare large weights, which matter most); Lloyd
iterations in 1-D (assignment by the midpoints of sorted centroids, ``torch.bucketize``); an
empty cluster keeps its centroid. Then **codebook fine-tuning**: the network runs with
``W = codebook[codes] * mask``; by the chain rule

    dL/dc_k = sum over (r, c) with codes[r, c] = k and mask[r, c] of dL/dW[r, c],

which is what autograd gives through the gather ``codebook[codes]`` (its backward is an
index_add), so :class:`SharedNet` trains codebooks (and biases) with the ordinary optimizer while
codes and masks stay fixed -- pruned weights stay exactly zero.

Stored values: codebooks and biases are rounded to float16 by :func:`finalize` (the file keeps
them as float16), so the in-memory model and the file hold bit-identical weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .. import ops
from .entropy import pack_fixed, unpack_fixed
from .net import build_model, classifier_config, linear_layers
from .quantize import dequantize_per_channel, quantize_per_channel

__all__ = [
    "BITS",
    "choose_bits",
    "Int8Linear",
    "PackedNet",
    "SharedLinear",
    "SharedNet",
    "finalize",
    "kmeans_1d",
    "pack_codes",
    "share_model",
    "share_weights",
    "trainable_layers",
    "unpack_codes",
]

BITS = range(2, 9)


def _check_bits(bits) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"weight sharing: bits must be an integer in 2..8, got {bits!r}")
    return bits


# ---------------------------------------------------------------------- bit packing
def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 ``[ceil(numel * bits / 8)]``: the flattened (row-major) codes, ``bits`` each, LSB first."""
    bits = _check_bits(bits)
    flat = codes.reshape(-1).to(torch.uint8).numpy()
    if flat.size and int(flat.max()) >= (1 << bits):
        raise ValueError(f"pack_codes: a code is {int(flat.max())}, which does not fit in {bits} bits")
    return torch.from_numpy(pack_fixed(flat, bits))


def unpack_codes(packed: torch.Tensor, bits: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 codes of ``shape``."""
    bits = _check_bits(bits)
    n = int(np.prod(shape)) if len(shape) else 1
    need = (n * bits + 7) // 8
    if packed.numel() != need:
        raise ValueError(f"unpack_codes: {packed.numel()} bytes for {n} codes of {bits} bits, expected {need}")
    codes = unpack_fixed(packed.to(torch.uint8).numpy(), bits, n)
    return torch.from_numpy(codes).view(*[int(s) for s in shape])


# ---------------------------------------------------------------------- the in-memory form
@dataclass
class SharedLinear:
    """A linear layer with shared weights: ``W = where(mask, codebook[codes], 0)`` (module docstring)."""

    codes: torch.Tensor
    codebook: torch.Tensor
    bits: int
    mask: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    activation: str = "none"

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.codes.dim() != 2 or self.codes.dtype != torch.uint8:
            raise ValueError(f"SharedLinear: codes must be uint8 [out, in], got {self.codes.dtype} "
                             f"{list(self.codes.shape)}")
        if self.codebook.shape != (1 << self.bits,):
            raise ValueError(f"SharedLinear: codebook must have shape [{1 << self.bits}] for {self.bits} bits, "
                             f"got {list(self.codebook.shape)}")
        if self.mask is not None and (self.mask.shape != self.codes.shape or self.mask.dtype != torch.bool):
            raise ValueError(f"SharedLinear: mask must be bool {list(self.codes.shape)}, got {self.mask.dtype} "
                             f"{list(self.mask.shape)}")
        if self.bias is not None and self.bias.shape != (self.codes.shape[0],):
            raise ValueError(f"SharedLinear: bias must have shape [{self.codes.shape[0]}], got {list(self.bias.shape)}")

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def dense_weight(self) -> torch.Tensor:
        w = self.codebook.float()[self.codes.long()]
        return w * self.mask if self.mask is not None else w

    def packed_codes(self) -> torch.Tensor:
        return pack_codes(self.codes, self.bits)

    def nnz(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else self.codes.numel()


@dataclass
class Int8Linear:
    """A linear layer with per-channel int8 weights: ``W = q * scale[:, None]``."""

    q: torch.Tensor
    scale: torch.Tensor
    bias: Optional[torch.Tensor] = None
    activation: str = "none"

    def __post_init__(self) -> None:
        if self.q.dim() != 2 or self.q.dtype != torch.int8:
            raise ValueError(f"Int8Linear: q must be int8 [out, in], got {self.q.dtype} {list(self.q.shape)}")
        if self.scale.shape != (self.q.shape[0],):
            raise ValueError(f"Int8Linear: scale must have shape [{self.q.shape[0]}], got {list(self.scale.shape)}")

    @property
    def shape(self):
        return tuple(self.q.shape)

    @property
    def mask(self) -> torch.Tensor:
        return self.q != 0

    def dense_weight(self) -> torch.Tensor:
        return dequantize_per_channel(self.q, self.scale)

    def nnz(self) -> int:
        return int((self.q != 0).sum())


PackedLayer = Union[SharedLinear, Int8Linear]


@dataclass
class PackedNet:
    """A whole classifier in packed form: ``config`` + one :data:`PackedLayer` per linear layer."""

    config: Dict[str, Any]
    layers: List[PackedLayer] = field(default_factory=list)

    def to_model(self, backend: Optional[str] = None) -> nn.Module:
        """The float32 model (CompressedNet / FusedMLP) whose weights are each layer's ``dense_weight()``."""
        model = build_model(self.config, backend=backend)
        mods = linear_layers(model)
        if len(mods) != len(self.layers):
            raise ValueError(f"PackedNet: {len(self.layers)} layers but the config describes {len(mods)}")
        with torch.no_grad():
            for m, layer in zip(mods, self.layers):
                w = layer.dense_weight()
                if tuple(w.shape) != tuple(m.weight.shape):
                    raise ValueError(f"PackedNet: a layer holds {list(w.shape)}, the config wants "
                                     f"{list(m.weight.shape)}")
                m.weight.copy_(w)
                if m.bias is not None:
                    if layer.bias is None:
                        raise ValueError("PackedNet: the config has biases but a layer holds none")
                    m.bias.copy_(layer.bias)
        return model.eval()

    def nnz(self) -> int:
        return sum(layer.nnz() for layer in self.layers)


# ---------------------------------------------------------------------- k-means
def kmeans_1d(values: torch.Tensor, k: int, iters: int = 30) -> torch.Tensor:
    """Lloyd's k-means on scalars with linear initialisation; returns the sorted centroids ``[k]``.

    An empty cluster keeps its centroid; stops early when no centroid moves.
    """
    v = values.detach().double().reshape(-1)
    if v.numel() == 0:
        return torch.zeros(k, dtype=torch.float32)
    lo, hi = float(v.min()), float(v.max())
    c = torch.linspace(lo, hi, k, dtype=torch.float64)
    for _ in range(iters):
        idx = assign(v, c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, v)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, torch.ones_like(v))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        new, _ = new.sort()
        if torch.equal(new, c):
            break
        c = new
    return c.float()


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the (sorted) ``centroids`` for each value (ties: the lower one)."""
    c = centroids.to(values.dtype)
    if c.numel() == 1:
        return torch.zeros(values.shape, dtype=torch.long)
    mids = (c[1:] + c[:-1]) / 2
    return torch.bucketize(values, mids, right=False)


def share_weights(weight: torch.Tensor, bits: int, mask: Optional[torch.Tensor] = None, bias=None,
                  activation: str = "none", iters: int = 30) -> SharedLinear:
    """k-means the (kept) entries of ``weight`` into ``2^bits`` shared values."""
    bits = _check_bits(bits)
    w = weight.detach().float().cpu()
    m = None if mask is None else mask.detach().cpu().bool()
    kept = w[m] if m is not None else w.reshape(-1)
    cb = kmeans_1d(kept, 1 << bits, iters)
    codes = assign(w, cb).to(torch.uint8)
    if m is not None:
        codes = codes * m.to(torch.uint8)
    b = None if bias is None else bias.detach().float().cpu().clone()
    return SharedLinear(codes.contiguous(), cb.contiguous(), bits, m, b, activation)


def share_model(model: nn.Module, bits: Union[int, Sequence[int]], pruned: Optional[bool] = None,
                iters: int = 30) -> PackedNet:
    """The :class:`PackedNet` of ``model`` with every layer shared at ``bits`` (one width for all
    layers, or one per layer).

    ``pruned`` (default: whether any weight is exactly zero) keeps the zero weights out of the
    clustering and in the mask.
    """
    layers = []
    mods = linear_layers(model)
    widths = [bits] * len(mods) if isinstance(bits, int) else list(bits)
    if len(widths) != len(mods):
        raise ValueError(f"share_model: {len(widths)} bit widths for {len(mods)} layers")
    if pruned is None:
        pruned = any(bool((m.weight == 0).any()) for m in mods)
    for m, b in zip(mods, widths):
        mask = (m.weight != 0) if pruned else None
        layers.append(share_weights(m.weight, b, mask, m.bias, m.activation, iters))
    return PackedNet(classifier_config(model), layers)


@torch.no_grad()
def choose_bits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: float = 0.5,
                bits: Sequence[int] = tuple(BITS), pruned: Optional[bool] = None) -> List[int]:
    """Per layer, the fewest bits whose k-means sharing of that layer alone (the others float32)
    costs at most ``points`` of accuracy on ``(x, y)`` against the float32 model -- a sensitivity
    measurement on the training split (quantization noise, not generalization), so no held-out
    split is spent. A layer that no width in ``bits`` keeps within ``points`` gets the widest."""
    from .net import accuracy

    mods = linear_layers(model)
    if pruned is None:
        pruned = any(bool((m.weight == 0).any()) for m in mods)
    ref = accuracy(model, x, y)
    out = []
    for m in mods:
        w0 = m.weight.detach().clone()
        mask = (w0 != 0) if pruned else None
        pick = max(bits)
        for b in sorted(bits):
            m.weight.copy_(share_weights(w0, b, mask).dense_weight().to(w0.dtype))
            ok = accuracy(model, x, y) >= ref - points
            m.weight.copy_(w0)
            if ok:
                pick = b
                break
        out.append(int(pick))
    return out


def trainable_layers(model: nn.Module) -> List[bool]:
    """Per linear layer of ``model``, whether its weight trains (``requires_grad``): False for
    the encoder layers of a frozen CompressedNet."""
    return [bool(m.weight.requires_grad) for m in linear_layers(model)]


def int8_model(model: nn.Module) -> PackedNet:
    """The :class:`PackedNet` of ``model`` with per-channel int8 weights (zeros stay zeros)."""
    layers = []
    for m in linear_layers(model):
        q, s = quantize_per_channel(m.weight)
        b = None if m.bias is None else m.bias.detach().float().cpu().clone()
        layers.append(Int8Linear(q.contiguous(), s, b, m.activation))
    return PackedNet(classifier_config(model), layers)


def _round16(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().float().cpu().half().float().contiguous()


def finalize(net: PackedNet) -> PackedNet:
    """Round codebooks, int8 scales and biases to the float16 values the file stores (in place)."""
    for layer in net.layers:
        if isinstance(layer, SharedLinear):
            layer.codebook = _round16(layer.codebook)
        layer.bias = _round16(layer.bias)
    return net


# ---------------------------------------------------------------------- codebook fine-tuning
class SharedNet(nn.Module):
    """A trainable view of a :class:`PackedNet` of :class:`SharedLinear` layers.

    Parameters: ``codebooks.<i>`` (and ``biases.<i>``); buffers: ``codes_<i>``, ``mask_<i>``.
    ``trainable[i] = False`` keeps layer ``i``'s codebook and bias fixed (a frozen encoder).
    ``forward`` builds ``W_i = codebook_i[codes_i] * mask_i`` and runs the chain as one
    ``aecomp.ops.mlp`` call, so autograd sums each centroid's weights' gradients.
    """

    def __init__(self, packed: PackedNet, backend: Optional[str] = None, train_bias: bool = True,
                 trainable: Optional[Sequence[bool]] = None) -> None:
        super().__init__()
        if not all(isinstance(layer, SharedLinear) for layer in packed.layers):
            raise TypeError("SharedNet: every layer must be a SharedLinear")
        n = len(packed.layers)
        trainable = [True] * n if trainable is None else [bool(t) for t in trainable]
        if len(trainable) != n:
            raise ValueError(f"SharedNet: trainable has {len(trainable)} entries for {n} layers")
        self.config = copy.deepcopy(packed.config)
        self.backend = backend
        self.activations = [layer.activation for layer in packed.layers]
        self.bits = [layer.bits for layer in packed.layers]
        self.codebooks = nn.ParameterList([nn.Parameter(layer.codebook.clone(), requires_grad=t)
                                           for layer, t in zip(packed.layers, trainable)])
        self.has_bias = packed.layers[0].bias is not None
        self.biases = nn.ParameterList([nn.Parameter(layer.bias.clone(), requires_grad=train_bias and t)
                                        for layer, t in zip(packed.layers, trainable)] if self.has_bias else [])
        for i, layer in enumerate(packed.layers):
            self.register_buffer(f"codes_{i}", layer.codes.long().clone())
            mask = layer.mask if layer.mask is not None else torch.ones_like(layer.codes, dtype=torch.bool)
            self.register_buffer(f"mask_{i}", mask.float())
        self.pruned = [layer.mask is not None for layer in packed.layers]

    def weights(self) -> List[torch.Tensor]:
        return [cb[getattr(self, f"codes_{i}")] * getattr(self, f"mask_{i}") for i, cb in enumerate(self.codebooks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        biases = list(self.biases) if self.has_bias else [None] * len(self.codebooks)
        return ops.mlp(x, self.weights(), biases, self.activations, backend=self.backend)

    def to_packed(self) -> PackedNet:
        layers = []
        for i, cb in enumerate(self.codebooks):
            # keep the codebook sorted so codes stay "ordered by value" (relabel the codes)
            values, order = cb.detach().float().cpu().sort()
            relabel = torch.empty_like(order)
            relabel[order] = torch.arange(order.numel())
            mask = getattr(self, f"mask_{i}").bool().cpu() if self.pruned[i] else None
            codes = relabel[getattr(self, f"codes_{i}").cpu()].to(torch.uint8)
            if mask is not None:
                codes = codes * mask.to(torch.uint8)
            bias = self.biases[i].detach().float().cpu().clone() if self.has_bias else None
            layers.append(SharedLinear(codes.contiguous(), values.contiguous(), self.bits[i], mask, bias,
                                       self.activations[i]))
        return PackedNet(copy.deepcopy(self.config), layers)


def finetune_codebooks(packed: PackedNet, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10,
                       lr: float = 1e-3, backend: Optional[str] = None,
                       trainable: Optional[Sequence[bool]] = None, **fit_kw) -> PackedNet:
    """Fine-tune codebooks and biases with codes and masks fixed (``fit_kw``: ``fit_classifier``'s
    options, e.g. ``x_val``, ``y_val``, ``batch_size``, ``seed``, ``distill``); ``trainable``:
    per layer, whether it trains (default: all; :func:`trainable_layers` of the source model);
    returns the finalized (float16-rounded) result."""
    from .net import fit_classifier

    net = SharedNet(packed, backend=backend, trainable=trainable)
    if epochs > 0:
        fit_classifier(net, x, y, epochs=epochs, lr=lr, **fit_kw)
    return finalize(net.to_packed())
