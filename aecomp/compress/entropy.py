"""The project's one lossless coder: symbol streams, kept-position streams and byte streams.

Every coded thing the project writes goes through here: the ``.aecc`` model files
(:mod:`aecomp.compress.coding`) and the federated-learning messages (:mod:`aecomp.fl`). Only the
standard library and numpy are used (see :mod:`aecomp.compress.coding` for why no registry coder).

**Symbol streams** (:func:`encode_symbols` / :func:`decode_symbols`): integers in ``[0, alphabet)``
coded by whichever codec gives the fewest bytes, the codec's name travelling beside the bytes:

``fixed``    w-bit fields packed LSB first, ``w = bit_length(alphabet - 1)``
``huffman``  canonical Huffman, hand-written: a table of 5-bit code lengths for the whole
             alphabet (lengths limited to :data:`MAX_LEN`), then the codes MSB first
``lzma``     raw LZMA2 (preset 9e, 1 MiB dictionary) of one byte per symbol (alphabet <= 256)
``deflate``  raw deflate (level 9) of one byte per symbol (alphabet <= 256)

**Kept positions** (:func:`gaps_encode` / :func:`gaps_decode`, :func:`best_positions`): sorted
flat indices ``p_0 < p_1 < ...`` become gap symbols with escape ``G = 2^g - 1``: reading ``s``,
``s = G`` skips G positions; otherwise it skips ``s`` positions and the next one is kept.
:func:`best_positions` tries ``g = 1..8`` and keeps the smallest coded stream.

**Byte streams** (:func:`encode_bytes` / :func:`decode_bytes`): an opaque byte string, one tag
byte naming the codec (0 stored, 1 raw deflate, 2 raw LZMA2) followed by the payload, whichever
is smallest.

Decoders raise :class:`EntropyError` (a ``ValueError``) on anything inconsistent: a table that is
not a prefix code, a stream cut short, a symbol outside the alphabet, a wrong count.
"""
from __future__ import annotations

import heapq
import lzma
import zlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np

__all__ = [
    "CODECS",
    "EntropyError",
    "MAX_LEN",
    "best_positions",
    "decode_bytes",
    "decode_symbols",
    "deflate",
    "encode_bytes",
    "encode_symbols",
    "gaps_decode",
    "gaps_encode",
    "huffman_decode",
    "huffman_encode",
    "huffman_lengths",
    "pack_fixed",
    "stream_sizes",
    "unpack_fixed",
]

MAX_LEN = 16  # longest Huffman code (the decoder's table has 2^MAX_LEN entries)


class EntropyError(ValueError):
    """A coded stream that cannot be decoded: truncated, corrupt, or inconsistent with its count."""


# ---------------------------------------------------------------------- fixed-width fields
def pack_fixed(symbols: np.ndarray, width: int) -> np.ndarray:
    """``width``-bit unsigned fields (1 <= width <= 8) packed LSB first into uint8."""
    s = np.asarray(symbols, dtype=np.uint8).reshape(-1)
    bits = np.unpackbits(s[:, None], axis=1, bitorder="little")[:, :width]
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_fixed(data: np.ndarray, width: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``n`` uint8 symbols."""
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8), count=n * width, bitorder="little").reshape(n, width)
    return (bits.astype(np.uint16) << np.arange(width, dtype=np.uint16)).sum(axis=1).astype(np.uint8)


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
        raise EntropyError("Huffman table cut short")
    lengths = unpack_fixed_wide(np.frombuffer(data[:tbytes], dtype=np.uint8), 5, alphabet)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.max() == 0 or lengths.max() > MAX_LEN:
        raise EntropyError("bad Huffman table")
    if np.sum(2.0 ** -lengths[lengths > 0]) > 1.0 + 1e-12:
        raise EntropyError("bad Huffman table (not a prefix code)")
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
            raise EntropyError("Huffman stream cut short")
        s = sym_at[p]
        if s < 0:
            raise EntropyError("invalid Huffman code")
        out[k] = s
        p += len_at[p]
    if p > nbits:
        raise EntropyError("Huffman stream cut short")
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
        raise EntropyError("fixed-width stream has the wrong length")
    arr = np.frombuffer(data, dtype=np.uint8)
    return unpack_fixed(arr, w, n).astype(np.int64) if w <= 8 else unpack_fixed_wide(arr, w, n)


_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]  # streams are small


def _bytes_of(sym: np.ndarray, alphabet: int) -> bytes:
    if alphabet > 256:
        raise ValueError("byte codecs need an alphabet of at most 256")
    return sym.astype(np.uint8).tobytes()


def _from_bytes(raw: bytes, n: int) -> np.ndarray:
    if len(raw) != n:
        raise EntropyError("stream decodes to the wrong number of symbols")
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)


def deflate(raw: bytes, zdict: Optional[bytes] = None) -> bytes:
    """Raw deflate (level 9, wbits -15), optionally with a preset dictionary."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, **({"zdict": zdict} if zdict else {}))
    return c.compress(raw) + c.flush()


CODECS: Dict[str, Tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes, int, int], np.ndarray]]] = {
    "fixed": (_fixed_enc, _fixed_dec),
    "huffman": (huffman_encode, huffman_decode),
    "lzma": (lambda s, a: lzma.compress(_bytes_of(s, a), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
             lambda d, a, n: _from_bytes(lzma.decompress(d, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS), n)),
    "deflate": (lambda s, a: deflate(_bytes_of(s, a)),
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
        raise EntropyError(f"unknown codec {codec!r}")
    try:
        out = CODECS[codec][1](data, alphabet, n)
    except (zlib.error, lzma.LZMAError) as exc:
        raise EntropyError(f"{codec} stream is corrupt ({exc})") from None
    if out.size != n or (n and (int(out.min()) < 0 or int(out.max()) >= alphabet)):
        raise EntropyError("stream decodes to the wrong symbols")
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


def best_positions(positions: np.ndarray) -> Tuple[int, str, bytes, int]:
    """``(g, codec, bytes, count)`` of the smallest gap coding of sorted ``positions`` over g = 1..8."""
    best = None
    for g in range(1, 9):
        sym = gaps_encode(positions, g)
        codec, data = encode_symbols(sym, 1 << g)
        if best is None or len(data) < len(best[2]):
            best = (g, codec, data, int(sym.size))
    assert best is not None
    return best



# ---------------------------------------------------------------------- byte streams
STORED, DEFLATE, LZMA = 0, 1, 2
_BYTES_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def encode_bytes(raw: bytes) -> bytes:
    """One tag byte (0 stored, 1 deflate, 2 LZMA2) + the smallest of the three payloads."""
    raw = bytes(raw)
    candidates = [
        bytes([DEFLATE]) + deflate(raw),
        bytes([LZMA]) + lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_BYTES_LZMA_FILTERS),
        bytes([STORED]) + raw,
    ]
    return min(candidates, key=len)


def decode_bytes(blob: bytes) -> bytes:
    """Inverse of :func:`encode_bytes`; :class:`EntropyError` on an empty, unknown or corrupt stream."""
    if not blob:
        raise EntropyError("coded byte stream is empty")
    codec, payload = blob[0], bytes(blob[1:])
    try:
        if codec == STORED:
            return payload
        if codec == DEFLATE:
            return zlib.decompress(payload, wbits=-15)
        if codec == LZMA:
            return lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=_BYTES_LZMA_FILTERS)
    except (zlib.error, lzma.LZMAError) as exc:
        raise EntropyError(f"coded byte stream: the payload is corrupt ({exc})") from None
    raise EntropyError(f"coded byte stream: unknown codec tag {codec}")
