"""Model updates sent packed: int8 per channel, then entropy-coded; a client Mod and a server Grid.

**What is sent.** An ``ArrayRecord`` (the model, ``name -> Array``) becomes a ``ConfigRecord``
holding one ``bytes`` value under the key ``"aecomp.int8z/1"``, in the same place of the message
(Flower's documented way to carry custom serialized data; one object on the wire where an
ArrayRecord costs three per array: ArrayRecord, Array, ArrayChunk, each with a 64-hex-digit id).
Each float32 array ``W`` with at least one element is quantized like
``aecomp.compress.quantize`` (rows: the first dimension, a 1-D array is one row)::

    s_r   = max_j |V_rj| / 127          (float32; a zero row gets s_r = 1)
    q_rj  = clamp(round(V_rj / s_r), -127, 127)          int8
    V'_rj = q_rj * s_r                  (float32)

where ``V = W`` (``absolute``) or, when the receiver holds a reference ``R`` of the same name and
shape, ``V = W - R`` (``delta``) and the receiver rebuilds ``W' = R + V'`` (float32 add). Other
arrays (integer, float64, empty, scalars) travel raw, bit for bit. The packed stream::

    "AEQ1" | u16 count | per array: u16 name length, name (utf-8), u8 kind (0 raw, 1 absolute,
    2 delta), u8 dtype length, dtype (numpy str, e.g. "<f4"), u8 ndim, u32 dims...
    | all scales (float32, array order) | all q (int8, array order) | all raw data (C order)

is coded by the project's one coder (:func:`aecomp.compress.entropy.encode_bytes`): the smallest
of stored, raw DEFLATE and raw LZMA2, named by the first byte (0, 1, 2). The int8 deltas of one
round are mostly small, so the LZ stage takes a further share off the 4x of int8.

**Bit-exact.** Sender and receiver compute ``V'`` and ``W'`` with the same float32 operations, so
:func:`encode_arrays` returns, next to the bytes, exactly the arrays :func:`decode_arrays` will
rebuild from them (``tests/test_fl.py`` checks the equality bit for bit). The server keeps that
copy of what it sent as the reference for the clients' replies.

**Where.** :func:`coded_mod` is a Flower client Mod (``ClientApp(mods=[coded_mod])``): a message
that arrives coded is decoded before the ClientApp sees it, and the ClientApp's reply is coded as
the delta against what it received. A message that arrives uncoded passes through untouched, so
one ClientApp serves coded and plain servers. :class:`CodedGrid` is the server half: it wraps the
ServerApp's ``Grid``, codes every ``ArrayRecord`` it pushes (absolute: the clients keep no state)
and decodes every reply (delta against what that node was sent) before the strategy sees it; the
strategy (FedAvg or any other) works on plain float arrays and never knows. Server -> client
traffic is lossy too: the clients train from the int8-rounded global model; the server's global
model stays float32.
"""
from __future__ import annotations

import copy
import struct
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.error import Error
from flwr.app.message import make_message

from ..compress.entropy import EntropyError, decode_bytes, encode_bytes
from ..compress.quantize import quantize_per_channel
from .grid import GridWrapper

__all__ = [
    "CODED_KEY",
    "CodedGrid",
    "CodingError",
    "coded_mod",
    "decode_arrays",
    "decode_record",
    "encode_arrays",
    "encode_record",
    "is_coded",
]

CODED_KEY = "aecomp.int8z/1"  # the one key of a coded ConfigRecord, naming the format
MAGIC = b"AEQ1"
RAW, ABSOLUTE, DELTA = 0, 1, 2
CODED_ERROR = 9001  # Error code of a reply the server could not decode


class CodingError(ValueError):
    """A coded stream that cannot be decoded (truncated, corrupt, or missing its reference)."""


# ---------------------------------------------------------------------- arrays <-> bytes
def _quantizable(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.ndim >= 1 and a.size > 0


def _rows(shape: Tuple[int, ...]) -> int:
    return int(shape[0]) if len(shape) >= 2 else 1


def _dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``q * s[:, None]`` in float32 (the one formula both ends use)."""
    return q.astype(np.float32) * s.astype(np.float32)[:, None]


def _entropy_code(body: bytes) -> bytes:
    return encode_bytes(body)


def _entropy_decode(blob: bytes) -> bytes:
    try:
        return decode_bytes(blob)
    except EntropyError as exc:
        raise CodingError(f"coded stream: {exc}") from None


def encode_arrays(arrays: Mapping[str, np.ndarray], reference: Optional[Mapping[str, np.ndarray]] = None,
                  ) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """``(blob, decoded)``: the coded bytes of ``arrays`` and exactly what :func:`decode_arrays`
    rebuilds from them (with the same ``reference``). See the module docstring for the format."""
    index: List[bytes] = []
    scales: List[bytes] = []
    codes: List[bytes] = []
    raws: List[bytes] = []
    decoded: Dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        a = np.asarray(value, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        ref = None if reference is None else reference.get(name)
        kind = RAW
        if _quantizable(a):
            kind = DELTA if (ref is not None and ref.shape == a.shape and ref.dtype == np.float32) else ABSOLUTE
        if kind == RAW:
            raws.append(a.tobytes())
            decoded[name] = a.copy()
        else:
            v = a.reshape(_rows(a.shape), -1)
            if kind == DELTA:
                v = v - np.asarray(ref, dtype=np.float32).reshape(v.shape)
            q, s = quantize_per_channel(torch.from_numpy(np.ascontiguousarray(v)))
            q, s = q.numpy(), s.numpy().astype(np.float32)
            scales.append(s.tobytes())
            codes.append(q.tobytes())
            out = _dequantize(q, s)
            if kind == DELTA:
                out = np.asarray(ref, dtype=np.float32).reshape(out.shape) + out
            decoded[name] = out.reshape(a.shape)
        name_b = name.encode("utf-8")
        dtype_b = a.dtype.str.encode("ascii")
        if len(name_b) > 0xFFFF or a.ndim > 255:
            raise CodingError(f"encode_arrays: array {name!r} has a name or rank too large to code")
        index.append(struct.pack("<H", len(name_b)) + name_b + struct.pack("<BB", kind, len(dtype_b)) + dtype_b
                     + struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape))
    if len(index) > 0xFFFF:
        raise CodingError(f"encode_arrays: {len(index)} arrays, at most 65535 fit in one coded record")
    body = MAGIC + struct.pack("<H", len(index)) + b"".join(index) + b"".join(scales) + b"".join(codes) + b"".join(raws)
    return _entropy_code(body), decoded


def decode_arrays(blob: bytes, reference: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The arrays coded in ``blob``; ``reference`` must hold every array coded as a delta."""
    body = _entropy_decode(blob)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(body):
            raise CodingError(f"coded stream is truncated (needs {pos + n} bytes, has {len(body)})")
        out = body[pos:pos + n]
        pos += n
        return out

    if take(4) != MAGIC:
        raise CodingError("coded stream does not start with the aecomp magic 'AEQ1'")
    (count,) = struct.unpack("<H", take(2))
    entries = []
    for _ in range(count):
        (name_len,) = struct.unpack("<H", take(2))
        name = take(name_len).decode("utf-8")
        kind, dtype_len = struct.unpack("<BB", take(2))
        dtype = np.dtype(take(dtype_len).decode("ascii"))
        (ndim,) = struct.unpack("<B", take(1))
        shape = tuple(struct.unpack(f"<{ndim}I", take(4 * ndim)))
        if kind not in (RAW, ABSOLUTE, DELTA):
            raise CodingError(f"coded stream: array {name!r} has unknown kind {kind}")
        entries.append((name, kind, dtype, shape))
    quantized = [(n, k, d, s) for n, k, d, s in entries if k != RAW]
    scales = {n: np.frombuffer(take(4 * _rows(s)), dtype=np.float32) for n, _, _, s in quantized}
    codes = {n: np.frombuffer(take(int(np.prod(s))), dtype=np.int8).reshape(_rows(s), -1) for n, _, _, s in quantized}
    out: Dict[str, np.ndarray] = {}
    for name, kind, dtype, shape in entries:
        if kind == RAW:
            out[name] = np.frombuffer(take(dtype.itemsize * int(np.prod(shape))), dtype=dtype).reshape(shape).copy()
            continue
        value = _dequantize(codes[name], scales[name])
        if kind == DELTA:
            ref = None if reference is None else reference.get(name)
            if ref is None or tuple(ref.shape) != shape:
                raise CodingError(f"coded stream: array {name!r} is a delta but the receiver holds no reference "
                                  f"of shape {list(shape)} for it")
            value = np.asarray(ref, dtype=np.float32).reshape(value.shape) + value
        out[name] = value.reshape(shape)
    if pos != len(body):
        raise CodingError(f"coded stream has {len(body) - pos} bytes after its last array")
    return out


# ---------------------------------------------------------------------- ArrayRecord <-> coded ConfigRecord
def is_coded(record) -> bool:
    """True for a record made by :func:`encode_record`."""
    return (isinstance(record, ConfigRecord) and list(record.keys()) == [CODED_KEY]
            and isinstance(record[CODED_KEY], bytes))


def encode_record(record: ArrayRecord, reference: Optional[Mapping[str, np.ndarray]] = None,
                  ) -> Tuple[ConfigRecord, Dict[str, np.ndarray]]:
    """``(coded record, decoded arrays)``; see :func:`encode_arrays`."""
    blob, decoded = encode_arrays({k: v.numpy() for k, v in record.items()}, reference)
    return ConfigRecord({CODED_KEY: blob}), decoded


def decode_record(record: ConfigRecord, reference: Optional[Mapping[str, np.ndarray]] = None,
                  ) -> Tuple[ArrayRecord, Dict[str, np.ndarray]]:
    """``(plain record, its arrays)`` from a coded record."""
    arrays = decode_arrays(record[CODED_KEY], reference)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()}), arrays


def _with_records(msg: Message, records: Mapping[str, Any]) -> Message:
    """A new Message with ``msg``'s metadata (a copy) and content, ``records`` swapped in; ``msg``
    itself is left as it was (Flower's ``Message(metadata=m)`` would reset ``m.delivered_at``)."""
    content = RecordDict({k: records.get(k, v) for k, v in msg.content.items()})
    out = make_message(metadata=copy.copy(msg.metadata), content=content)
    out.metadata.delivered_at = msg.metadata.delivered_at
    return out


# ---------------------------------------------------------------------- client: the Mod
def coded_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower client Mod: decode a coded incoming message, code the reply as a delta against it."""
    if not msg.has_content():
        return call_next(msg, context)
    coded = {k: r for k, r in msg.content.items() if is_coded(r)}
    if not coded:
        return call_next(msg, context)
    received: Dict[str, Dict[str, np.ndarray]] = {}
    plain: Dict[str, ArrayRecord] = {}
    for key, rec in coded.items():
        plain[key], received[key] = decode_record(rec)
    reply = call_next(_with_records(msg, plain), context)
    if reply.has_error() or not reply.has_content():
        return reply
    out: Dict[str, ConfigRecord] = {}
    for key, rec in reply.content.array_records.items():
        ref = received.get(key, next(iter(received.values())) if len(received) == 1 else None)
        out[key], _ = encode_record(rec, ref)
    return _with_records(reply, out)


# ---------------------------------------------------------------------- server: the Grid
class CodedGrid(GridWrapper):
    """The server half of :func:`coded_mod`: codes what it pushes, decodes what it pulls."""

    def __init__(self, inner, pull_interval: float = 0.1) -> None:
        super().__init__(inner, pull_interval)
        self._sent: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}  # message id -> record key -> arrays

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        cache: Dict[int, Tuple[ConfigRecord, Dict[str, np.ndarray]]] = {}  # one coding per shared record
        refs = []
        for i, msg in enumerate(messages):
            if not msg.has_content():
                refs.append({})
                continue
            swapped, sent = {}, {}
            for key, rec in msg.content.array_records.items():
                if id(rec) not in cache:
                    cache[id(rec)] = encode_record(rec)
                swapped[key], sent[key] = cache[id(rec)]
            messages[i] = _with_records(msg, swapped)
            refs.append(sent)
        ids = list(self.inner.push_messages(messages))
        for msg, sent in zip(messages, refs):
            if sent and msg.metadata.message_id:
                self._sent[msg.metadata.message_id] = sent
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for reply in self.inner.pull_messages(message_ids):
            sent = self._sent.pop(reply.metadata.reply_to_message_id, {})
            if reply.has_content():
                reply = self._decode(reply, sent)
            out.append(reply)
        return out

    def _decode(self, reply: Message, sent: Dict[str, Dict[str, np.ndarray]]) -> Message:
        plain = {}
        try:
            for key, rec in reply.content.items():
                if is_coded(rec):
                    ref = sent.get(key, next(iter(sent.values())) if len(sent) == 1 else None)
                    plain[key], _ = decode_record(rec, ref)
        except CodingError as exc:  # a corrupt reply is a failed reply, not a crashed server
            return make_message(metadata=copy.copy(reply.metadata), error=Error(CODED_ERROR, f"aecomp coded reply: {exc}"))
        return _with_records(reply, plain)

    def forget(self, message_ids: Iterable[str]) -> None:
        for i in message_ids:
            self._sent.pop(i, None)
        super().forget(message_ids)
