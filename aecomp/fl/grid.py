"""Bytes on the wire, measured: :func:`wire_bytes` and the :class:`CountingGrid`.

What Flower sends for one message (flwr 1.42, the Fleet API between SuperLink and SuperNode,
and the ServerAppIo API between ServerApp and SuperLink; ``flwr.supernode.fleet_http_connection``
and ``flwr.superlink.grid.http_grid``)::

    message_to_proto(remove_content_from_message(msg))   the metadata, in PushMessages / PullMessages
    get_object_tree(msg)                                  the tree of object ids, alongside it
    obj.deflate() for every obj in get_all_nested_objects(msg)
                                                          each object (the Message, its RecordDict,
                                                          every ArrayRecord / ConfigRecord /
                                                          MetricRecord, every Array and ArrayChunk),
                                                          one PushObject / PullObject each

:func:`wire_bytes` is the sum of those serialized sizes (``ByteSize()`` of the two protobufs plus
``len`` of each object's bytes): the payload Flower serializes to move the message. Not in it:
the per-request envelope fields (node id, run id: a few bytes per request), gRPC/HTTP framing
and TLS. In the simulation engine the message never leaves the process as bytes (it is handed
to the Ray actor as a Python object), so the count is of what the same message costs in a
deployment. The message id is an uuid in simulation and a 64-hex-digit object id in a
deployment: a difference of 28 bytes per message.

:class:`GridWrapper` forwards every call of Flower's ``Grid`` interface to an inner grid, with
``send_and_receive`` written on top of this wrapper's ``push_messages`` / ``pull_messages`` so
that wrappers stack (``CodedGrid(CountingGrid(grid))``: messages are coded, then counted).
:class:`CountingGrid` counts each message pushed (server -> client, per destination node) and
each reply pulled (client -> server, error replies included) with :func:`wire_bytes`.
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from flwr.app import Message, RecordDict
from flwr.app.message import make_message, remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

__all__ = ["ByteCount", "CountingGrid", "GridWrapper", "OrderedGrid", "wire_bytes"]


def wire_bytes(message: Message) -> int:
    """Serialized size in bytes of everything Flower sends to move ``message`` (module docstring).

    Reads ``message`` only. (Flower's ``Message(metadata=m)`` resets ``m.delivered_at``; handing it
    the metadata of a message already queued in the simulation's link state would make the
    state deliver that message a second time, so the metadata is copied first.)
    """
    stripped = make_message(metadata=copy.copy(message.metadata),
                            content=None if message.has_error() else message.content,
                            error=message.error if message.has_error() else None)
    stripped.metadata.delivered_at = message.metadata.delivered_at
    head = message_to_proto(remove_content_from_message(stripped)).ByteSize()
    tree = get_object_tree(message).ByteSize()
    objects = sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
    return head + tree + objects


class GridWrapper(Grid):
    """A ``Grid`` that forwards to ``inner``; subclasses override ``push_messages`` / ``pull_messages``."""

    def __init__(self, inner: Grid, pull_interval: float = 0.1) -> None:
        self.inner = inner
        self.pull_interval = pull_interval

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: Optional[float] = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        """Push, then pull until every message has a reply or ``timeout`` seconds passed (then
        the replies so far: a node that never answers is a failure the strategy sees as absent)."""
        pending = set(self.push_messages(list(messages)))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: List[Message] = []
        while pending and (timeout is None or time.time() < end):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self.pull_interval)
        self.forget(pending)
        return replies

    def forget(self, message_ids: Iterable[str]) -> None:
        """Messages that got no reply in time; wrappers that keep per-message state drop it here."""
        forget = getattr(self.inner, "forget", None)
        if forget is not None:
            forget(message_ids)


@dataclass
class ByteCount:
    """Bytes and messages in each direction since the last :meth:`CountingGrid.take`."""

    down: int = 0  # server -> clients
    up: int = 0  # clients -> server
    messages_down: int = 0
    messages_up: int = 0
    failures: int = 0  # replies that carry an error instead of content
    failure_bytes: int = 0  # their bytes (in ``up`` too)
    per_node_down: Dict[int, int] = field(default_factory=dict)
    per_node_up: Dict[int, int] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)  # the error replies' reasons, in arrival order

    @property
    def total(self) -> int:
        return self.down + self.up


class CountingGrid(GridWrapper):
    """Counts :func:`wire_bytes` of every message pushed and every reply pulled."""

    def __init__(self, inner: Grid, pull_interval: float = 0.1) -> None:
        super().__init__(inner, pull_interval)
        self.count = ByteCount()
        self.total = ByteCount()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        sent = {str(i) for i in ids}
        for msg in messages:  # counted after the push: the message id is set by then
            if msg.metadata.message_id in sent:
                self._add(msg, down=True)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        for msg in replies:
            self._add(msg, down=False)
        return replies

    def _add(self, msg: Message, down: bool) -> None:
        n = wire_bytes(msg)
        for c in (self.count, self.total):
            if down:
                node = msg.metadata.dst_node_id
                c.down += n
                c.messages_down += 1
                c.per_node_down[node] = c.per_node_down.get(node, 0) + n
            else:
                node = msg.metadata.src_node_id
                c.up += n
                c.messages_up += 1
                c.failures += int(msg.has_error())
                c.failure_bytes += n if msg.has_error() else 0
                if msg.has_error():
                    c.errors.append(f"node {node}: {error_line(msg.error.reason)}")
                c.per_node_up[node] = c.per_node_up.get(node, 0) + n

    def take(self) -> ByteCount:
        """The count since the last ``take`` (then start a new one)."""
        out, self.count = self.count, ByteCount()
        return out


def error_line(reason: str) -> str:
    """The line of an error reply that says what went wrong: Flower's own "Exception ... occurred.
    Message: ..." line (Ray wraps it in pages of its own), else the last ``SomethingError: ...``
    line of a traceback, else the first line."""
    lines = [ln.strip(" '>") for ln in str(reason).splitlines() if ln.strip(" '>")]
    flower = [ln for ln in lines if " occurred. Message: " in ln]
    if flower:
        return flower[0].split(" occurred. Message: ", 1)[1][:300] or flower[0][:300]
    found = [ln for ln in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Dropout|Exit|Interrupt)\b[^:]*: ", ln)]
    return (found[-1] if found else lines[0] if lines else "(no reason)")[:300]


def _reply_order(reply: Message):
    """Partition order: the ``partition-id`` a reply's metrics carry, else its node id (errors last)."""
    if reply.has_content():
        for rec in reply.content.metric_records.values():
            if "partition-id" in rec:
                return (0, int(rec["partition-id"]), reply.metadata.src_node_id)
    return (1, 0, reply.metadata.src_node_id)


class OrderedGrid(GridWrapper):
    """Hands the replies of a round to the strategy in partition order, not arrival order: FedAvg
    sums in the order it is given, and float32 addition is not associative, so the same run must
    not depend on which client answered first."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: Optional[float] = None) -> Iterable[Message]:
        return sorted(self.inner.send_and_receive(messages, timeout=timeout), key=_reply_order)
