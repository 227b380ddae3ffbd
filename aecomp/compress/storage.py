"""Model files in safetensors: the ``aecomp-packed`` classifier files and the ``aecomp-tensors`` files.

**aecomp-packed** stores the chain of linear layers of a ``CompressedNet`` or a ``FusedMLP``
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

**aecomp-tensors** stores named float32 tensors of any other model: an autoencoder's state_dict
(``config`` = its ``models.build`` config) or the PCA baseline's buffers (``mean``,
``components``, ``weight``, ``bias``; ``config`` ``{"type": "pca"}``).

The safetensors metadata of both (format version 2) is ``aecomp``: compact JSON
``{"format", "version": 2, "config", "layers" (packed only), "input", "labels"}`` and
``aecomp_crc32``: the checksum (``aecomp.compress.modelfile``: CRC-32 of the ``aecomp`` text, then
of each tensor's name, dtype, shape and bytes in name order). ``input`` is the input scaling
(``modelfile.scaling_header``; per-feature arrays are the tensors ``input.shift`` and
``input.scale``), ``labels`` the label map (``null``: classes 0..k-1). Version 1 files
(``"format": "aecomp-packed/1"``, or an autoencoder file whose ``aecomp`` holds only a ``config``)
load with a ``LegacyFormatWarning``.

One reader: :func:`read_bytes` (``read_packed`` / ``read_tensors`` for a path) gives a
:class:`StoredModel` (the decoded layers: int8 ``q`` + scales, or float32 ``W``) or a
:class:`StoredTensors`; :func:`load_packed` is ``read_packed(path).to_model()``, the float32
model with dequantized (``q * s``) weights on *scaled* inputs, which runs with the fused float32
ops. ``aecomp.compress.packed`` and ``aecomp.compress.export`` read through the same reader.

``bytes`` of a model = ``os.path.getsize`` of this file (header included), never a count of
parameters times four. Shared-weight and entropy-coded models live in a different single file,
``aecomp.compress.coding`` (``.aecc``). Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .modelfile import (FileMeta, StorageError, as_labels, as_scaling, chain_activations, check_labels_fit,
                        labels_list, scaling_from_header, scaling_header, sniff, warn_legacy)
from .net import as_chain, build_model, classifier_config, linear_layers
from .quantize import dequantize_per_channel, quantize_per_channel

__all__ = [
    "FORMAT",
    "LEGACY_FORMAT",
    "StorageError",
    "StoredLayer",
    "StoredModel",
    "StoredTensors",
    "TENSORS_FORMAT",
    "VERSION",
    "decode_bitmask",
    "decode_csr",
    "encode_bitmask",
    "encode_csr",
    "index_dtype",
    "load_packed",
    "macs",
    "pack",
    "payload_bytes",
    "read_bytes",
    "read_header",
    "read_packed",
    "read_tensors",
    "save_float32",
    "save_packed",
]

FORMAT = "aecomp-packed"
TENSORS_FORMAT = "aecomp-tensors"
VERSION = 2
LEGACY_FORMAT = "aecomp-packed/1"
CRC_KEY = "aecomp_crc32"
VALUES = ("float32", "int8")
SCALING_TENSORS = {"shift": "input.shift", "scale": "input.scale"}


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


# ---------------------------------------------------------------------- checksum and the file itself
def checksum(text: str, tensors: Dict[str, torch.Tensor]) -> int:
    """CRC-32 of ``text`` and of each tensor's name, dtype, shape and bytes, in name order."""
    crc = zlib.crc32(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        crc = zlib.crc32(f"\0{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode("utf-8"), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


def _file_header(fmt: str, config: Any, scaling: Any, labels: Any,
                 tensors: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """The common part of a version-2 header; adds per-feature scaling arrays to ``tensors``."""
    inp, arrays = scaling_header(as_scaling(scaling, "save: scaling"))
    for key, t in arrays.items():
        tensors[SCALING_TENSORS[key]] = t
    return {"format": fmt, "version": VERSION, "config": config, "input": inp,
            "labels": labels_list(as_labels(labels, "save: labels"))}


def _write(path, tensors: Dict[str, torch.Tensor], header: Dict[str, Any]) -> int:
    """Write a version-2 file atomically; returns its size in bytes."""
    from safetensors.torch import save

    from ..train.checkpoint import atomic_write

    text = json.dumps(header, separators=(",", ":"))
    metadata = {"aecomp": text, CRC_KEY: f"{checksum(text, tensors):08x}"}
    data = save(tensors, metadata=metadata)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)
    return os.path.getsize(path)


# ---------------------------------------------------------------------- pack / write
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


def pack(model: nn.Module, values: str = "float32", sparse: bool = False, *, scaling: Any = None,
         labels: Any = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(tensors, header)`` of the packed file of ``model`` (CompressedNet or FusedMLP)."""
    if values not in VALUES:
        raise ValueError(f"pack: values must be one of {', '.join(VALUES)}, got {values!r}")
    model = as_chain(model)  # an (accelerated) Sequential classifier
    tensors: Dict[str, torch.Tensor] = {}
    layers: List[Dict[str, Any]] = []
    for i, layer in enumerate(linear_layers(model)):
        t, meta = _pack_layer(i, layer.weight, layer.bias, values, sparse)
        tensors.update(t)
        layers.append(meta)
    header = _file_header(FORMAT, classifier_config(model), scaling, labels, tensors)
    header["layers"] = layers
    if header["labels"] is not None:
        check_labels_fit(tuple(header["labels"]), layers[-1]["shape"][0], "save_packed")
    return tensors, header


def payload_bytes(model: nn.Module, values: str = "float32", sparse: bool = False) -> int:
    """Bytes of the weight tensors a packed file of ``model`` holds (the file adds a small header)."""
    return _nbytes(pack(model, values, sparse)[0])


def save_packed(model: nn.Module, path, values: str = "float32", sparse: bool = False, *, scaling: Any = None,
                labels: Any = None) -> int:
    """Write ``model`` packed to ``path`` (safetensors, format aecomp-packed version 2) with its input
    ``scaling`` (an ``aecomp.data.Preprocessing`` or its dict; None: not recorded) and ``labels``
    (the original label of each class; None: 0..k-1); returns ``os.path.getsize(path)``."""
    tensors, header = pack(model, values, sparse, scaling=scaling, labels=labels)
    return _write(path, tensors, header)


def save_float32(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None, *,
                 config: Optional[Dict[str, Any]] = None, scaling: Any = None, labels: Any = None) -> int:
    """Write float32 ``tensors`` of a model that is not a classifier chain (an autoencoder's
    state_dict, the PCA baseline's buffers) as an aecomp-tensors file; returns its size in bytes.
    ``config`` rebuilds the model (``models.build``); ``metadata`` of the older form
    ``{"aecomp": json.dumps({"config": ...})}`` is still taken for ``config``."""
    if config is None and metadata and "aecomp" in metadata:
        config = json.loads(metadata["aecomp"]).get("config")
    if config is None and set(tensors) == {"mean", "components", "weight", "bias"}:
        config = {"type": "pca"}
    out = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    clash = set(out) & set(SCALING_TENSORS.values())
    if clash:
        raise ValueError(f"save_float32: tensor names {sorted(clash)} are reserved for the input scaling")
    header = _file_header(TENSORS_FORMAT, config, scaling, labels, out)
    return _write(path, out, header)


# ---------------------------------------------------------------------- read
@dataclass
class StoredLayer:
    """One decoded layer: ``weight`` is int8 ``q`` (with ``scale``) or float32 ``W``, ``[out, in]``."""

    values: str
    weight: torch.Tensor
    scale: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    activation: str

    def dense_weight(self) -> torch.Tensor:
        return dequantize_per_channel(self.weight, self.scale) if self.values == "int8" else self.weight.float()


@dataclass
class StoredModel:
    """An aecomp-packed file as read: its meta, the classifier config and the decoded layers."""

    meta: FileMeta
    path: str
    file_bytes: int
    config: Dict[str, Any]
    layers: List[StoredLayer] = field(default_factory=list)

    def to_model(self, backend: Optional[str] = None) -> nn.Module:
        """The float32 model (int8: dequantized ``q * s``); it takes *scaled* inputs."""
        model = build_model(self.config, backend=backend)
        mods = linear_layers(model)
        if len(mods) != len(self.layers):
            raise StorageError(f"{self.path}: {len(self.layers)} stored layers but the config describes {len(mods)}")
        with torch.no_grad():
            for i, (m, layer) in enumerate(zip(mods, self.layers)):
                w = layer.dense_weight()
                if list(w.shape) != list(m.weight.shape):
                    raise StorageError(f"{self.path}: layer {i} stores shape {list(w.shape)}, the model wants "
                                       f"{list(m.weight.shape)}")
                m.weight.copy_(w)
                if m.bias is not None:
                    if layer.bias is None:
                        raise StorageError(f"{self.path}: tensor '{i}.b' is missing")
                    m.bias.copy_(layer.bias)
        return model.eval()

    def packed_net(self):
        """The ``share.PackedNet`` of Int8Linear layers (int8 files only)."""
        from .share import Int8Linear, PackedNet

        layers = []
        for i, layer in enumerate(self.layers):
            if layer.values != "int8":
                raise StorageError(f"{self.path}: layer {i} holds {layer.values} weights; the packed path and int8 "
                                   f"ONNX run int8 or shared-weight files (quantize the model first: aecomp compress "
                                   f"... int8)")
            try:
                layers.append(Int8Linear(layer.weight, layer.scale.float(), layer.bias, layer.activation))
            except ValueError as exc:
                raise StorageError(f"{self.path}: layer {i}: {exc}") from None
        return PackedNet(dict(self.config), layers)


@dataclass
class StoredTensors:
    """An aecomp-tensors file as read: its meta, config and float32 tensors."""

    meta: FileMeta
    path: str
    file_bytes: int
    config: Optional[Dict[str, Any]]
    tensors: Dict[str, torch.Tensor]

    def to_model(self, backend: Optional[str] = None) -> nn.Module:
        """The autoencoder (``models.build(config)`` + state_dict) or the PCA classifier."""
        cfg = self.config
        try:
            if isinstance(cfg, dict) and cfg.get("type") == "pca":
                from .baselines import PCAClassifier

                t = self.tensors
                return PCAClassifier(t["mean"], t["components"], t["weight"], t["bias"]).eval()
            if not isinstance(cfg, dict):
                raise ValueError("the file records no model config")
            from .. import models

            model = models.build(cfg)
            model.load_state_dict(self.tensors)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise StorageError(f"{self.path}: cannot rebuild the model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        return model.eval()


def _split_metadata(data: bytes, where: str) -> Tuple[Dict[str, str], Dict[str, torch.Tensor]]:
    """safetensors' ``__metadata__`` and the tensors, or one StorageError."""
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", data[:8])
        doc = json.loads(data[8:8 + n])
        tensors = load(data)
    except Exception as exc:  # safetensors and json raise their own error types
        raise StorageError(f"{where}: not a readable safetensors file ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    meta = doc.get("__metadata__") if isinstance(doc, dict) else None
    return (meta if isinstance(meta, dict) else {}), tensors


def read_header(path) -> Dict[str, Any]:
    """The ``aecomp`` header of a safetensors model file (after the file's checks)."""
    model = read_packed(path)
    return {"format": model.meta.format, "version": model.meta.version, "config": model.config}


def _header(meta: Dict[str, str], tensors: Dict[str, torch.Tensor], where: str) -> Tuple[Dict[str, Any], FileMeta]:
    if "aecomp" not in meta:
        raise StorageError(f"{where}: a safetensors file, but not a packed aecomp model nor any aecomp model file (no 'aecomp' metadata)")
    try:
        header = json.loads(meta["aecomp"])
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise StorageError(f"{where}: the 'aecomp' metadata is not a JSON object ({exc})") from None
    fmt, version = header.get("format"), header.get("version")
    stored = meta.get(CRC_KEY)
    if stored is None and "version" not in header:  # exactly what version 1 wrote, or not ours
        if fmt == LEGACY_FORMAT and set(header) == {"format", "config", "layers"}:
            warn_legacy(where, f"{FORMAT} version 1")
            return header, FileMeta(FORMAT, 1)
        if fmt is None and set(header) == {"config"}:
            warn_legacy(where, f"{TENSORS_FORMAT} version 1")
            return header, FileMeta(TENSORS_FORMAT, 1)
    if fmt not in (FORMAT, TENSORS_FORMAT):
        raise StorageError(f"{where}: a safetensors file of format {fmt!r}, not one this aecomp reads ({FORMAT}, "
                           f"{TENSORS_FORMAT})")
    if version != VERSION:
        raise StorageError(f"{where}: {fmt} version {version!r}; this aecomp reads versions 1 and {VERSION}")
    if stored is None or f"{checksum(meta['aecomp'], tensors):08x}" != stored:
        why = "no checksum" if stored is None else "checksum mismatch"
        raise StorageError(f"{where}: {fmt} version {version}: {why}: the file is damaged")
    where_in = f"{where} ({fmt} version {version})"
    scaling = scaling_from_header(header.get("input"), {k: tensors[v] for k, v in SCALING_TENSORS.items()
                                                        if v in tensors}, where_in)
    try:
        labels = as_labels(header.get("labels"), "labels")
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{where_in}: {exc}") from None
    return header, FileMeta(fmt, VERSION, scaling, labels)


def _decode_layers(header: Dict[str, Any], tensors: Dict[str, torch.Tensor], where: str) -> List[StoredLayer]:
    config, metas = header.get("config"), header.get("layers")
    try:
        acts = chain_activations(config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"{where}: {exc}") from None
    if not isinstance(metas, list) or len(metas) != len(acts):
        raise StorageError(f"{where}: {len(metas) if isinstance(metas, list) else 'no'} stored layers but the config "
                           f"describes {len(acts)}")

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise StorageError(f"{where}: tensor '{name}' is missing")
        return tensors[name]

    layers: List[StoredLayer] = []
    for i, (meta, act) in enumerate(zip(metas, acts)):
        try:
            shape, enc, values = [int(s) for s in meta["shape"]], meta["encoding"], meta["values"]
        except (KeyError, TypeError, ValueError):
            raise StorageError(f"{where}: layer {i} has no readable shape / encoding / values") from None
        if values not in VALUES:
            raise StorageError(f"{where}: layer {i} has unknown values {values!r}")
        if enc == "dense":
            w = get(f"{i}.q") if values == "int8" else get(f"{i}.w")
        elif enc == "csr":
            w = decode_csr(get(f"{i}.v"), get(f"{i}.c"), get(f"{i}.n"), shape)
        elif enc == "bitmask":
            w = decode_bitmask(get(f"{i}.m"), get(f"{i}.v"), shape)
        else:
            raise StorageError(f"{where}: layer {i} has unknown encoding {enc!r}")
        want = torch.int8 if values == "int8" else torch.float32
        if w.dtype != want or list(w.shape) != shape:
            raise StorageError(f"{where}: layer {i} stores {w.dtype} {list(w.shape)}, expected {want} {shape}")
        if i > 0 and shape[1] != layers[-1].weight.shape[0]:
            raise StorageError(f"{where}: layer {i} takes {shape[1]} inputs but layer {i - 1} gives "
                               f"{layers[-1].weight.shape[0]}")
        scale = get(f"{i}.s") if values == "int8" else None
        bias = tensors.get(f"{i}.b")
        for name, t in (("s", scale), ("b", bias)):
            if t is not None and tuple(t.shape) != (shape[0],):
                raise StorageError(f"{where}: tensor '{i}.{name}' has shape {list(t.shape)}, expected [{shape[0]}]")
        layers.append(StoredLayer(values, w, scale, bias, act))
    return layers


def read_bytes(data: bytes, where: str = "<bytes>"):
    """The one reader of safetensors model files: a :class:`StoredModel` or :class:`StoredTensors`."""
    meta, tensors = _split_metadata(data, where)
    header, fmeta = _header(meta, tensors, where)
    where_in = f"{where} ({fmeta.name})"
    if fmeta.format == TENSORS_FORMAT:
        return StoredTensors(fmeta, where, len(data), header.get("config"),
                             {k: v for k, v in tensors.items() if k not in SCALING_TENSORS.values()})
    layers = _decode_layers(header, tensors, where_in)
    check_labels_fit(fmeta.labels, int(layers[-1].weight.shape[0]), where_in)
    if fmeta.scaling is not None and fmeta.scaling.shift.dim() == 1 and \
            fmeta.scaling.shift.numel() != layers[0].weight.shape[1]:
        raise StorageError(f"{where_in}: the input scaling has {fmeta.scaling.shift.numel()} features, the model "
                           f"takes {layers[0].weight.shape[1]}")
    return StoredModel(fmeta, where, len(data), header["config"], layers)


def _read(path):
    kind, data = sniff(path)
    p = os.fspath(path)
    if kind != "safetensors":
        raise StorageError(f"{p}: an {kind} file, not safetensors (read it with aecomp.compress.modelfile.read_model)")
    return read_bytes(data, p)


def read_packed(path) -> StoredModel:
    """The aecomp-packed classifier file at ``path`` (one StorageError for anything else)."""
    model = _read(path)
    if not isinstance(model, StoredModel):
        raise StorageError(f"{os.fspath(path)}: an {model.meta.name} file (an autoencoder's or PCA's tensors), not a "
                           f"packed classifier")
    return model


def read_tensors(path) -> StoredTensors:
    """The aecomp-tensors file at ``path``."""
    model = _read(path)
    if not isinstance(model, StoredTensors):
        raise StorageError(f"{os.fspath(path)}: an {model.meta.name} classifier file, not an aecomp-tensors file")
    return model


def load_packed(path, backend: Optional[str] = None) -> nn.Module:
    """The float32 model of a packed file (int8: dequantized weights); it takes *scaled* inputs (the
    file's input scaling is ``read_packed(path).meta.scaling``)."""
    return read_packed(path).to_model(backend=backend)


def macs(model: nn.Module, sparse: bool = False) -> int:
    """Multiply-adds per sample of the linear chain: ``sum in*out`` (dense) or the number of
    nonzero weights (sparse)."""
    total = 0
    for layer in linear_layers(model):
        total += int((layer.weight != 0).sum()) if sparse else layer.weight.numel()
    return total
