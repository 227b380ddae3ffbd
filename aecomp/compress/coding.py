"""Entropy-coded model files: one file per model, every stream coded losslessly, checksummed.

A coded file holds a :class:`aecomp.compress.share.PackedNet` (shared b-bit layers and/or
per-channel int8 layers, dense or pruned) and loads back into exactly the same one
(bit-identical codes, codebooks, scales, biases, masks). ``bytes`` of the model =
``os.path.getsize`` of this file.

File layout, format ``aecomp-coded`` version 1 (integers little-endian)::

    offset   size  field
    0        4     magic b"AECC"
    4        1     version (1)
    5        4     H = length of the header (uint32)
    9        H     header: raw-deflate-compressed (zlib, wbits -15) compact JSON, below
    9+H      ...   the streams' bytes, concatenated in header order
    end-4    4     CRC-32 (zlib.crc32) of every byte before it

Header JSON: ``{"config": <classifier_config>, "layers": [layer, ...]}`` with per layer
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
the alphabet), ``huffman`` (canonical Huffman, hand-written below: a table of 5-bit code
lengths for the whole alphabet, then the codes MSB first), ``lzma`` (stdlib, raw LZMA2 of one
byte per symbol) or ``deflate`` (stdlib zlib, raw). Numeric streams are ``raw``.

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

Errors: a file that is too short, has the wrong magic or version, fails the CRC, or whose
streams disagree with its header raises one :class:`CodedFileError` naming the file.
"""
from __future__ import annotations

import heapq
import json
import lzma
import os
import struct
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .share import Int8Linear, PackedNet, SharedLinear, pack_fixed, unpack_fixed

__all__ = [
    "CODECS",
    "CodedFileError",
    "FORMAT_VERSION",
    "MAGIC",
    "decode_symbols",
    "encode_symbols",
    "gaps_decode",
    "gaps_encode",
    "huffman_decode",
    "huffman_encode",
    "huffman_lengths",
    "load_coded",
    "save_coded",
    "stream_sizes",
]

MAGIC = b"AECC"
FORMAT_VERSION = 1
MAX_LEN = 16  # longest Huffman code (the decoder's table has 2^MAX_LEN entries)


class CodedFileError(ValueError):
    """A coded model file that cannot be read: truncated, corrupted, or not ours."""


# ---------------------------------------------------------------------- Huffman
def huffman_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Code lengths of a Huffman code for ``counts`` (0 for absent symbols), at most ``max_len``.

    A single present symbol gets length 1. Longer codes are avoided by flattening the counts
    (``c <- c // 2 + 1``) and rebuilding, which costs a negligible fraction of a bit per symbol.
    """
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    c = counts.copy()
    while True:
        heap = [(int(c[s]), int(s), (int(s),)) for s in present]
        heapq.heapify(heap)
        depth = {int(s): 0 for s in present}
        tie = counts.size
        while len(heap) > 1:
            a, b = heapq.heappop(heap), heapq.heappop(heap)
            for s in a[2] + b[2]:
                depth[s] += 1
            heapq.heappush(heap, (a[0] + b[0], tie, a[2] + b[2]))
            tie += 1
        for s, d in depth.items():
            lengths[s] = d
        if lengths.max() <= max_len:
            return lengths
        c[present] = c[present] // 2 + 1


def _canonical(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code = 0
    prev = 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, alphabet: int) -> bytes:
    """Table (5 bits per symbol of the alphabet: its code length) + the codes, MSB first."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet))
    table = pack_fixed_wide(lengths, 5)
    if symbols.size == 0:
        return table
    codes = _canonical(lengths)
    ln = lengths[symbols]
    # each code left-aligned in 32 bits, then the first ln bits of each row
    aligned = (codes[symbols] << (32 - ln)).astype(">u4")
    bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
    keep = np.arange(32)[None, :] < ln[:, None]
    return table + np.packbits(bits[keep]).tobytes()


def huffman_decode(data: bytes, alphabet: int, n: int) -> np.ndarray:
    tbytes = (alphabet * 5 + 7) // 8
    if len(data) < tbytes:
        raise ValueError("Huffman table cut short")
    lengths = unpack_fixed_wide(np.frombuffer(data[:tbytes], dtype=np.uint8), 5, alphabet)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max() == 0 or lengths.max() > MAX_LEN:
        raise ValueError("bad Huffman table")
    if np.sum(2.0 ** -lengths[lengths > 0]) > 1.0 + 1e-12:
        raise ValueError("bad Huffman table (not a prefix code)")
    L = int(lengths.max())
    codes = _canonical(lengths)
    sym_of = np.full(1 << L, -1, dtype=np.int64)
    len_of = np.zeros(1 << L, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (L - int(lengths[s]))
        hi = lo + (1 << (L - int(lengths[s])))
        sym_of[lo:hi] = s
        len_of[lo:hi] = lengths[s]
    bits = np.unpackbits(np.frombuffer(data[tbytes:], dtype=np.uint8)).astype(np.int64)
    nbits = bits.size
    padded = np.concatenate([bits, np.zeros(L, dtype=np.int64)])
    window = np.zeros(nbits + 1, dtype=np.int64)
    for j in range(L):
        window = (window << 1) | padded[j:j + nbits + 1]
    sym_at = sym_of[window].tolist()
    len_at = len_of[window].tolist()
    out = [0] * n
    p = 0
    for k in range(n):
        if p >= nbits:
            raise ValueError("Huffman stream cut short")
        s = sym_at[p]
        if s < 0:
            raise ValueError("invalid Huffman code")
        out[k] = s
        p += len_at[p]
    if p > nbits:
        raise ValueError("Huffman stream cut short")
    return np.asarray(out, dtype=np.int64)


def pack_fixed_wide(values: np.ndarray, width: int) -> bytes:
    """``width``-bit unsigned fields (width <= 16), LSB first."""
    v = np.asarray(values, dtype=np.uint16)
    planes = np.unpackbits(v.astype("<u2").view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")[:, :width]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_fixed_wide(data: np.ndarray, width: int, n: int) -> np.ndarray:
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8), count=n * width, bitorder="little").reshape(n, width)
    return (bits.astype(np.int64) << np.arange(width, dtype=np.int64)).sum(axis=1)


# ---------------------------------------------------------------------- symbol codecs
def _width(alphabet: int) -> int:
    return max(1, int(alphabet - 1).bit_length())


def _fixed_enc(sym: np.ndarray, alphabet: int) -> bytes:
    w = _width(alphabet)
    return pack_fixed(sym.astype(np.uint8), w).tobytes() if w <= 8 else pack_fixed_wide(sym, w)


def _fixed_dec(data: bytes, alphabet: int, n: int) -> np.ndarray:
    w = _width(alphabet)
    if len(data) != (n * w + 7) // 8:
        raise ValueError("fixed-width stream has the wrong length")
    arr = np.frombuffer(data, dtype=np.uint8)
    return unpack_fixed(arr, w, n).astype(np.int64) if w <= 8 else unpack_fixed_wide(arr, w, n)


_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]  # streams are small


def _bytes_of(sym: np.ndarray, alphabet: int) -> bytes:
    if alphabet > 256:
        raise ValueError("byte codecs need an alphabet of at most 256")
    return sym.astype(np.uint8).tobytes()


def _from_bytes(raw: bytes, n: int) -> np.ndarray:
    if len(raw) != n:
        raise ValueError("stream decodes to the wrong number of symbols")
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return c.compress(raw) + c.flush()


CODECS: Dict[str, Tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes, int, int], np.ndarray]]] = {
    "fixed": (_fixed_enc, _fixed_dec),
    "huffman": (huffman_encode, huffman_decode),
    "lzma": (lambda s, a: lzma.compress(_bytes_of(s, a), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
             lambda d, a, n: _from_bytes(lzma.decompress(d, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS), n)),
    "deflate": (lambda s, a: _deflate(_bytes_of(s, a)),
                lambda d, a, n: _from_bytes(zlib.decompress(d, -15), n)),
}


def stream_sizes(symbols: np.ndarray, alphabet: int) -> Dict[str, int]:
    """Bytes of ``symbols`` under every codec that applies (for the report's comparison)."""
    out = {}
    for name, (enc, _) in CODECS.items():
        if name in ("lzma", "deflate") and alphabet > 256:
            continue
        out[name] = len(enc(np.asarray(symbols, dtype=np.int64), alphabet))
    return out


def encode_symbols(symbols: np.ndarray, alphabet: int, codecs=None) -> Tuple[str, bytes]:
    """``(codec, bytes)`` of the codec (among ``codecs``, default all) giving the fewest bytes."""
    sym = np.asarray(symbols, dtype=np.int64)
    if sym.size and (int(sym.min()) < 0 or int(sym.max()) >= alphabet):
        raise ValueError(f"encode_symbols: a symbol is outside the alphabet [0, {alphabet})")
    best: Optional[Tuple[str, bytes]] = None
    for name in (codecs or CODECS):
        if name in ("lzma", "deflate") and alphabet > 256:
            continue
        data = CODECS[name][0](sym, alphabet)
        if best is None or len(data) < len(best[1]):
            best = (name, data)
    assert best is not None
    return best


def decode_symbols(codec: str, data: bytes, alphabet: int, n: int) -> np.ndarray:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    out = CODECS[codec][1](data, alphabet, n)
    if out.size != n or (n and (int(out.min()) < 0 or int(out.max()) >= alphabet)):
        raise ValueError("stream decodes to the wrong symbols")
    return out


# ---------------------------------------------------------------------- positions
def gaps_encode(positions: np.ndarray, g: int) -> np.ndarray:
    """Gap symbols (alphabet ``2^g``, escape ``G = 2^g - 1``) of sorted flat positions."""
    G = (1 << g) - 1
    pos = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(np.concatenate([[-1], pos])) - 1  # zeros skipped before each kept position
    escapes = gaps // G
    rest = gaps - escapes * G
    # each kept position: `escapes` symbols G, then its remainder
    reps = escapes + 1
    out = np.full(int(reps.sum()), G, dtype=np.int64)
    out[np.cumsum(reps) - 1] = rest
    return out


def gaps_decode(symbols: np.ndarray, g: int) -> np.ndarray:
    G = (1 << g) - 1
    s = np.asarray(symbols, dtype=np.int64)
    step = np.where(s == G, G, s + 1)
    ends = np.cumsum(step) - 1
    return ends[s != G]


def _best_positions(positions: np.ndarray) -> Tuple[int, str, bytes, int]:
    best = None
    for g in range(1, 9):
        sym = gaps_encode(positions, g)
        codec, data = encode_symbols(sym, 1 << g)
        if best is None or len(data) < len(best[2]):
            best = (g, codec, data, int(sym.size))
    assert best is not None
    return best


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
        g, codec, data, count = _best_positions(positions)
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


def encode_file(net: PackedNet) -> bytes:
    """The bytes of the coded file of ``net`` (see the module docstring)."""
    metas, payload = [], []
    for layer in net.layers:
        m, p = _layer_streams(layer)
        metas.append(m)
        payload += p
    header = json.dumps({"config": net.config, "layers": metas}, separators=(",", ":")).encode()
    header = _deflate(header)
    body = MAGIC + bytes([FORMAT_VERSION]) + struct.pack("<I", len(header)) + header + b"".join(payload)
    return body + struct.pack("<I", zlib.crc32(body))


def save_coded(net: PackedNet, path) -> int:
    """Write ``net`` to ``path`` (temporary file + rename); returns ``os.path.getsize(path)``."""
    data = encode_file(net)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return os.path.getsize(path)


def _f16(data: bytes, n: int) -> torch.Tensor:
    if len(data) != 2 * n:
        raise ValueError("float16 stream has the wrong length")
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").astype(np.float32).copy())


def decode_file(data: bytes, where: str = "<bytes>") -> PackedNet:
    if len(data) < 13:
        raise CodedFileError(f"{where}: truncated ({len(data)} bytes): not a complete aecomp coded model file")
    if data[:4] != MAGIC:
        raise CodedFileError(f"{where}: not an aecomp coded model file (magic {data[:4]!r}, expected {MAGIC!r})")
    if data[4] != FORMAT_VERSION:
        raise CodedFileError(f"{where}: format version {data[4]}, this aecomp reads version {FORMAT_VERSION}")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CodedFileError(f"{where}: checksum mismatch: the file is corrupted or truncated ({len(data)} bytes)")
    try:
        (hlen,) = struct.unpack("<I", data[5:9])
        header = json.loads(zlib.decompress(data[9:9 + hlen], -15))
        pos = 9 + hlen
        layers = []
        for meta in header["layers"]:
            out, inn = meta["shape"]
            streams = {}
            for name, codec, nbytes, count, param in meta["streams"]:
                streams[name] = (codec, data[pos:pos + nbytes], count, param)
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
        acts = _activations(header["config"])
        if len(acts) != len(layers):
            raise ValueError(f"{len(layers)} layers stored but the config describes {len(acts)}")
        for layer, act in zip(layers, acts):
            layer.activation = act
    except CodedFileError:
        raise
    except Exception as exc:  # any inconsistency behind a valid checksum: a writer bug or a forged file
        raise CodedFileError(f"{where}: inconsistent coded model file ({type(exc).__name__}: {exc})") from None
    return net


def _activations(config: Dict[str, Any]) -> List[str]:
    if config.get("type") == "compressed":
        return list(config["encoder"]["activations"]) + list(config["head"]["activations"])
    return list(config["activations"])


def load_coded(path) -> PackedNet:
    """The :class:`PackedNet` stored in ``path`` (``.to_model()`` gives the float32 model)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CodedFileError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_file(data, path)
