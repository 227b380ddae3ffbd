"""The file that really holds a (compressed) classifier: safetensors, dense or sparse, float32 or int8.

A *packed* file stores the chain of linear layers of a ``CompressedNet`` or a ``FusedMLP``
classifier. Per layer ``i`` (weight ``W`` of shape ``[out, in]``, bias ``b``):

=============  ===============================================================================
encoding       tensors
=============  ===============================================================================
``dense``      ``i.w`` float32 ``[out, in]``; or, for int8, ``i.q`` int8 ``[out, in]``
``csr``        ``i.v`` the nonzero values in row-major order (float32, or int8 ``q``), ``i.c``
               their column indices, ``i.n`` the number of nonzeros in each row (``[out]``)
``bitmask``    ``i.m`` one bit per entry of ``W`` (row-major, packed 8 to a byte, bit ``k`` of a
               byte is entry ``8 * byte + k``), ``i.v`` the nonzero values in the same order
=============  ===============================================================================

plus ``i.s`` (float32 ``[out]``, the per-channel scales ``s_r``) for int8 values, and ``i.b``
(float32 ``[out]``). Index tensors use the narrowest integer type that holds them: ``uint8``
for columns when ``in <= 256``, else ``int16`` when ``in <= 32768``, else ``int32``; the row
counts likewise (``uint8`` when ``in <= 255``). A sparse layer takes whichever of ``csr`` and
``bitmask`` is smaller: per nonzero, csr pays the column index (8 or 16 bits), the bitmask pays
one bit per entry of ``W``, so the bitmask wins below ~88% (uint8) / ~94% (int16) sparsity.

The file's metadata (``__metadata__["aecomp"]``) is JSON: ``format``, the model ``config``
(``aecomp.compress.net.classifier_config``) and each layer's ``shape``, ``encoding`` and
``values``. Loading rebuilds the model from the config and fills in the decoded (for int8:
dequantized, ``q * s``) weights, so it runs with the fused float32 ops.

``bytes`` of a model = ``os.path.getsize`` of this file (header included), never a count of
parameters times four.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .net import as_chain, build_model, classifier_config, linear_layers
from .quantize import dequantize_per_channel, quantize_per_channel

__all__ = [
    "FORMAT",
    "StorageError",
    "decode_bitmask",
    "decode_csr",
    "encode_bitmask",
    "encode_csr",
    "index_dtype",
    "load_packed",
    "macs",
    "pack",
    "payload_bytes",
    "read_header",
    "save_float32",
    "save_packed",
]

FORMAT = "aecomp-packed/1"
VALUES = ("float32", "int8")


class StorageError(ValueError):
    """A packed file that cannot be read: not safetensors, not ours, or inconsistent."""


def index_dtype(limit: int, unsigned_ok: bool = True) -> torch.dtype:
    """The narrowest integer dtype holding every value in ``[0, limit)``."""
    if unsigned_ok and limit <= 256:
        return torch.uint8
    if limit <= 32768:
        return torch.int16
    return torch.int32


# ---------------------------------------------------------------------- sparse encodings
def encode_csr(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values [nnz], columns [nnz], row_counts [out])`` of the nonzeros of ``w``, row-major."""
    out, inn = w.shape
    nz = w != 0
    rows, cols = nz.nonzero(as_tuple=True)  # row-major order
    counts = nz.sum(dim=1)
    return (w[rows, cols].contiguous(), cols.to(index_dtype(inn)).contiguous(),
            counts.to(index_dtype(inn + 1)).contiguous())


def decode_csr(values: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, shape) -> torch.Tensor:
    out, inn = int(shape[0]), int(shape[1])
    counts64 = counts.long()
    if counts64.numel() != out or int(counts64.sum()) != values.numel() or cols.numel() != values.numel():
        raise StorageError(f"csr layer of shape {[out, inn]}: {values.numel()} values, {cols.numel()} columns and "
                           f"row counts summing to {int(counts64.sum())} do not agree")
    rows = torch.repeat_interleave(torch.arange(out), counts64)
    cols64 = cols.long()
    if cols64.numel() and (int(cols64.min()) < 0 or int(cols64.max()) >= inn):
        raise StorageError(f"csr layer of shape {[out, inn]}: a column index is out of range")
    w = torch.zeros(out, inn, dtype=values.dtype)
    w[rows, cols64] = values
    return w


def encode_bitmask(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(bits uint8 [ceil(numel / 8)], values [nnz])``; bit ``k`` of byte ``j`` is entry ``8j + k``."""
    flat = w.reshape(-1)
    nz = flat != 0
    bits = np.packbits(nz.numpy(), bitorder="little")
    return torch.from_numpy(bits), flat[nz].contiguous()


def decode_bitmask(bits: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    n = int(shape[0]) * int(shape[1])
    if bits.numel() != (n + 7) // 8:
        raise StorageError(f"bitmask layer of shape {list(shape)}: {bits.numel()} mask bytes, expected {(n + 7) // 8}")
    nz = torch.from_numpy(np.unpackbits(bits.numpy(), count=n, bitorder="little").astype(bool))
    if int(nz.sum()) != values.numel():
        raise StorageError(f"bitmask layer of shape {list(shape)}: the mask marks {int(nz.sum())} entries but "
                           f"{values.numel()} values are stored")
    flat = torch.zeros(n, dtype=values.dtype)
    flat[nz] = values
    return flat.view(int(shape[0]), int(shape[1]))


def _nbytes(tensors: Dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ---------------------------------------------------------------------- pack / unpack
def _pack_layer(i: int, weight: torch.Tensor, bias: Optional[torch.Tensor], values: str,
                sparse: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    w = weight.detach().float().cpu()
    tensors: Dict[str, torch.Tensor] = {}
    if values == "int8":
        q, s = quantize_per_channel(w)
        stored = q  # int8 values; zeros of w stay zeros of q
        tensors[f"{i}.s"] = s
    else:
        stored = w
    meta: Dict[str, Any] = {"shape": list(w.shape), "values": values}
    if not sparse:
        tensors[f"{i}.{'q' if values == 'int8' else 'w'}"] = stored.contiguous()
        meta["encoding"] = "dense"
    else:
        v, c, n = encode_csr(stored)
        csr = {f"{i}.v": v, f"{i}.c": c, f"{i}.n": n}
        bits, v2 = encode_bitmask(stored)
        bitmask = {f"{i}.m": bits, f"{i}.v": v2}
        if _nbytes(csr) <= _nbytes(bitmask):
            tensors.update(csr)
            meta["encoding"] = "csr"
        else:
            tensors.update(bitmask)
            meta["encoding"] = "bitmask"
        meta["nnz"] = int(v.numel())
    if bias is not None:
        tensors[f"{i}.b"] = bias.detach().float().cpu().contiguous()
    return tensors, meta


def pack(model: nn.Module, values: str = "float32", sparse: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and metadata of the packed file of ``model`` (CompressedNet or FusedMLP)."""
    if values not in VALUES:
        raise ValueError(f"pack: values must be one of {', '.join(VALUES)}, got {values!r}")
    model = as_chain(model)  # an (accelerated) Sequential classifier
    tensors: Dict[str, torch.Tensor] = {}
    layers: List[Dict[str, Any]] = []
    for i, layer in enumerate(linear_layers(model)):
        t, meta = _pack_layer(i, layer.weight, layer.bias, values, sparse)
        tensors.update(t)
        layers.append(meta)
    header = {"format": FORMAT, "config": classifier_config(model), "layers": layers}
    return tensors, {"aecomp": json.dumps(header, separators=(",", ":"))}


def payload_bytes(model: nn.Module, values: str = "float32", sparse: bool = False) -> int:
    """Bytes of the tensors a packed file of ``model`` holds (the file adds a small JSON header)."""
    return _nbytes(pack(model, values, sparse)[0])


def save_packed(model: nn.Module, path, values: str = "float32", sparse: bool = False) -> int:
    """Write ``model`` packed to ``path`` (safetensors); returns ``os.path.getsize(path)``."""
    from safetensors.torch import save_file

    tensors, metadata = pack(model, values, sparse)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return os.path.getsize(path)


def save_float32(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> int:
    """Write plain float32 tensors (e.g. the PCA baseline's) to ``path``; returns its size in bytes."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return os.path.getsize(path)


def read_header(path) -> Dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise StorageError(f"{path}: not a readable safetensors file ({exc})") from None
    if "aecomp" not in meta:
        raise StorageError(f"{path}: a safetensors file, but not a packed aecomp model (no 'aecomp' metadata)")
    try:
        header = json.loads(meta["aecomp"])
    except json.JSONDecodeError as exc:
        raise StorageError(f"{path}: the 'aecomp' metadata is not JSON ({exc})") from None
    if header.get("format") != FORMAT:
        raise StorageError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    return header


def load_packed(path, backend: Optional[str] = None) -> nn.Module:
    """Rebuild the model of a packed file with decoded (int8: dequantized) float32 weights."""
    from safetensors.torch import load_file

    header = read_header(path)
    tensors = load_file(str(path))
    model = build_model(header["config"], backend=backend)
    layers = linear_layers(model)
    metas = header["layers"]
    if len(metas) != len(layers):
        raise StorageError(f"{path}: {len(metas)} stored layers but the config describes {len(layers)}")
    try:
        with torch.no_grad():
            for i, (layer, meta) in enumerate(zip(layers, metas)):
                shape = meta["shape"]
                enc = meta["encoding"]
                if enc == "dense":
                    stored = tensors[f"{i}.q"] if meta["values"] == "int8" else tensors[f"{i}.w"]
                elif enc == "csr":
                    stored = decode_csr(tensors[f"{i}.v"], tensors[f"{i}.c"], tensors[f"{i}.n"], shape)
                elif enc == "bitmask":
                    stored = decode_bitmask(tensors[f"{i}.m"], tensors[f"{i}.v"], shape)
                else:
                    raise StorageError(f"{path}: layer {i} has unknown encoding {enc!r}")
                w = dequantize_per_channel(stored, tensors[f"{i}.s"]) if meta["values"] == "int8" else stored.float()
                if list(w.shape) != list(layer.weight.shape):
                    raise StorageError(f"{path}: layer {i} stores shape {list(w.shape)}, the model wants "
                                       f"{list(layer.weight.shape)}")
                layer.weight.copy_(w)
                if layer.bias is not None:
                    layer.bias.copy_(tensors[f"{i}.b"])
    except KeyError as exc:
        raise StorageError(f"{path}: tensor {exc} is missing") from None
    return model.eval()


def macs(model: nn.Module, sparse: bool = False) -> int:
    """Multiply-adds per sample of the linear chain: ``sum in*out`` (dense) or the number of
    nonzero weights (sparse)."""
    total = 0
    for layer in linear_layers(model):
        total += int((layer.weight != 0).sum()) if sparse else layer.weight.numel()
    return total
