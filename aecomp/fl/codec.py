"""The array codec of :mod:`aecomp.fl.compression` (numpy and the project's coder only; no flwr).

See :mod:`aecomp.fl.compression` for the math: deltas against a reference, top-k with error
feedback, int8 / k-means / float32 codes of the kept values, positions and codes entropy-coded
with :mod:`aecomp.compress.entropy`. :func:`encode_arrays` returns, beside the bytes, exactly the
arrays :func:`decode_arrays` rebuilds from them (the same float32 operations on both ends).
"""
from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..compress.entropy import CODECS, EntropyError, best_positions, decode_symbols, encode_symbols, gaps_decode
from ..compress.quantize import QMAX, dequantize_per_channel, quantize_per_channel
from ..compress.share import assign, kmeans_1d

__all__ = ["CODES", "Codec", "CodingError", "Reader", "ZERO_VERSION", "decode_arrays", "encode_arrays",
           "parse_codec", "text_bytes", "varint", "version_of"]

ZERO_VERSION = bytes(8)
CODES = ("float32", "int8", "kmeans")
_CODEC_NAMES = tuple(CODECS)  # symbol codecs, by index on the wire
RAW, CODED = 0, 1


class CodingError(ValueError):
    """A coded message that cannot be decoded (truncated, corrupt, unknown, or against a reference
    the receiver does not hold); the message is one line."""


# ---------------------------------------------------------------------- the codec
@dataclass(frozen=True)
class Codec:
    """How arrays are sent (module docstring): ``topk`` fraction of each array's entries kept
    (1.0: dense), ``codes`` ``"int8"``, ``"kmeans"`` (with ``bits`` in 2..8) or ``"float32"``."""

    topk: float = 1.0
    codes: str = "int8"
    bits: int = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.topk, (int, float)) and math.isfinite(self.topk) and 0.0 < self.topk <= 1.0):
            raise ValueError(f"Codec: topk must be a fraction in (0, 1], got {self.topk!r}")
        if self.codes not in CODES:
            raise ValueError(f"Codec: codes must be one of {', '.join(CODES)}, got {self.codes!r}")
        if self.codes == "kmeans" and (not isinstance(self.bits, int) or not 2 <= self.bits <= 8):
            raise ValueError(f"Codec: kmeans needs bits in 2..8, got {self.bits!r}")

    @property
    def spec(self) -> str:
        codes = f"kmeans:{self.bits}" if self.codes == "kmeans" else self.codes
        return codes if self.topk >= 1.0 else f"top{self.topk:g}+{codes}"


def parse_codec(text: str) -> Codec:
    """``"int8"``, ``"kmeans:4"``, ``"float32"``, optionally preceded by ``"topP+"`` (``"top0.1+kmeans:4"``)."""
    t = str(text).strip().lower()
    topk = 1.0
    if t.startswith("top"):
        head, _, t = t.partition("+")
        try:
            topk = float(head[3:])
        except ValueError:
            raise ValueError(f"coding {text!r}: expected topP+CODES with P a fraction, e.g. top0.1+kmeans:4") from None
    codes, _, bits = t.partition(":")
    try:
        if codes == "kmeans":
            return Codec(topk=topk, codes="kmeans", bits=int(bits) if bits else 4)
        if bits:
            raise ValueError(f"{codes} takes no ':BITS'")
        return Codec(topk=topk, codes=codes)
    except ValueError as exc:
        raise ValueError(f"coding {text!r}: {exc} (e.g. int8, kmeans:4, top0.05+kmeans:3, float32)") from None


# ---------------------------------------------------------------------- byte helpers
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Reader:
    def __init__(self, body: bytes) -> None:
        self.body, self.pos = body, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.body):
            raise CodingError(f"coded message is truncated (needs {self.pos + n} bytes, has {len(self.body)})")
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise CodingError("coded message has a malformed length field")

    def text(self) -> str:
        try:
            return self.take(self.varint()).decode("utf-8")
        except UnicodeDecodeError:
            raise CodingError("coded message has a malformed name") from None


def text_bytes(s: str) -> bytes:
    b = s.encode("utf-8")
    return varint(len(b)) + b


def version_of(arrays: Optional[Mapping[str, np.ndarray]]) -> bytes:
    """8-byte BLAKE2b digest of ``arrays`` (names, dtypes, shapes, bytes, in order); zeros for None."""
    if arrays is None:
        return ZERO_VERSION
    h = hashlib.blake2b(digest_size=8)
    for name, a in arrays.items():
        h.update(text_bytes(name) + text_bytes(a.dtype.str) + varint(a.ndim) + b"".join(varint(int(d)) for d in a.shape))
        h.update(np.ascontiguousarray(a).tobytes())
    out = h.digest()
    return out if out != ZERO_VERSION else b"\x01" + out[1:]


def _layout(arrays: Mapping[str, np.ndarray]) -> List[Tuple[str, np.dtype, Tuple[int, ...]]]:
    return [(n, a.dtype, tuple(int(d) for d in a.shape)) for n, a in arrays.items()]


def _quantizable(dtype: np.dtype, shape: Tuple[int, ...]) -> bool:
    return dtype == np.float32 and len(shape) >= 1 and int(np.prod(shape)) > 0


# ---------------------------------------------------------------------- one array
def _topk(v: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the ``k`` largest ``|v|`` (ties: the lower index)."""
    if k >= v.size:
        return np.arange(v.size, dtype=np.int64)
    order = np.argsort(-np.abs(v), kind="stable")[:k]
    return np.sort(order).astype(np.int64)


def _encode_values(values: np.ndarray, codec: Codec, rows: int) -> Tuple[bytes, np.ndarray]:
    """``(stream, decoded)`` of the kept values (``rows`` > 1 only when dense: per-row int8 scales)."""
    if codec.codes == "float32":
        return values.astype("<f4").tobytes(), values.astype(np.float32)
    if codec.codes == "int8":
        q, s = quantize_per_channel(torch.from_numpy(np.ascontiguousarray(values.reshape(rows, -1))))
        decoded = dequantize_per_channel(q, s).reshape(-1).numpy()
        codec_name, data = encode_symbols(q.reshape(-1).numpy().astype(np.int64) + QMAX, 2 * QMAX + 1)
        head = s.numpy().astype("<f4").tobytes()
    else:
        centroids = kmeans_1d(torch.from_numpy(values), 1 << codec.bits).numpy().astype(np.float16)
        book = torch.from_numpy(centroids.astype(np.float32))
        codes = assign(torch.from_numpy(values), book).numpy().astype(np.int64)
        decoded = centroids.astype(np.float32)[codes]
        codec_name, data = encode_symbols(codes, 1 << codec.bits)
        head = centroids.astype("<f2").tobytes()
    return head + bytes([_CODEC_NAMES.index(codec_name)]) + varint(len(data)) + data, decoded


def _decode_values(r: Reader, codec: Codec, k: int, rows: int) -> np.ndarray:
    if codec.codes == "float32":
        return np.frombuffer(r.take(4 * k), dtype="<f4").astype(np.float32)
    if codec.codes == "int8":
        scale = np.frombuffer(r.take(4 * rows), dtype="<f4").astype(np.float32)
        alphabet = 2 * QMAX + 1
    else:
        book = np.frombuffer(r.take(2 << codec.bits), dtype="<f2").astype(np.float32)
        alphabet = 1 << codec.bits
    sym = _symbols(r, alphabet, k)
    if codec.codes == "int8":
        q = torch.from_numpy((sym - QMAX).astype(np.int8).reshape(rows, -1))
        return dequantize_per_channel(q, torch.from_numpy(scale)).reshape(-1).numpy()
    return book[sym]


def _symbols(r: Reader, alphabet: int, n: int) -> np.ndarray:
    which = r.take(1)[0]
    if which >= len(_CODEC_NAMES):
        raise CodingError(f"coded message names an unknown symbol codec ({which})")
    data = r.take(r.varint())
    try:
        return decode_symbols(_CODEC_NAMES[which], data, alphabet, n)
    except (EntropyError, ValueError) as exc:
        raise CodingError(f"coded message: a symbol stream is corrupt ({exc})") from None


def _encode_array(a: np.ndarray, ref: Optional[np.ndarray], residual: Optional[np.ndarray], codec: Codec,
                  ) -> Tuple[bytes, np.ndarray, Optional[np.ndarray]]:
    """``(stream, W', new residual)`` of one float32 array (module docstring)."""
    n = a.size
    v = a.reshape(-1).astype(np.float32)
    if ref is not None:
        v = v - ref.reshape(-1)
    if residual is not None:
        v = v + residual.reshape(-1)
    k = n if codec.topk >= 1.0 else max(1, math.ceil(codec.topk * n))
    idx = _topk(v, k)
    dense = k == n
    rows = (a.shape[0] if a.ndim >= 2 else 1) if dense else 1
    values_stream, decoded_values = _encode_values(v[idx], codec, rows)
    out = varint(k)
    if not dense:
        g, codec_name, data, count = best_positions(idx)
        out += bytes([g, _CODEC_NAMES.index(codec_name)]) + varint(count) + varint(len(data)) + data
    out += values_stream
    delta = np.zeros(n, dtype=np.float32)
    delta[idx] = decoded_values
    rebuilt = delta if ref is None else ref.reshape(-1) + delta
    new_residual = (v - delta) if residual is not None else None
    return out, rebuilt.reshape(a.shape), None if new_residual is None else new_residual.reshape(a.shape)


def _decode_array(r: Reader, shape: Tuple[int, ...], ref: Optional[np.ndarray], codec: Codec) -> np.ndarray:
    n = int(np.prod(shape))
    k = r.varint()
    if not 1 <= k <= n:
        raise CodingError(f"coded message keeps {k} of {n} entries of an array")
    if k == n:
        idx = np.arange(n, dtype=np.int64)
        rows = shape[0] if len(shape) >= 2 else 1
    else:
        g, which = r.take(2)
        count = r.varint()
        if not 1 <= g <= 8 or which >= len(_CODEC_NAMES) or count > n * 2 + 8:
            raise CodingError("coded message has a malformed position stream")
        data = r.take(r.varint())
        try:
            idx = gaps_decode(decode_symbols(_CODEC_NAMES[which], data, 1 << g, count), g)
        except (EntropyError, ValueError) as exc:
            raise CodingError(f"coded message: a position stream is corrupt ({exc})") from None
        if idx.size != k or (k and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0))):
            raise CodingError("coded message: the kept positions do not fit the array")
        rows = 1
    delta = np.zeros(n, dtype=np.float32)
    delta[idx] = _decode_values(r, codec, k, rows)
    out = delta if ref is None else ref.reshape(-1) + delta
    return out.reshape(shape)


# ---------------------------------------------------------------------- arrays <-> bytes
def codec_bytes(c: Codec) -> bytes:
    return struct.pack("<fBB", c.topk, CODES.index(c.codes), c.bits)


def read_codec(r: Reader) -> Codec:
    topk, codes, bits = struct.unpack("<fBB", r.take(6))
    if codes >= len(CODES):
        raise CodingError(f"coded message names an unknown code kind ({codes})")
    try:
        return Codec(topk=float(f"{topk:.7g}"), codes=CODES[codes], bits=bits)  # float32 on the wire
    except ValueError as exc:
        raise CodingError(f"coded message has a bad codec ({exc})") from None


def encode_arrays(arrays: Mapping[str, np.ndarray], codec: Codec,
                  reference: Optional[Mapping[str, np.ndarray]] = None,
                  residual: Optional[Mapping[str, np.ndarray]] = None,
                  ) -> Tuple[bytes, Dict[str, np.ndarray], Optional[Dict[str, np.ndarray]]]:
    """``(stream, rebuilt, new residual)``: the coded bytes of ``arrays`` (deltas against
    ``reference`` when its layout matches, else against zero, layout included), exactly what
    :func:`decode_arrays` rebuilds from them, and the error-feedback residual when ``residual``
    is given (an empty mapping starts one). Not entropy-coded as a whole: see :func:`encode_message`."""
    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}
    layout = _layout(arrays)
    if reference is not None and _layout(reference) != layout:
        reference = None
    out = [version_of(reference), codec_bytes(codec)]
    if reference is None:
        out.append(varint(len(layout)))
        for name, dtype, shape in layout:
            out.append(text_bytes(name) + text_bytes(dtype.str) + varint(len(shape)) + b"".join(varint(d) for d in shape))
    rebuilt: Dict[str, np.ndarray] = {}
    new_res: Optional[Dict[str, np.ndarray]] = {} if residual is not None else None
    for name, dtype, shape in layout:
        a = arrays[name]
        if not _quantizable(dtype, shape):
            out.append(bytes([RAW]) + a.tobytes())
            rebuilt[name] = a.copy()
            continue
        ref = None if reference is None else np.asarray(reference[name], dtype=np.float32)
        res = None
        if residual is not None:
            prev = residual.get(name)
            res = prev if prev is not None and prev.shape == a.shape else np.zeros(a.shape, np.float32)
        stream, rebuilt[name], r_new = _encode_array(a, ref, res, codec)
        out.append(bytes([CODED]) + stream)
        if new_res is not None:
            new_res[name] = r_new
    return b"".join(out), rebuilt, new_res


def decode_arrays(r: Reader, references: Mapping[bytes, Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The arrays coded at ``r``; ``references`` maps versions the receiver holds to their arrays."""
    version = r.take(8)
    codec = read_codec(r)
    if version == ZERO_VERSION:
        ref = None
        layout = []
        for _ in range(r.varint()):
            name = r.text()
            try:
                dtype = np.dtype(r.text())
            except TypeError:
                raise CodingError(f"coded message: array {name!r} has an unknown dtype") from None
            shape = tuple(r.varint() for _ in range(r.varint()))
            layout.append((name, dtype, shape))
    else:
        ref = references.get(version)
        if ref is None:
            held = ", ".join(v.hex() for v in references if v != ZERO_VERSION) or "none"
            raise CodingError(f"coded message is a delta against version {version.hex()}, but this end holds "
                              f"{held}; the sender must resend against the zero reference")
        layout = _layout(ref)
    out: Dict[str, np.ndarray] = {}
    for name, dtype, shape in layout:
        kind = r.take(1)[0]
        if kind == RAW:
            n = dtype.itemsize * int(np.prod(shape))
            out[name] = np.frombuffer(r.take(n), dtype=dtype).reshape(shape).copy()
        elif kind == CODED and _quantizable(dtype, shape):
            out[name] = _decode_array(r, shape, None if ref is None else np.asarray(ref[name], np.float32), codec)
        else:
            raise CodingError(f"coded message: array {name!r} has a bad kind {kind}")
    return out


