"""Compressed Flower messages for any app and any model: a client Mod and its server-side Grid.

Flower ships no communication compression (its mods clip, add noise, aggregate securely, or log
sizes). This module adds it, both directions, as a drop-in::

    app = ClientApp(mods=[aecomp.fl.compression_mod()])            # client
    grid = aecomp.fl.CompressionGrid(grid, down=Codec(...), up=Codec(...))  # in the ServerApp's main
    FedAvg(...).start(grid, ...)                                   # any strategy, plain float arrays

**What an array becomes** (every float32 array with at least one element; other arrays, e.g.
integer counters, travel raw, bit for bit). With ``R`` the reference both ends hold (below; zero
when there is none) and, on the client, ``e`` its error-feedback residual::

    V   = W - R (+ e)                               the update (delta against the last global model)
    S   = the k = max(1, ceil(topk * n)) entries of V largest in |V| (ties: lower index first)
    c   = codes of V[S]:  int8  q = clamp(round(v / s), -127, 127), s = max|v| / 127 (one scale
                                per row when dense, else one for the array: aecomp.compress.quantize)
                          kmeans:B  the 2^B centroids of V[S] (aecomp.compress.share.kmeans_1d, linear
                                init), rounded to float16; c = index of the nearest
                          float32  the values themselves (lossless)
    V'  = zeros, V'[S] = decode(c)                  float32, identical on both ends
    W'  = R + V'                                    what the receiver rebuilds
    e  <- V - V'                                    (client, error feedback: what was not sent is
                                                    added to the next round's update, as in Deep
                                                    Gradient Compression's local accumulation)

**Coding** (the project's one coder, :mod:`aecomp.compress.entropy`): the kept positions as gap
symbols (:func:`~aecomp.compress.entropy.best_positions`), the codes as a symbol stream
(:func:`~aecomp.compress.entropy.encode_symbols`), the whole message through
:func:`~aecomp.compress.entropy.encode_bytes`. The message's other records (config, metrics) ride
in the same blob as Flower's own serialization of them (``record.deflate()``), so a coded message
is three Flower objects (Message, RecordDict, one ConfigRecord holding one ``bytes`` value under
:data:`CODED_KEY`) whatever it carries.

**References** (what ``R`` is). The server keeps, per node and record key, the arrays that node
holds (exactly what it decoded, since both ends compute ``W'`` with the same float32 operations)
and a version: an 8-byte BLAKE2b digest of names, dtypes, shapes and bytes. A message names the
version it is a delta against; the client checks it holds that version (its reference lives in
``context.state``) and otherwise fails with one clear error. A node is trusted to hold what it
was sent only after it replied without error; a node that failed, timed out or is new gets its
next message against the zero reference (``R = 0``, layout included), which any client can apply,
and which also starts a new error-feedback residual (what a residual accumulated belongs to the
run it came from: a new run, or a new job of the same app, must not inherit it).
Downlink deltas need no residual: the next delta ``G - R`` already carries what the last one left.

**Bad messages.** Every blob carries a CRC-32 of its decoded payload. A message that is
truncated, corrupt, of an unknown format or against a reference the receiver does not hold
raises :class:`CodingError` on the receiving side: in the client Mod Flower turns it into an
error reply (the round goes on with the others); in the Grid the reply becomes an error reply
(code :data:`CODED_ERROR`) that the strategy leaves out of the average. Nothing is decoded wrong
silently.
"""
from __future__ import annotations

import copy
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.app.message import make_message

from ..compress.entropy import EntropyError, decode_bytes, encode_bytes
from .codec import (ZERO_VERSION, Codec, CodingError, Reader, codec_bytes, decode_arrays, encode_arrays, parse_codec,
                    read_codec, text_bytes, varint, version_of)
from .grid import GridWrapper

__all__ = [
    "CODED_ERROR",
    "CODED_KEY",
    "Codec",
    "CodingError",
    "CompressionGrid",
    "compression_mod",
    "decode_message",
    "encode_message",
    "is_coded",
    "parse_codec",
]

CODED_KEY = "aecomp.fl/2"  # the one key of a coded ConfigRecord, naming the format
CODED_RECORD = "aecomp.coded"  # the one record of a coded message's RecordDict
MAGIC = b"AEF2"
CODED_ERROR = 9001  # Error code of a reply the server could not decode
STATE_PREFIX = "aecomp.fl."  # keys of the client's context.state this Mod owns
_RECORD_TYPES = {"config": (0, ConfigRecord), "metric": (1, MetricRecord)}


# ---------------------------------------------------------------------- messages
@dataclass
class _Coded:
    """What both ends know about one coded RecordDict: per array record, the arrays the
    receiver rebuilt (and, client side, the residual)."""

    blob: bytes
    arrays: Dict[str, Dict[str, np.ndarray]]
    residuals: Dict[str, Optional[Dict[str, np.ndarray]]]


def encode_message(content: RecordDict, codec: Codec, references: Mapping[str, Optional[Mapping[str, np.ndarray]]],
                   residuals: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
                   reply_codec: Optional[Codec] = None) -> _Coded:
    """Code a whole RecordDict: every ArrayRecord (against ``references[key]``), every other
    record as Flower serializes it. ``reply_codec`` (server -> client) tells the client how to
    code its reply. ``residuals`` (client -> server) turns error feedback on."""
    parts = [codec_bytes(reply_codec) if reply_codec is not None else b"\0" * 6, varint(len(content))]
    arrays: Dict[str, Dict[str, np.ndarray]] = {}
    res_out: Dict[str, Optional[Dict[str, np.ndarray]]] = {}
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            res = None if residuals is None else residuals.get(key, {})
            body, arrays[key], res_out[key] = encode_arrays({k: v.numpy() for k, v in rec.items()}, codec,
                                                             references.get(key), res)
            parts.append(bytes([2]) + text_bytes(key) + varint(len(body)) + body)
        else:
            kind = next((t for t, (_, cls) in _RECORD_TYPES.items() if isinstance(rec, cls)), None)
            if kind is None:
                raise CodingError(f"cannot code record {key!r} of type {type(rec).__name__}")
            data = rec.deflate()
            parts.append(bytes([_RECORD_TYPES[kind][0]]) + text_bytes(key) + varint(len(data)) + data)
    payload = b"".join(parts)
    body = MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload
    return _Coded(encode_bytes(body), arrays, res_out)


def decode_message(blob: bytes, references: Mapping[str, Mapping[bytes, Mapping[str, np.ndarray]]],
                   ) -> Tuple[RecordDict, Dict[str, Dict[str, np.ndarray]], Optional[Codec], set]:
    """``(content, arrays per record key, reply codec, keys sent against the zero reference)`` of
    a coded blob; ``references[key]`` maps the versions the receiver holds for that record key to
    their arrays."""
    try:
        body = decode_bytes(blob)
    except EntropyError as exc:
        raise CodingError(f"coded message: {exc}") from None
    if body[:4] != MAGIC:
        raise CodingError(f"coded message does not start with the magic {MAGIC.decode()} (another format?)")
    r = Reader(body)
    r.take(4)
    (crc,) = struct.unpack("<I", r.take(4))
    if zlib.crc32(body[8:]) != crc:
        raise CodingError("coded message fails its CRC-32 check (corrupt in transit)")
    head = r.take(6)
    reply_codec = None if head == b"\0" * 6 else read_codec(Reader(head))
    records: Dict[str, Any] = {}
    arrays: Dict[str, Dict[str, np.ndarray]] = {}
    fresh = set()
    for _ in range(r.varint()):
        kind = r.take(1)[0]
        key = r.text()
        data = r.take(r.varint())
        if kind == 2:
            if data[:8] == ZERO_VERSION:
                fresh.add(key)
            arrays[key] = decode_arrays(Reader(data), references.get(key, {}))
            records[key] = ArrayRecord({k: Array(v) for k, v in arrays[key].items()})
            continue
        cls = next((c for t, c in _RECORD_TYPES.values() if t == kind), None)
        if cls is None:
            raise CodingError(f"coded message: record {key!r} has an unknown type {kind}")
        try:
            records[key] = cls.inflate(data)
        except Exception as exc:  # Flower's own deserialization of a damaged record
            raise CodingError(f"coded message: record {key!r} does not deserialize ({exc})") from None
    if r.pos != len(body):
        raise CodingError(f"coded message has {len(body) - r.pos} bytes after its last record")
    return RecordDict(records), arrays, reply_codec, fresh


def is_coded(content: Any) -> bool:
    """True for a RecordDict made by this module (one ConfigRecord holding one bytes value)."""
    if not isinstance(content, RecordDict) or list(content.keys()) != [CODED_RECORD]:
        return False
    rec = content[CODED_RECORD]
    return isinstance(rec, ConfigRecord) and list(rec.keys()) == [CODED_KEY] and isinstance(rec[CODED_KEY], bytes)


def _coded_content(blob: bytes) -> RecordDict:
    return RecordDict({CODED_RECORD: ConfigRecord({CODED_KEY: blob})})


def _with_content(msg: Message, content: RecordDict) -> Message:
    """A new Message with ``msg``'s metadata (a copy) and ``content``; ``msg`` is left as it was
    (Flower's ``Message(metadata=m)`` would reset ``m.delivered_at``)."""
    out = make_message(metadata=copy.copy(msg.metadata), content=content)
    out.metadata.delivered_at = msg.metadata.delivered_at
    return out


# ---------------------------------------------------------------------- client: the Mod
def _state_arrays(state: RecordDict, key: str) -> Optional[Dict[str, np.ndarray]]:
    rec = state.get(key) if key in state else None
    if not isinstance(rec, ArrayRecord):
        return None
    return {k: v.numpy() for k, v in rec.items()}


def _store(state: RecordDict, key: str, arrays: Optional[Mapping[str, np.ndarray]]) -> None:
    if arrays is None:
        if key in state:
            del state[key]
        return
    # (np.ascontiguousarray would make a 0-d array 1-d, and the reference's version with it)
    state[key] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def compression_mod(codec: Optional[Codec] = None, *, error_feedback: bool = True) -> Callable:
    """A Flower client Mod: decodes a coded incoming message (against the reference this client
    holds in ``context.state``), hands the plain message to the ClientApp, and codes the reply's
    arrays as deltas against what it received, with ``codec`` (None: the one the server asks for
    in its message) and, if ``error_feedback``, a residual kept in ``context.state``. Messages
    that arrive plain pass through untouched, so one ClientApp serves coded and plain servers."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if not msg.has_content() or not is_coded(msg.content):
            return call_next(msg, context)
        state = context.state
        refs: Dict[str, Dict[bytes, Mapping[str, np.ndarray]]] = {}
        for key in _record_keys(state):
            held = _state_arrays(state, f"{STATE_PREFIX}ref.{key}")
            if held is not None:
                refs[key] = {version_of(held): held}
        content, received, asked, fresh = decode_message(msg.content[CODED_RECORD][CODED_KEY], refs)
        for key, arrays in received.items():  # this client now holds what it was sent
            _store(state, f"{STATE_PREFIX}ref.{key}", arrays)
        for key in fresh:  # a start from the zero reference (a new run, or after a failure): a new residual
            _store(state, f"{STATE_PREFIX}residual.{key}", None)
        reply = call_next(_with_content(msg, content), context)
        if reply.has_error() or not reply.has_content():
            return reply
        use = codec or asked or Codec()
        refs_up: Dict[str, Optional[Mapping[str, np.ndarray]]] = {}
        residuals: Optional[Dict[str, Mapping[str, np.ndarray]]] = {} if error_feedback else None
        for key, rec in reply.content.array_records.items():
            ref = received.get(key, next(iter(received.values())) if len(received) == 1 else None)
            refs_up[key] = ref
            if residuals is not None:
                residuals[key] = _state_arrays(state, f"{STATE_PREFIX}residual.{key}") or {}
        coded = encode_message(reply.content, use, refs_up, residuals)
        if residuals is not None:
            for key, res in coded.residuals.items():
                _store(state, f"{STATE_PREFIX}residual.{key}", res)
        return _with_content(reply, _coded_content(coded.blob))

    return mod


def _record_keys(state: RecordDict) -> List[str]:
    prefix = f"{STATE_PREFIX}ref."
    return [k[len(prefix):] for k in state.keys() if k.startswith(prefix)]


# ---------------------------------------------------------------------- server: the Grid
class CompressionGrid(GridWrapper):
    """The server half of :func:`compression_mod`: codes what it pushes (``down``, deltas against
    what each node holds), decodes what it pulls (deltas against what that node was sent), and
    asks the clients to code their replies with ``up``. The strategy sees plain float arrays."""

    def __init__(self, inner, down: Codec = Codec(), up: Codec = Codec(), pull_interval: float = 0.1) -> None:
        super().__init__(inner, pull_interval)
        self.down, self.up = down, up
        self._holds: Dict[Tuple[int, str], Dict[str, np.ndarray]] = {}  # (node, record key) -> its reference
        self._sent: Dict[str, Tuple[int, Dict[str, Dict[str, np.ndarray]]]] = {}  # message id -> (node, arrays)
        self.decode_failures = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        cache: Dict[Tuple, _Coded] = {}  # one coding per (content, references) shared by several nodes
        sent: List[Optional[Tuple[int, Dict[str, Dict[str, np.ndarray]]]]] = []
        for i, msg in enumerate(messages):
            if not msg.has_content():
                sent.append(None)
                continue
            node = msg.metadata.dst_node_id
            keys = list(msg.content.array_records.keys())
            refs = {k: self._holds.get((node, k)) for k in keys}
            cache_key = (id(msg.content),) + tuple(version_of(refs[k]) for k in keys)
            if cache_key not in cache:
                cache[cache_key] = encode_message(msg.content, self.down, refs, reply_codec=self.up)
            coded = cache[cache_key]
            messages[i] = _with_content(msg, _coded_content(coded.blob))
            sent.append((node, coded.arrays))
            for k in keys:  # trusted again only once this node has replied without error
                self._holds.pop((node, k), None)
        ids = list(self.inner.push_messages(messages))
        for msg, s in zip(messages, sent):
            if s is not None and msg.metadata.message_id:
                self._sent[msg.metadata.message_id] = s
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for reply in self.inner.pull_messages(message_ids):
            node, arrays = self._sent.pop(reply.metadata.reply_to_message_id, (None, {}))
            if reply.has_content() and is_coded(reply.content):
                reply = self._decode(reply, arrays)
            if node is not None and not reply.has_error():
                for key, a in arrays.items():
                    self._holds[(node, key)] = a
            out.append(reply)
        return out

    def _decode(self, reply: Message, sent: Dict[str, Dict[str, np.ndarray]]) -> Message:
        refs: Dict[str, Dict[bytes, Mapping[str, np.ndarray]]] = {}
        for key, arrays in sent.items():
            refs[key] = {version_of(arrays): arrays}
        if len(sent) == 1:  # a reply may carry its arrays under another key than the request's
            only = next(iter(sent.values()))
            refs = _AnyKey(refs, {version_of(only): only})
        try:
            content, _, _, _ = decode_message(reply.content[CODED_RECORD][CODED_KEY], refs)
        except CodingError as exc:  # a corrupt reply is a failed reply, not a crashed server
            self.decode_failures += 1
            return make_message(metadata=copy.copy(reply.metadata),
                                error=Error(CODED_ERROR, f"aecomp.fl: reply from node {reply.metadata.src_node_id} "
                                                         f"not decoded: {exc}"))
        return _with_content(reply, content)

    def forget(self, message_ids: Iterable[str]) -> None:
        for i in message_ids:
            self._sent.pop(i, None)
        super().forget(message_ids)


class _AnyKey(dict):
    """References by record key, with one fallback for keys the request did not have."""

    def __init__(self, refs, fallback) -> None:
        super().__init__(refs)
        self.fallback = fallback

    def get(self, key, default=None):
        return super().get(key, self.fallback)
