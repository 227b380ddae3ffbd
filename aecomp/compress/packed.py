"""A compressed classifier that runs compressed: file -> packed in-memory model -> one kernel call.

:func:`load_packed_model` reads a model file and keeps its weights packed in memory, in the
layout the packed-weight kernels read (``aecomp.ops.packed_mlp``, csrc/cpu/packed_mlp.cpp):

==============================================  =============================================
file                                            in memory
==============================================  =============================================
``aecomp-packed/1`` safetensors, int8 values    per layer int8 ``q`` (VNNI block layout) +
(``aecomp.compress.storage``; dense, csr or     per-channel scales + int32 column sums + bias
bitmask -- a pruned layer is held dense int8)
``aecomp-coded`` files (``aecomp.compress.      shared layers: 4-bit or 8-bit codes + the
coding``: shared b-bit codes + codebook, or     codebook table (a pruned layer's zeros are one
int8 layers), or an in-memory ``PackedNet``     more table entry); int8 layers as above
(``aecomp.compress.share``)
==============================================  =============================================

No float32 copy of any weight matrix is made: a sparse int8 layer is decoded straight into its
int8 matrix, then into the kernel layout. A float32 file is refused (it has nothing packed:
quantize it first). ``model(x)`` runs the whole chain in one ``aecomp.ops.packed_mlp`` call;
``compute="auto"`` (default) runs int8 layers on the integer path (dynamic activation
quantization, VNNI) and shared layers in float; ``compute="float"`` gives
dequantize-then-float-GEMM results (no activation rounding).

:attr:`PackedModel.resident_bytes` counts the bytes of every tensor the model holds (packed
weights, scales or codebook tables, biases, column sums): the weights as held in memory, to
put beside the file's bytes.

Pruned layers run dense (int8, zeros included) in the packed kernels: measured
(``benchmarks/bench_inference.py``, sparse part: a 784 -> 300 layer, one thread), torch's CSR
float32 kernel was slower than the dense packed int8 layer at 70% (18x at batch 1, 6.7x at 256)
and at 90% sparsity (7x at batch 1, 2x at 256); no hand-written sparse kernel was written (at
90% a sparse int8 kernel would need to beat a VNNI instruction doing 64 multiply-adds).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

import torch

from .. import ops
from ..ops import PackedChain, codebook_layer, int8_layer

__all__ = ["PackedModel", "load_packed_model", "from_packed_net"]

PathLike = Union[str, "os.PathLike[str]"]


class PackedModel:
    """A classifier whose weights are held packed; ``model(x)`` gives logits ``[..., classes]``."""

    def __init__(self, config: Dict[str, Any], chain: PackedChain, source: str = "", file_bytes: Optional[int] = None,
                 kinds: Optional[List[str]] = None) -> None:
        self.config = config
        self.chain = chain
        self.source = source
        self.file_bytes = file_bytes
        self.kinds = kinds or [layer.kind for layer in chain.layers]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ops.packed_mlp(x, self.chain)

    forward = __call__

    def with_compute(self, compute: str) -> "PackedModel":
        """The same packed weights run with ``compute`` ("auto", "int8" or "float")."""
        return PackedModel(self.config, self.chain.with_compute(compute), self.source, self.file_bytes, self.kinds)

    @property
    def compute(self) -> str:
        return self.chain.compute

    @property
    def resident_bytes(self) -> int:
        """Bytes of the tensors the model holds (the weights as held in memory)."""
        return self.chain.nbytes

    @property
    def in_features(self) -> int:
        return self.chain.in_features

    @property
    def num_classes(self) -> int:
        return self.chain.out_features

    def __repr__(self) -> str:
        shapes = "-".join([str(self.chain.in_features)] + [str(layer.out_features) for layer in self.chain.layers])
        return (f"PackedModel({shapes}, layers={'/'.join(self.kinds)}, compute={self.compute}, "
                f"resident_bytes={self.resident_bytes:,}, file_bytes={self.file_bytes})")


def _activations(config: Dict[str, Any]) -> List[str]:
    if config.get("type") == "compressed":
        return list(config["encoder"]["activations"]) + list(config["head"]["activations"])
    if config.get("type") == "classifier":
        return list(config["activations"])
    raise ValueError(f"a packed model needs a classifier config (compressed or classifier), got type "
                     f"{config.get('type')!r}")


def from_packed_net(net, compute: str = "auto", source: str = "", file_bytes: Optional[int] = None) -> PackedModel:
    """A :class:`PackedModel` from an ``aecomp.compress.share.PackedNet`` (shared and/or int8 layers)."""
    from .share import Int8Linear, SharedLinear

    layers = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Int8Linear):
            layers.append(int8_layer(layer.q, layer.scale, layer.bias, layer.activation))
        elif isinstance(layer, SharedLinear):
            layers.append(codebook_layer(layer.codes, layer.codebook, layer.mask, layer.bias, layer.activation))
        else:
            raise TypeError(f"from_packed_net: layer {i} is a {type(layer).__name__}, expected SharedLinear or "
                            f"Int8Linear")
    return PackedModel(dict(net.config), PackedChain(layers, compute), source, file_bytes)


def _int8_from_storage(path: str, compute: str) -> PackedModel:
    from safetensors import safe_open

    from .storage import StorageError, decode_bitmask, decode_csr, read_header

    header = read_header(path)
    config = header["config"]
    metas = header["layers"]
    try:
        acts = _activations(config)
    except (ValueError, KeyError) as exc:
        raise StorageError(f"{path}: {exc}") from None
    if len(acts) != len(metas):
        raise StorageError(f"{path}: {len(metas)} stored layers but the config describes {len(acts)}")
    layers = []
    with safe_open(path, framework="pt") as fh:
        names = set(fh.keys())

        def get(name: str) -> torch.Tensor:
            if name not in names:
                raise StorageError(f"{path}: tensor '{name}' is missing")
            return fh.get_tensor(name)

        for i, (meta, act) in enumerate(zip(metas, acts)):
            if meta.get("values") != "int8":
                raise StorageError(f"{path}: layer {i} holds {meta.get('values')} weights; the packed path runs int8 "
                                   f"or shared-weight files (quantize the model first: aecomp compress ... int8)")
            shape = meta["shape"]
            enc = meta["encoding"]
            if enc == "dense":
                q = get(f"{i}.q")
            elif enc == "csr":
                q = decode_csr(get(f"{i}.v"), get(f"{i}.c"), get(f"{i}.n"), shape)
            elif enc == "bitmask":
                q = decode_bitmask(get(f"{i}.m"), get(f"{i}.v"), shape)
            else:
                raise StorageError(f"{path}: layer {i} has unknown encoding {enc!r}")
            if q.dtype != torch.int8 or list(q.shape) != list(shape):
                raise StorageError(f"{path}: layer {i} stores {q.dtype} {list(q.shape)}, expected int8 {list(shape)}")
            if i > 0 and shape[1] != metas[i - 1]["shape"][0]:
                raise StorageError(f"{path}: layer {i} takes {shape[1]} inputs but layer {i - 1} gives "
                                   f"{metas[i - 1]['shape'][0]}")
            scale = get(f"{i}.s")
            bias = get(f"{i}.b") if f"{i}.b" in names else None
            try:
                layers.append(int8_layer(q, scale, bias, act))
            except ValueError as exc:
                raise StorageError(f"{path}: layer {i}: {exc}") from None
    return PackedModel(config, PackedChain(layers, compute), path, os.path.getsize(path))


def load_packed_model(path: PathLike, compute: str = "auto") -> PackedModel:
    """Load a model file (``aecomp-packed`` int8 safetensors, or an ``aecomp-coded`` file) packed.

    Raises ``aecomp.compress.storage.StorageError`` / ``aecomp.compress.coding.CodedFileError``
    (both ``ValueError``) naming the file for anything unreadable or inconsistent.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        from .storage import StorageError

        raise StorageError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        from .coding import MAGIC, load_coded
    except ImportError:  # pragma: no cover - the coded format is optional
        MAGIC, load_coded = None, None
    if MAGIC is not None and magic == MAGIC:
        return from_packed_net(load_coded(path), compute, path, os.path.getsize(path))
    return _int8_from_storage(path, compute)
