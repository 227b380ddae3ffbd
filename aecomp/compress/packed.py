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
quantize it first). Files are read by their format's one reader
(``aecomp.compress.modelfile.read_model``), which verifies the checksum.

**Inputs are raw.** ``model(x)`` takes the values the user's data holds -- uint8 / int pixels or
float values, ``[..., features]`` -- and applies the file's own input scaling
``x' = (x - shift) / scale`` (``model.input_scaling``, fitted on the training split by
``aecomp.data``) in float32, exactly as ``aecomp.data.load`` scaled the data the model was
evaluated on; then the whole chain runs in one ``aecomp.ops.packed_mlp`` call. A file without a
recorded scaling (format version 1) takes float inputs as they are and refuses integer ones.
``model.forward_scaled(x)`` takes already-scaled float32 inputs (what ``aecomp.data`` splits
hold). Complex inputs are refused. Logits column ``i`` is class ``i``, whose original label is
``model.labels[i]`` (the file's label map; ``None``: the label is ``i``); ``model.predict(x)``
returns the original labels. ``compute="auto"`` (default) runs int8 layers on the integer path
(dynamic activation quantization, VNNI) and shared layers in float; ``compute="float"`` gives
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
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .. import ops
from ..ops import PackedChain, codebook_layer, int8_layer
from .modelfile import FileMeta, StorageError, prepare_input, read_model

__all__ = ["PackedModel", "load_packed_model", "from_packed_net"]

PathLike = Union[str, "os.PathLike[str]"]


class PackedModel:
    """A classifier whose weights are held packed; ``model(x)`` gives logits ``[..., classes]``
    from raw inputs (see the module docstring)."""

    def __init__(self, config: Dict[str, Any], chain: PackedChain, source: str = "", file_bytes: Optional[int] = None,
                 kinds: Optional[List[str]] = None, meta: Optional[FileMeta] = None) -> None:
        self.config = config
        self.chain = chain
        self.source = source
        self._where = f"PackedModel({os.path.basename(source) or 'in memory'})"  # for errors; made once
        self.file_bytes = file_bytes
        self.kinds = kinds or [layer.kind for layer in chain.layers]
        self.meta = meta

    @property
    def input_scaling(self):
        """The file's ``aecomp.data.Preprocessing`` (None: not recorded)."""
        return self.meta.scaling if self.meta is not None else None

    @property
    def labels(self) -> Optional[Tuple[int, ...]]:
        """The original label of each class (None: class ``i`` is label ``i``)."""
        return self.meta.labels if self.meta is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ops.packed_mlp(prepare_input(x, self.input_scaling, self.in_features, self._where), self.chain)

    forward = __call__

    def forward_scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of inputs already scaled as in training (float32, ``[..., features]``)."""
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            raise TypeError(f"PackedModel.forward_scaled: x has dtype {x.dtype}; it takes float32 inputs already "
                            f"scaled as in training (raw integer pixels go to model(x), which scales them)")
        return ops.packed_mlp(x, self.chain)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The original label (int64) of the most likely class of each raw input."""
        idx = self(x).argmax(-1)
        if self.labels is None:
            return idx
        return torch.tensor(self.labels, dtype=torch.int64, device=idx.device)[idx]

    def with_compute(self, compute: str) -> "PackedModel":
        """The same packed weights run with ``compute`` ("auto", "int8" or "float")."""
        return PackedModel(self.config, self.chain.with_compute(compute), self.source, self.file_bytes, self.kinds,
                           self.meta)

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


def from_packed_net(net, compute: str = "auto", source: str = "", file_bytes: Optional[int] = None,
                    meta: Optional[FileMeta] = None) -> PackedModel:
    """A :class:`PackedModel` from an ``aecomp.compress.share.PackedNet`` (shared and/or int8 layers);
    ``meta`` (a ``modelfile.FileMeta``) gives its input scaling and labels."""
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
    return PackedModel(dict(net.config), PackedChain(layers, compute), source, file_bytes, meta=meta)


def load_packed_model(path: PathLike, compute: str = "auto") -> PackedModel:
    """Load a model file (``aecomp-packed`` int8 safetensors, or an ``aecomp-coded`` file) packed.

    Raises a ``aecomp.compress.modelfile.ModelFileError`` (``StorageError`` / ``CodedFileError``,
    all ``ValueError``) naming the file and its format for anything unreadable, damaged or
    inconsistent.
    """
    path = os.fspath(path)
    stored = read_model(path)
    if not hasattr(stored, "packed_net"):
        raise StorageError(f"{path}: an {stored.meta.name} file (an autoencoder's or PCA's tensors), not a classifier "
                           f"the packed path runs")
    net = stored.packed_net()
    try:
        return from_packed_net(net, compute, path, stored.file_bytes, stored.meta)
    except ValueError as exc:
        raise StorageError(f"{path} ({stored.meta.name}): {str(exc).splitlines()[0]}") from None
