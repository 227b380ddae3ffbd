"""Entropy-coded model files: one file per model, every stream coded losslessly, checksummed.

A coded file holds a :class:`aecomp.compress.share.PackedNet` (shared b-bit layers and/or
per-channel int8 layers, dense or pruned) and loads back into exactly the same one
(bit-identical codes, codebooks, scales, biases, masks). ``bytes`` of the model =
``os.path.getsize`` of this file.

File layout, format ``aecomp-coded`` version 2 (integers little-endian)::

    offset   size  field
    0        4     magic b"AECC"
    4        1     version (2)
    5        4     H = length of the header (uint32)
    9        H     header: compact JSON (below), raw deflate (zlib, wbits -15) with the preset
                   dictionary :data:`HEADER_DICT` (:data:`HEADER_DICT_BYTES` bytes of typical
                   header text, fixed in the code, not in the file: it shrinks a ~300-byte header
                   to ~110; changing it needs a new version)
    9+H      ...   per-feature input scaling only: ``shift`` then ``scale``, float32, ``features``
                   values each
    ...      ...   the streams' bytes, concatenated in header order
    end-4    4     CRC-32 (zlib.crc32) of every byte before it

Header JSON: ``{"config": <classifier_config>, "layers": [layer, ...], "input": <scaling>,
"labels": <label map>}`` (``input`` and ``labels`` as in :mod:`aecomp.compress.modelfile`:
``{"kind", "shift", "scale"}`` or ``{"kind", "features"}`` or ``null``; the original label of each
class or ``null`` for 0..k-1) with per layer
``{"kind": "shared"|"int8", "shape": [out, in], "bits": b (shared), "bias": bool,
"pruned": bool, "streams": [[name, codec, nbytes, count, param], ...]}``. Streams, in order:

==========  ===============================================================================
name        content
==========  ===============================================================================
codebook    shared: ``2^b`` float16 (the shared values)
scale       int8: ``out`` float32 (per-channel scales)
pos         pruned layers: the kept positions (row-major flat indices ``p_0 < p_1 < ...``) as
            gap symbols with escape ``G = 2^g - 1`` (``param`` = g): reading symbol ``s``,
            ``s = G`` skips G positions; otherwise it skips ``s`` positions and the next one is
            kept (``count`` = number of symbols)
symbols     the kept weights' codes in row-major order (shared: ``codes``, alphabet ``2^b``;
            int8: ``q + 127``, alphabet 255)
bias        ``out`` float16
==========  ===============================================================================

Symbol streams (``pos``, ``symbols``) are coded by whichever codec gives the fewest bytes for
that stream (``codec`` in the header): ``fixed`` (w-bit fields packed LSB first, w = bits of
the alphabet), ``huffman`` (canonical Huffman, hand-written: a table of 5-bit code
lengths for the whole alphabet, then the codes MSB first), ``lzma`` (stdlib, raw LZMA2 of one
byte per symbol) or ``deflate`` (stdlib zlib, raw). Numeric streams are ``raw``. The coder is
the project's one coder, :mod:`aecomp.compress.entropy` (FL messages use it too).

Why these, and no registry coder (measured with ``python -m benchmarks.bench_coding RUN/models``
on the 42 coded files of a default ``aecomp compress --data digits`` run): taking per stream the
smallest of our four, the 21 pruned + shared files hold 30,923 bytes of streams; also allowing
zstd (level 22, no frame extras) gives 30,812 (-0.4%), brotli (quality 11) 30,570 (-1.1%), and
zstd + brotli + constriction's ANS 30,542 (-1.2%); on the dense 8-bit files brotli saves 1.1%
and zstd nothing. Alone, on all streams, brotli (179,766 B) and zstd (183,705 B) beat Huffman
(195,309 B) -- Huffman pays whole bits per symbol on the skewed gap streams, where the LZ
coders also find runs -- but deflate and lzma from the standard library are within 4% of them
and the per-stream choice keeps Huffman where it wins (the near-i.i.d. weight codes). ANS with a
stored 12-bit-per-symbol model (204,166 B) loses on these short streams to its table. A 1%
gain does not pay for a required dependency, so the format needs only the standard library.

Version 1 (the same without ``input`` and ``labels``, its own preset dictionary
:data:`HEADER_DICT_V1`) still loads, with a ``modelfile.LegacyFormatWarning``.

One reader: :func:`read_coded` (:func:`read_coded_bytes`) gives a :class:`CodedModel` (the
``share.PackedNet`` and the file's ``modelfile.FileMeta``); :func:`load_coded` is its ``.net``.

Errors: a file that is too short, has the wrong magic or version, fails the CRC, or whose
streams disagree with its header raises one :class:`CodedFileError` naming the file and the
format version it found.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .entropy import best_positions, decode_symbols, deflate, encode_symbols, gaps_decode
from .modelfile import (CODED_MAGIC, CodedFileError, FileMeta, as_labels, as_scaling, chain_activations,
                        check_labels_fit, labels_list, scaling_from_header, scaling_header, sniff, warn_legacy)
from .share import Int8Linear, PackedNet, SharedLinear

__all__ = [
    "CodedFileError",
    "CodedModel",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_DICT",
    "HEADER_DICT_BYTES",
    "MAGIC",
    "decode_file",
    "encode_file",
    "load_coded",
    "read_coded",
    "read_coded_bytes",
    "save_coded",
]

FORMAT = "aecomp-coded"
MAGIC = CODED_MAGIC
FORMAT_VERSION = 2

#: the preset dictionary of the header's deflate stream in format version 1
HEADER_DICT_V1 = (
    b'{"config":{"type":"compressed","encoder":{"dims":[784,64,32],"activations":["relu","relu","none"]},'
    b'"head":{"dims":[32,100,10],"activations":["relu","none"]},"mode":"replace"},"type":"classifier",'
    b'"dims":[784,300,100,10],"activations":["relu","relu","none"]},"mode":"frozen"finetune"sigmoid",'
    b'"layers":[{"shape":[300,784],"bias":true,"pruned":true,"kind":"shared","bits":4,"streams":'
    b'[["codebook","raw",32,16,0],["scale","raw",["pos","huffman",207,5],["symbols","huffman",253,874,16],'
    b'["symbols","fixed",["symbols","lzma",["symbols","deflate",["bias","raw",64,32,0]]},'
    b'{"shape":[10,16],"bias":false,"pruned":false,"kind":"int8","streams":[["pos","fixed",'
)
#: the preset dictionary of the header's deflate stream (part of format version 2): version 1's
#: and the text of the input scaling and the label map
HEADER_DICT = HEADER_DICT_V1 + (
    b'"input":{"kind":"minmax","features":784},"labels":[0,1,2,3,4,5,6,7,8,9,10,100,200,300,400,500,600,700,800,'
    b'900]},"input":null,"labels":null}"input":{"kind":"global","shift":0.0,"scale":255.0},"labels":null}'
)
#: bytes of fixed table the coder keeps in the code, not in the files (what the report states)
HEADER_DICT_BYTES = len(HEADER_DICT)
_DICTS = {1: HEADER_DICT_V1, 2: HEADER_DICT}


# ---------------------------------------------------------------------- files
def _layer_streams(layer) -> Tuple[Dict[str, Any], List[bytes]]:
    out, inn = layer.shape
    pruned = layer.mask is not None and (isinstance(layer, SharedLinear) or not bool(layer.mask.all()))
    meta: Dict[str, Any] = {"shape": [int(out), int(inn)], "bias": layer.bias is not None, "pruned": bool(pruned)}
    streams: List[Tuple[List[Any], bytes]] = []
    if isinstance(layer, SharedLinear):
        meta.update(kind="shared", bits=int(layer.bits))
        cb = layer.codebook.float().half()
        if not torch.equal(cb.float(), layer.codebook.float()):
            raise ValueError("save_coded: a codebook is not float16-exact; call share.finalize first")
        streams.append((["codebook", "raw", 0, cb.numel(), 0], cb.numpy().tobytes()))
        values = layer.codes.reshape(-1).long().numpy()
        alphabet = 1 << layer.bits
    elif isinstance(layer, Int8Linear):
        meta.update(kind="int8")
        streams.append((["scale", "raw", 0, out, 0], layer.scale.float().numpy().astype("<f4").tobytes()))
        values = layer.q.reshape(-1).long().numpy() + 127
        alphabet = 255
    else:
        raise TypeError(f"save_coded: unknown layer type {type(layer).__name__}")
    if pruned:
        positions = np.flatnonzero(layer.mask.reshape(-1).numpy())
        g, codec, data, count = best_positions(positions)
        streams.append((["pos", codec, 0, count, g], data))
        values = values[positions]
    codec, data = encode_symbols(values, alphabet)
    streams.append((["symbols", codec, 0, int(values.size), alphabet], data))
    if layer.bias is not None:
        b = layer.bias.float().half()
        if not torch.equal(b.float(), layer.bias.float()):
            raise ValueError("save_coded: a bias is not float16-exact; call share.finalize first")
        streams.append((["bias", "raw", 0, out, 0], b.numpy().tobytes()))
    meta["streams"] = []
    payload = []
    for desc, data in streams:
        desc[2] = len(data)
        meta["streams"].append(desc)
        payload.append(data)
    return meta, payload


def encode_file(net: PackedNet, *, scaling: Any = None, labels: Any = None) -> bytes:
    """The bytes of the coded file of ``net`` with its input ``scaling`` and ``labels`` (see the
    module docstring and :mod:`aecomp.compress.modelfile`)."""
    metas, payload = [], []
    for layer in net.layers:
        m, p = _layer_streams(layer)
        metas.append(m)
        payload += p
    inp, arrays = scaling_header(as_scaling(scaling, "save_coded: scaling"))
    label_map = labels_list(as_labels(labels, "save_coded: labels"))
    if label_map is not None and net.layers:
        check_labels_fit(tuple(label_map), int(net.layers[-1].shape[0]), "save_coded")
    if arrays and net.layers and arrays["shift"].numel() != net.layers[0].shape[1]:
        raise ValueError(f"save_coded: the input scaling has {arrays['shift'].numel()} features, the model takes "
                         f"{net.layers[0].shape[1]}")
    scaling_bytes = [arrays[k].numpy().astype("<f4").tobytes() for k in ("shift", "scale")] if arrays else []
    header = json.dumps({"config": net.config, "layers": metas, "input": inp, "labels": label_map},
                        separators=(",", ":")).encode()
    header = deflate(header, HEADER_DICT)
    body = MAGIC + bytes([FORMAT_VERSION]) + struct.pack("<I", len(header)) + header + b"".join(scaling_bytes + payload)
    return body + struct.pack("<I", zlib.crc32(body))


def save_coded(net: PackedNet, path, *, scaling: Any = None, labels: Any = None) -> int:
    """Write ``net`` to ``path`` (temporary file + rename) with its input ``scaling`` (an
    ``aecomp.data.Preprocessing`` or its dict; None: not recorded) and ``labels`` (the original
    label of each class; None: 0..k-1); returns ``os.path.getsize(path)``."""
    from ..train.checkpoint import atomic_write

    data = encode_file(net, scaling=scaling, labels=labels)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)
    return os.path.getsize(path)


def _f16(data: bytes, n: int) -> torch.Tensor:
    if len(data) != 2 * n:
        raise ValueError("float16 stream has the wrong length")
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").astype(np.float32).copy())


@dataclass
class CodedModel:
    """An aecomp-coded file as read: its meta and the ``share.PackedNet`` it holds."""

    meta: FileMeta
    path: str
    file_bytes: int
    net: PackedNet

    @property
    def config(self) -> Dict[str, Any]:
        return self.net.config

    def to_model(self, backend: Optional[str] = None):
        """The float32 model (each layer's ``dense_weight()``); it takes *scaled* inputs."""
        return self.net.to_model(backend=backend)

    def packed_net(self) -> PackedNet:
        return self.net


def decode_file(data: bytes, where: str = "<bytes>") -> PackedNet:
    """The ``PackedNet`` of a coded file's bytes (:func:`read_coded_bytes` gives its meta too)."""
    return read_coded_bytes(data, where).net


def read_coded_bytes(data: bytes, where: str = "<bytes>") -> CodedModel:
    """The one reader of aecomp-coded files."""
    if len(data) < 13:
        raise CodedFileError(f"{where}: truncated ({len(data)} bytes): not a complete aecomp coded model file")
    if data[:4] != MAGIC:
        raise CodedFileError(f"{where}: not an aecomp coded model file (magic {data[:4]!r}, expected {MAGIC!r})")
    version = data[4]
    if version not in _DICTS:
        raise CodedFileError(f"{where}: {FORMAT} format version {version}; this aecomp reads versions "
                             f"{', '.join(map(str, _DICTS))}")
    name = f"{FORMAT} version {version}"
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CodedFileError(f"{where}: {name}: checksum mismatch: the file is corrupted or truncated "
                             f"({len(data)} bytes)")
    try:
        (hlen,) = struct.unpack("<I", data[5:9])
        dec = zlib.decompressobj(-15, zdict=_DICTS[version])
        header = json.loads(dec.decompress(data[9:9 + hlen]) + dec.flush())
        pos = 9 + hlen
        arrays = {}
        inp = header.get("input")
        if isinstance(inp, dict) and "features" in inp:
            n = int(inp["features"])
            for key in ("shift", "scale"):
                chunk = data[pos:pos + 4 * n]
                if len(chunk) != 4 * n:
                    raise ValueError("the input scaling arrays are cut short")
                arrays[key] = torch.from_numpy(np.frombuffer(chunk, dtype="<f4").astype(np.float32))
                pos += 4 * n
        scaling = scaling_from_header(inp, arrays, f"{where} ({name})")
        labels = as_labels(header.get("labels"), "the label map")
        layers = []
        for meta in header["layers"]:
            out, inn = meta["shape"]
            streams = {}
            for sname, codec, nbytes, count, param in meta["streams"]:
                streams[sname] = (codec, data[pos:pos + nbytes], count, param)
                pos += nbytes
            if meta["pruned"]:
                codec, chunk, count, g = streams["pos"]
                positions = gaps_decode(decode_symbols(codec, chunk, 1 << g, count), g)
                if positions.size and (positions[-1] >= out * inn):
                    raise ValueError("a kept position is out of range")
                mask = torch.zeros(out * inn, dtype=torch.bool)
                mask[torch.from_numpy(positions)] = True
            else:
                positions, mask = None, None
            codec, chunk, count, alphabet = streams["symbols"]
            expected = positions.size if positions is not None else out * inn
            if count != expected:
                raise ValueError("the symbol count does not match the positions")
            values = decode_symbols(codec, chunk, alphabet, count)
            full = np.zeros(out * inn, dtype=np.int64)
            if positions is not None:
                full[positions] = values
            else:
                full[:] = values
            bias = _f16(streams["bias"][1], out) if meta["bias"] else None
            if meta["kind"] == "shared":
                bits = int(meta["bits"])
                layer = SharedLinear(torch.from_numpy(full.astype(np.uint8)).view(out, inn), _f16(
                    streams["codebook"][1], 1 << bits), bits, None if mask is None else mask.view(out, inn), bias)
            elif meta["kind"] == "int8":
                q = torch.from_numpy(full - 127).to(torch.int8).view(out, inn)
                if positions is not None:
                    q = q * mask.view(out, inn)
                chunk = streams["scale"][1]
                if len(chunk) != 4 * out:
                    raise ValueError("scale stream has the wrong length")
                scale = torch.from_numpy(np.frombuffer(chunk, dtype="<f4").copy())
                layer = Int8Linear(q.contiguous(), scale, bias)
            else:
                raise ValueError(f"unknown layer kind {meta['kind']!r}")
            layers.append(layer)
        if pos != len(data) - 4:
            raise ValueError(f"the streams end at byte {pos}, the file at {len(data) - 4}")
        net = PackedNet(header["config"], layers)
        acts = chain_activations(header["config"])
        if len(acts) != len(layers):
            raise ValueError(f"{len(layers)} layers stored but the config describes {len(acts)}")
        for layer, act in zip(layers, acts):
            layer.activation = act
        if layers:
            check_labels_fit(labels, int(layers[-1].shape[0]), "the label map")
            if arrays and arrays["shift"].numel() != layers[0].shape[1]:
                raise ValueError(f"the input scaling has {arrays['shift'].numel()} features, the model takes "
                                 f"{layers[0].shape[1]}")
    except CodedFileError:
        raise
    except Exception as exc:  # any inconsistency behind a valid checksum: a writer bug or a forged file
        raise CodedFileError(f"{where}: inconsistent coded model file ({name}; {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if version == 1:
        warn_legacy(where, name)
    return CodedModel(FileMeta(FORMAT, version, scaling, labels), where, len(data), net)


def read_coded(path) -> CodedModel:
    """The aecomp-coded file at ``path`` (one :class:`CodedFileError` for anything else)."""
    p = os.fspath(path)
    kind, data = sniff(p)
    if kind != FORMAT:
        raise CodedFileError(f"{p}: a {kind} file, not an aecomp coded model file (magic {data[:4]!r})")
    return read_coded_bytes(data, p)


def load_coded(path) -> PackedNet:
    """The :class:`PackedNet` stored in ``path`` (``.to_model()`` gives the float32 model); the
    file's scaling and labels are ``read_coded(path).meta``."""
    return read_coded(path).net
