"""aecomp.fl without Ray: partitions, the codec, the compression Mod and its Grid (through a
loopback Grid that calls the ClientApp in this process), bytes on the wire, reply order, the
command line's refusals and output folder, and a round in which every client fails.
(tests/test_fl_sim.py runs the simulation engine; tests/test_fl_deployment.py the deployment.)

The partition and codec tests need no flwr; the rest needs the ``fl`` extra (scripts/setup.sh).
"""
from __future__ import annotations

import json
import os
import time
import uuid

import numpy as np
import pytest
import torch

from aecomp.fl.partition import PartitionError, parse_partition, partition_indices


# ---------------------------------------------------------------------- partitions (no flwr)
def _labels(n=1000, classes=10, seed=1):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:0.1", "dirichlet:100"])
@pytest.mark.parametrize("clients", [1, 3, 10])
def test_partition_disjoint_covering_seeded(spec, clients):
    y = _labels()
    parts = partition_indices(y, clients, spec, seed=3)
    assert len(parts) == clients
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))  # disjoint and covering
    assert min(len(p) for p in parts) >= 1
    again = partition_indices(y, clients, spec, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if clients > 1:
        other = partition_indices(y, clients, spec, seed=4)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_partition_iid_balanced_dirichlet_skewed():
    y = _labels(2000)
    iid = partition_indices(y, 10, "iid", seed=0)
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1

    def skew(parts):  # mean over clients of the share of the client's most common label
        return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])

    s_iid, s_01 = skew(iid), skew(partition_indices(y, 10, "dirichlet:0.1", seed=0))
    s_100 = skew(partition_indices(y, 10, "dirichlet:100", seed=0))
    assert s_iid < 0.2 and s_100 < 0.2 and s_01 > 0.5, (s_iid, s_100, s_01)


@pytest.mark.parametrize("spec,words", [("iid2", "unknown --partition"), ("dirichlet:0", "positive"),
                                        ("dirichlet:-1", "positive"), ("dirichlet:x", "positive"),
                                        ("dirichlet:nan", "positive"), ("", "unknown")])
def test_partition_bad_spec(spec, words):
    with pytest.raises(PartitionError, match=words):
        parse_partition(spec)


def test_partition_more_clients_than_samples():
    with pytest.raises(PartitionError, match="--clients 11 needs at least 11 training samples .* there are 10"):
        partition_indices(_labels(10), 11, "iid")
    assert parse_partition("Dirichlet:0.5") == ("dirichlet", 0.5)


# ---------------------------------------------------------------------- the codec (no flwr)
from aecomp.compress.quantize import dequantize_per_channel, quantize_per_channel  # noqa: E402
from aecomp.fl.codec import (Codec, CodingError, Reader, decode_arrays, encode_arrays, parse_codec,  # noqa: E402
                             version_of)


def _model_arrays(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "0.weight": torch.randn(300, 64, generator=g).numpy(),
        "0.bias": torch.randn(300, generator=g).numpy(),
        "2.weight": (torch.randn(7, 1, generator=g) * 1e-3).numpy(),  # one column, tiny values
        "2.bias": np.zeros(7, np.float32),  # all zero
        "steps": np.arange(5, dtype=np.int64),  # not float32: raw
        "w64": np.linspace(-1, 1, 11),  # float64: raw
        "scalar": np.array(3.5, np.float32),  # 0-d: raw
        "empty": np.zeros((0, 4), np.float32),  # no elements: raw
        "conv": torch.randn(4, 3, 2, 2, generator=g).numpy(),  # rows = first dim
    }


def _float(a):
    return a.dtype == np.float32 and a.ndim >= 1 and a.size > 0


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _roundtrip(arrays, codec, reference=None, residual=None):
    body, rebuilt, res = encode_arrays(arrays, codec, reference, residual)
    refs = {} if reference is None else {version_of(reference): reference}
    got = decode_arrays(Reader(body), refs)
    for name in arrays:
        assert _bits_equal(got[name], rebuilt[name]), name  # both ends hold the very same bits
    return body, got, res


@pytest.mark.parametrize("spec", ["float32", "int8", "kmeans:4", "kmeans:2", "top0.1+int8", "top0.01+kmeans:3",
                                  "top0.3+float32"])
def test_codec_roundtrip_bit_exact_and_raw_arrays_untouched(spec):
    arrays = _model_arrays()
    codec = parse_codec(spec)
    body, got, _ = _roundtrip(arrays, codec)
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        if not _float(a):
            assert _bits_equal(got[name], a), name  # raw: bit for bit
            continue
        v, w = a.reshape(-1), got[name].reshape(-1)
        k = a.size if codec.topk >= 1 else max(1, int(np.ceil(codec.topk * a.size)))
        kept = np.flatnonzero(w != 0) if codec.codes != "float32" else np.flatnonzero(w)
        assert len(kept) <= k, name
        if k < a.size:  # top-k keeps the largest |v|: every dropped one is no larger than every kept one
            order = np.argsort(-np.abs(v), kind="stable")[:k]
            assert np.abs(v).min() <= np.abs(v[np.sort(order)]).min()
            assert set(kept) <= set(order.tolist()), name
        if codec.codes == "float32":
            assert np.array_equal(w[np.sort(np.argsort(-np.abs(v), kind="stable")[:k])],
                                  v[np.sort(np.argsort(-np.abs(v), kind="stable")[:k])]), name
        if codec.codes == "kmeans":
            assert len(np.unique(w[w != 0])) <= 2 ** codec.bits, name
    if spec == "int8":  # dense int8 = aecomp.compress.quantize per row (rows: the first dimension)
        w = arrays["0.weight"]
        q, s = quantize_per_channel(torch.from_numpy(w))
        assert _bits_equal(got["0.weight"], dequantize_per_channel(q, s).numpy())
    n_float = sum(a.size for a in arrays.values() if _float(a))
    if spec == "kmeans:2":
        assert len(body) < n_float * 2.5 / 8 + 600  # about 2 bits a weight, a float32 is 32


def test_codec_delta_and_error_feedback_invariants():
    ref = _model_arrays(0)
    g = np.random.default_rng(5)
    new = {k: (v + 1e-2 * g.standard_normal(v.shape).astype(np.float32) if _float(v) else v) for k, v in ref.items()}
    codec = parse_codec("top0.05+kmeans:3")
    res0 = {k: (1e-3 * g.standard_normal(v.shape)).astype(np.float32) for k, v in ref.items() if _float(v)}
    _, got, res = _roundtrip(new, codec, reference=ref, residual=res0)
    for name, a in new.items():
        if not _float(a):
            continue
        # error feedback: what was sent plus the new residual is exactly the update plus the old residual
        sent = got[name] - ref[name]
        target = (a.reshape(-1) - ref[name].reshape(-1)) + res0[name].reshape(-1)
        assert np.allclose(sent.reshape(-1) + res[name].reshape(-1), target, rtol=0, atol=1e-6), name
    # a delta cannot be decoded without its reference, and says so
    body, _, _ = encode_arrays(new, codec, ref)
    with pytest.raises(CodingError, match="delta against version .* this end holds none"):
        decode_arrays(Reader(body), {})
    # deterministic: the same input codes to the same bytes
    assert encode_arrays(new, codec, ref)[0] == body


def test_error_feedback_sends_everything_eventually():
    """Top-k with the residual carried (DGC's local accumulation): the sum of what was sent over
    rounds follows the sum of the updates; without it, the small entries are never sent."""
    g = np.random.default_rng(0)
    update = {"w": g.standard_normal(1000).astype(np.float32)}
    codec = parse_codec("top0.05+float32")
    res, sent_total = {}, np.zeros(1000, np.float32)
    for _ in range(40):
        _, rebuilt, res = encode_arrays(update, codec, None, res)
        sent_total += rebuilt["w"]
    truth = 40 * update["w"]
    assert np.abs(sent_total - truth).max() <= np.abs(res["w"]).max() + 1e-4
    assert np.abs(sent_total - truth).max() < 0.15 * np.abs(truth).max()
    no_ef = 40 * encode_arrays(update, codec)[1]["w"]
    # without the residual the error grows with every round (here 40 x each unsent entry)
    assert np.count_nonzero(no_ef) == 50 and np.abs(no_ef - truth).max() > 5 * np.abs(sent_total - truth).max()


@pytest.mark.parametrize("text,words", [("int9", "codes must be one of"), ("kmeans:9", "bits in 2..8"),
                                        ("top0+int8", "fraction in \\(0, 1\\]"), ("top2+int8", "fraction"),
                                        ("topx+int8", "topP\\+CODES"), ("int8:3", "takes no")])
def test_parse_codec_refuses(text, words):
    with pytest.raises(ValueError, match=words):
        parse_codec(text)
    assert parse_codec("top0.25+kmeans:3") == Codec(topk=0.25, codes="kmeans", bits=3)
    assert parse_codec("top0.25+kmeans:3").spec == "top0.25+kmeans:3"


# ---------------------------------------------------------------------- flwr from here on
flwr = pytest.importorskip("flwr")


@pytest.fixture(autouse=True)
def _run_id():
    """Flower's strategies build messages for the current run; outside its runtime, say which."""
    from flwr.supercore.task_identity import TaskIdentity

    old = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.app.message import make_message, remove_content_from_message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.serde import message_to_proto  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402

import aecomp.fl  # noqa: E402
from aecomp.fl.compression import (CODED_ERROR, CODED_KEY, CODED_RECORD, CompressionGrid, compression_mod,  # noqa: E402
                                   decode_message, encode_message, is_coded)
from aecomp.fl.grid import CountingGrid, GridWrapper, OrderedGrid, wire_bytes  # noqa: E402


def _meta(dst=2, src=1, reply_to="", message_type="train"):
    return Metadata(run_id=7, message_id="", src_node_id=src, dst_node_id=dst, reply_to_message_id=reply_to,
                    group_id="", created_at=time.time(), ttl=3600.0, message_type=message_type)


class LoopbackGrid(Grid):
    """A Grid that hands each message to a ClientApp in this process (no Ray), like the
    simulation engine does: node ``nodes[i]`` has partition ``i`` and keeps its context (state)
    from message to message; an exception becomes an error reply. ``damage(msg)`` may alter a
    message on its way (corruption in transit)."""

    def __init__(self, app: ClientApp, nodes=(11, 12, 13), damage=None):
        self.app, self.nodes, self.replies, self.pushed, self.damage = app, list(nodes), {}, [], damage
        self.contexts = {n: Context(run_id=7, node_id=n, node_config={"partition-id": i}, state=RecordDict(),
                                    run_config={}) for i, n in enumerate(nodes)}

    def set_run(self, run):
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def get_nodes(self):
        return []

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.pushed.append(msg)
            if self.damage is not None:
                msg = self.damage(msg) or msg
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # what Flower's simulation worker does with a raising ClientApp
                from flwr.app.error import Error

                reply = Message(Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError("the wrappers under test push and pull themselves")


def _train_message(arrays, dst):
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "config": ConfigRecord({"server-round": 1})})
    return make_message(_meta(dst=dst), content)


def _make_app(seen, step=0.01, fail_node=None, codec=None):
    """A ClientApp (with compression_mod) that records what it received and returns weights + step;
    ``fail_node``: a node id, or a dict whose "node" says which node raises."""
    app = ClientApp(mods=[compression_mod(codec)])

    @app.train()
    def train(msg, context):
        failing = fail_node.get("node") if isinstance(fail_node, dict) else fail_node
        if context.node_id == failing:
            raise RuntimeError("client went away")
        got = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        seen[context.node_id] = got
        rng = np.random.default_rng(context.node_id)
        out = {k: (np.asarray(v + step * rng.standard_normal(v.shape).astype(np.float32)) if v.dtype == np.float32 else v)
               for k, v in got.items()}
        seen[("sent", context.node_id)] = out
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
                                   "metrics": MetricRecord({"num-examples": 10,
                                                            "partition-id": context.node_config["partition-id"]})}),
                       reply_to=msg)

    return app


def test_mod_and_grid_round_trip_bit_exact_both_directions():
    """Server codes -> Mod decodes -> ClientApp -> Mod codes the delta -> server decodes: the
    ClientApp sees exactly what the server kept as sent, and the server gets exactly what the
    client's codec rebuilt; round 2 is a delta against round 1 (no layout resent)."""
    seen = {}
    loop = LoopbackGrid(_make_app(seen))
    codec = parse_codec("top0.2+kmeans:4")
    grid = CompressionGrid(loop, down=parse_codec("int8"), up=codec)
    arrays = _model_arrays()
    shared = _train_message(arrays, 11).content  # FedAvg sends one RecordDict to every node
    replies = grid.send_and_receive([make_message(_meta(dst=n), shared) for n in loop.nodes], timeout=10)
    assert len(replies) == 3 and not any(r.has_error() for r in replies)
    assert all(is_coded(m.content) for m in loop.pushed)
    blobs = {m.content[CODED_RECORD][CODED_KEY] for m in loop.pushed}
    assert len(blobs) == 1  # coded once per round for nodes holding the same reference
    sent, _, asked, fresh = decode_message(next(iter(blobs)), {})
    assert fresh == {"arrays"}
    assert asked == codec  # the server tells the clients how to code their replies
    for r in replies:
        node = r.metadata.src_node_id
        got = {k: v.numpy() for k, v in r.content["arrays"].items()}
        assert list(got) == list(arrays)
        for name in arrays:
            assert _bits_equal(seen[node][name], sent["arrays"][name].numpy()), name  # client view == server copy
        assert r.content["metrics"]["num-examples"] == 10  # the other records came through
    # the client's reply: exactly the codec's reconstruction of its update against what it got
    node = replies[0].metadata.src_node_id
    ref = {k: v.numpy() for k, v in sent["arrays"].items()}
    _, expect, _ = encode_arrays(seen[("sent", node)], codec, ref, {})
    for name in arrays:
        assert _bits_equal(replies[0].content["arrays"][name].numpy(), expect[name]), name
    assert grid._sent == {}  # nothing kept per message once the replies are in
    # round 2: each node is trusted to hold round 1's model: a delta against it, no layout
    shared2 = _train_message({k: (v + 1e-3 if _float(v) else v) for k, v in arrays.items()}, 11).content
    loop.pushed.clear()
    replies2 = grid.send_and_receive([make_message(_meta(dst=n), shared2) for n in loop.nodes], timeout=10)
    assert not any(r.has_error() for r in replies2)
    with pytest.raises(CodingError, match="delta against version"):
        decode_message(loop.pushed[0].content[CODED_RECORD][CODED_KEY], {})


def test_mod_passes_plain_messages_through():
    seen = {}
    app = _make_app(seen)
    arrays = _model_arrays()
    reply = app(_train_message(arrays, 11), Context(run_id=7, node_id=11, node_config={"partition-id": 0},
                                                    state=RecordDict(), run_config={}))
    assert not is_coded(reply.content)
    for name, a in arrays.items():
        assert _bits_equal(seen[11][name], a)
        assert _bits_equal(reply.content["arrays"][name].numpy(), seen[("sent", 11)][name])


def _flip_last_byte(msg):
    blob = bytearray(msg.content[CODED_RECORD][CODED_KEY])
    blob[-1] ^= 0x5A
    msg.content[CODED_RECORD][CODED_KEY] = bytes(blob)


def test_corrupt_and_failed_messages_are_one_clear_error_and_the_round_goes_on():
    seen = {}
    # a client that fails and a downlink damaged on its way to node 13: error replies, the others go on
    def damage(msg):
        if msg.metadata.dst_node_id == 13:
            msg = make_message(msg.metadata, RecordDict({CODED_RECORD: ConfigRecord(
                {CODED_KEY: msg.content[CODED_RECORD][CODED_KEY]})}))
            _flip_last_byte(msg)
            return msg

    loop = LoopbackGrid(_make_app(seen, fail_node=12), damage=damage)
    grid = CompressionGrid(loop, down=parse_codec("kmeans:4"), up=parse_codec("kmeans:4"))
    replies = grid.send_and_receive([_train_message(_model_arrays(), n) for n in loop.nodes], timeout=10)
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert not by_node[11].has_error()
    assert by_node[12].has_error() and "client went away" in by_node[12].error.reason
    assert by_node[13].has_error() and "CodingError" in by_node[13].error.reason
    assert 13 not in seen  # the ClientApp never saw the damaged model
    # a reply damaged on its way back: an error reply on the server, never a wrong model
    ids = list(grid.push_messages([_train_message(_model_arrays(), 11)]))
    _flip_last_byte(loop.replies[ids[0]])
    (bad,) = grid.pull_messages(ids)
    assert bad.has_error() and bad.error.code == CODED_ERROR and "not decoded" in bad.error.reason
    # every damage is caught: each single-byte change of a coded reply is an error, never a silent model
    ids = list(grid.push_messages([_train_message(_model_arrays(), 11)]))
    good = loop.replies[ids[0]].content[CODED_RECORD][CODED_KEY]
    sent = grid._sent[ids[0]][1]["arrays"]
    refs = {"arrays": {version_of(sent): sent}}
    decode_message(good, refs)  # fine as sent
    for pos in range(0, len(good), max(1, len(good) // 40)):
        blob = bytearray(good)
        blob[pos] ^= 0x01
        with pytest.raises(CodingError):
            decode_message(bytes(blob), refs)
    grid.forget(ids)


def test_a_node_that_failed_gets_the_zero_reference_next_time():
    """After a failed reply the server no longer trusts what the node holds: its next message is
    against the zero reference (layout included), which the client can apply whatever it holds."""
    fail = {"node": 12}
    app = _make_app({}, fail_node=fail)
    loop = LoopbackGrid(app)
    grid = CompressionGrid(loop, down=parse_codec("int8"), up=parse_codec("int8"))
    arrays = _model_arrays()
    grid.send_and_receive([_train_message(arrays, n) for n in loop.nodes], timeout=10)
    assert (12, "arrays") not in grid._holds and (11, "arrays") in grid._holds
    fail["node"] = None
    loop.pushed.clear()
    replies = grid.send_and_receive([_train_message(arrays, n) for n in loop.nodes], timeout=10)
    assert not any(r.has_error() for r in replies)
    blobs = {m.metadata.dst_node_id: m.content[CODED_RECORD][CODED_KEY] for m in loop.pushed}
    decode_message(blobs[12], {})  # against zero: decodable by anyone
    with pytest.raises(CodingError, match="delta against version"):
        decode_message(blobs[11], {})  # node 11 replied: it gets a delta against what it holds


def test_a_plain_torch_model_federated_through_the_mod():
    """The README's promise: any torch.nn model, Flower's own FedAvg, the Mod and the Grid; the
    coded run ends where the plain one does (within the codec's error) for far fewer bytes."""
    torch.manual_seed(0)
    x = torch.randn(240, 12)
    y = (x[:, :3].sum(1) > 0).long()

    def make_net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def client(coded):
        app = ClientApp(mods=[aecomp.fl.compression_mod()] if coded else [])

        @app.train()
        def train(msg, context):
            net = make_net()
            net.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in msg.content["arrays"].items()})
            pid = context.node_config["partition-id"]
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            for _ in range(5):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x[pid::3]), y[pid::3]).backward()
                opt.step()
            return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(
                {"num-examples": 80, "partition-id": pid})}), reply_to=msg)

        return app

    results = {}
    for coded in (False, True):
        counter = CountingGrid(GridWrapper(LoopbackGrid(client(coded))))
        grid = CompressionGrid(counter, down=parse_codec("kmeans:4"), up=parse_codec("kmeans:4")) if coded else counter
        res = FedAvg(fraction_evaluate=0.0, min_available_nodes=3).start(
            OrderedGrid(grid), ArrayRecord(make_net().state_dict()), num_rounds=4, timeout=30)
        net = make_net()
        net.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in res.arrays.items()})
        results[coded] = ((net(x).argmax(1) == y).float().mean().item(), counter.total.total)
    (acc_plain, bytes_plain), (acc_coded, bytes_coded) = results[False], results[True]
    assert acc_plain > 0.8 and abs(acc_coded - acc_plain) < 0.05, results
    assert bytes_coded < bytes_plain / 3, results


def test_ordered_grid_hands_replies_in_partition_order():
    class Shuffled(GridWrapper):
        def send_and_receive(self, messages, *, timeout=None):
            out = list(super().send_and_receive(messages, timeout=timeout))
            return out[::-1]

    loop = LoopbackGrid(_make_app({}, fail_node=12), nodes=(31, 12, 57))
    replies = OrderedGrid(Shuffled(loop)).send_and_receive([_train_message(_model_arrays(), n) for n in loop.nodes],
                                                            timeout=10)
    assert [r.metadata.src_node_id for r in replies] == [31, 57, 12]  # partitions 0, 2, then the error


# ---------------------------------------------------------------------- bytes on the wire
def _array_message(n: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.arange(n, dtype=np.float32))}),
                          "config": ConfigRecord({"task": "lenet"})})
    msg = make_message(_meta(), content)
    msg.metadata.__dict__["_message_id"] = "m" * 36
    return msg


def test_wire_bytes_of_a_known_message():
    a, b = _array_message(10_000), _array_message(20_000)
    # the array's bytes are counted once: 10,000 more float32 values -> exactly 40,000 more bytes
    assert wire_bytes(b) - wire_bytes(a) == 40_000
    n = wire_bytes(a)
    assert 40_000 + 128 < n < 40_000 + 2_000  # the npy payload plus Flower's framing (ids, headers)
    # the counted parts are what Flower pushes: metadata proto + tree + object contents ...
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(a).items()}
    head = message_to_proto(remove_content_from_message(a)).SerializeToString()
    tree = get_object_tree(a).SerializeToString()
    assert n == len(head) + len(tree) + sum(len(c) for c in contents.values())
    # ... and they are enough to rebuild the message on the other side (Flower's own inflate)
    rebuilt = inflate_object_from_contents(a.object_id, contents)
    assert np.array_equal(rebuilt.content["arrays"]["w"].numpy(), np.arange(10_000, dtype=np.float32))
    # an error reply is counted too (no content)
    err = Message(flwr.app.Error(code=1, reason="x" * 50), reply_to=a)
    assert 50 < wire_bytes(err) < 600


def test_wire_bytes_does_not_touch_the_message():
    """Regression: Flower's Message(metadata=m) resets m.delivered_at; counting a message already
    queued in the simulation's link state made it be delivered (and trained on) twice."""
    msg = _array_message(10)
    msg.metadata.delivered_at = "2026-01-01T00:00:00"
    wire_bytes(msg)
    assert msg.metadata.delivered_at == "2026-01-01T00:00:00"


def test_counting_grid_counts_both_directions():
    seen = {}
    loop = LoopbackGrid(_make_app(seen, fail_node=13))
    counter = CountingGrid(loop)
    msgs = [_train_message(_model_arrays(), n) for n in loop.nodes]
    replies = counter.send_and_receive(msgs, timeout=10)
    c = counter.take()
    assert c.down == sum(wire_bytes(m) for m in loop.pushed) and c.messages_down == 3
    assert c.up == sum(wire_bytes(r) for r in replies) and c.messages_up == 3 and c.failures == 1
    assert len(c.errors) == 1 and "client went away" in c.errors[0]
    assert c.per_node_down.keys() == {11, 12, 13} and sum(c.per_node_up.values()) == c.up
    assert counter.take().total == 0 and counter.total.total == c.total
    # coded then counted: the count is of the coded messages, a fraction of the plain ones
    coded_counter = CountingGrid(LoopbackGrid(_make_app({})))
    CompressionGrid(coded_counter).send_and_receive([_train_message(_model_arrays(), n) for n in (11, 12, 13)],
                                                    timeout=10)
    cc = coded_counter.take()
    assert cc.messages_down == 3 and cc.down < c.down / 3 and cc.up < (c.up - 0) / 2




# ---------------------------------------------------------------------- the command line: checked before anything runs
@pytest.mark.parametrize("argv,words", [
    (["--clients", "5000"], "--clients 5000 needs at least 5000 training samples"),
    (["--clients", "0"], "--clients must be a positive integer"),
    (["--partition", "pathological"], "unknown --partition 'pathological'"),
    (["--partition", "dirichlet:0"], "Dirichlet alpha must be a positive number"),
    (["--setup", "baseline,fancy"], "unknown --setup fancy"),
    (["--rounds", "1"], "need at least one autoencoder round and one classifier round"),
    (["--rounds", "0", "--setup", "baseline"], "--rounds must be a positive integer"),
    (["--data", "/nonexistent/x.npz"], "x.npz"),
    (["--latent", "0"], "--latent must be a positive integer, got 0"),
    (["--latent", "64"], "--latent 64 is not smaller than the 64 input features"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--ae-lr", "nan"], "--ae-lr must be a positive number"),
    (["--repeats", "0"], "--repeats must be a positive integer"),
    (["--coding", "top3+int8"], "--coding: coding 'top3+int8'"),
    (["--val-fraction", "0.7", "--test-fraction", "0.3"], "leave the clients less than a tenth"),
    (["--kill", "2:1"], "--kill stops a SuperNode process: it needs --engine deployment"),
    (["--fail", "30:1"], "--fail 30:1: the round must be in 1..20"),
    (["--fail", "x"], "expected ROUND:CLIENT"),
    (["--choose", "latent=16;depth=3"], "--choose"),
    (["--choose", "latent=0"], "--choose latent must be a positive integer"),
])
def test_cli_bad_settings_one_line_before_anything_runs(argv, words, capsys, tmp_path, monkeypatch):
    from aecomp.cli import main
    from aecomp.fl import engine

    monkeypatch.setattr(engine, "run_engine", lambda *a, **k: pytest.fail("the run started"))
    rc = main(["fl", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("aecomp: error: ") and words in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_without_flwr(monkeypatch, capsys, tmp_path):
    import importlib.util

    from aecomp.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    rc = main(["fl", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["aecomp: error: flwr is not installed; install the extra: pip install 'aecomp[fl]'"]


def _fake_result(s):
    """What the ServerApp writes, for the folder tests (no engine runs)."""
    return {"settings": s.to_dict(), "choice": None, "done": True, "error": None, "jobs": [
        {"setup": "baseline", "seed": 0, "latent": s.latent, "head_hidden": s.head_hidden, "coding": None,
         "split": "test", "rounds": [{"bytes": 10, "bytes_down": 5, "bytes_up": 5, "val_accuracy": 90.0,
                                      "failures": 0}],
         "params": {"lenet": 1}, "seconds": 1.0, "val_accuracy": 90.0, "test_accuracy": 91.0, "bytes_total": 10,
         "bytes_down": 5, "bytes_up": 5, "bytes_per_round": 10.0, "failures": 0, "val_correct": [1, 0],
         "test_correct": [1, 1, 0]}]}


def test_out_follows_the_compress_rules(tmp_path, capsys, monkeypatch):
    """The same lock / --overwrite / writability rules as ``aecomp compress``, checked up front."""
    from aecomp.cli import main
    from aecomp.fl import engine
    from aecomp.train.output import FolderLock

    ran = []
    monkeypatch.setattr(engine, "run_engine", lambda s, log: ran.append(1) or _fake_result(s))
    out = tmp_path / "out"
    argv = ["fl", "--setup", "baseline", "--out", str(out)]
    assert main(argv) == 0 and (out / "fl_report.json").is_file()
    assert json.loads((out / "outputs.json").read_text())["complete"] is True
    capsys.readouterr()
    assert main(argv) == 2 and "add --overwrite" in capsys.readouterr().err  # two runs never overwrite each other
    assert main(argv + ["--overwrite"]) == 0 and len(ran) == 2
    (out / "mine.txt").write_text("a user's file")
    capsys.readouterr()
    assert main(argv + ["--overwrite"]) == 2 and "mine.txt, which the earlier run did not write" in capsys.readouterr().err
    (out / "mine.txt").unlink()
    with FolderLock(out):  # another run holds the folder
        assert main(argv + ["--overwrite"]) == 2 and "in use by another aecomp run" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root writes anywhere: then there is nothing to refuse)
            assert main(["fl", "--setup", "baseline", "--out", str(ro / "x")]) == 2
            assert "cannot create the folder" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)
    assert len(ran) == 2  # no refused run started the engine


def test_a_round_in_which_every_client_failed_is_an_error():
    """Fault injection through the real ClientApp and ServerApp code (loopback grid, no Ray):
    every client raises in round 1; the job fails with one line naming the round and the cause."""
    from aecomp.fl.apps import RoundFailed, make_client_app, run_job
    from aecomp.fl.settings import FLSettings, Job

    s = FLSettings(clients=3, rounds=2, local_epochs=1, drop=((1, -1),), round_timeout=30)
    loop = GridWrapper(LoopbackGrid(make_client_app(s), nodes=(5, 6, 7)))
    with pytest.raises(RoundFailed, match=r"baseline seed 0, round 1: every client failed .*3 error replies of 3; "
                                          r"first: .*dropped out in the middle of round 1"):
        run_job(Job("baseline", 0, 16, 32, None, "test"), loop, s, log=lambda line: None)
    # one client failing is not an error: the round goes on with the others
    s1 = FLSettings(clients=3, rounds=1, local_epochs=1, drop=((1, 2),), round_timeout=30)
    r = run_job(Job("small+coding", 0, 16, 32, "kmeans:4", "test"), GridWrapper(LoopbackGrid(make_client_app(s1),
                nodes=(5, 6, 7))), s1, log=lambda line: None)
    assert r["rounds"][0]["failures"] == 1 and r["rounds"][0]["messages_up"] == 3 and r["test_accuracy"] > 10


def test_same_job_twice_gives_the_same_numbers_whatever_the_reply_order():
    """Seeded per client and averaged in partition order: the same job on nodes with other ids
    (hence another arrival order) gives bit-identical models and the same bytes."""
    from aecomp.fl.apps import make_client_app, run_job
    from aecomp.fl.settings import FLSettings, Job

    s = FLSettings(clients=3, rounds=2, local_epochs=1, round_timeout=30)
    job = Job("small+coding", 0, 16, 32, "top0.5+kmeans:4", "test")
    a = run_job(job, GridWrapper(LoopbackGrid(make_client_app(s), nodes=(5, 6, 7))), s, log=lambda line: None)
    b = run_job(job, GridWrapper(LoopbackGrid(make_client_app(s), nodes=(90, 3, 41))), s, log=lambda line: None)
    assert a["test_correct"] == b["test_correct"] and a["val_accuracy"] == b["val_accuracy"]
    assert [r["bytes"] for r in a["rounds"]] == [r["bytes"] for r in b["rounds"]]


def test_the_choice_reads_validation_only():
    """``--choose``: the fewest bytes within the tolerance on validation; a candidate that is better
    on the test split only never changes the pick, and the test outcomes are not kept."""
    from aecomp.fl.server import choose
    from aecomp.fl.settings import FLSettings

    n_val, n_test = 200, 300

    def fake(val_right, test_right, nbytes):
        return {"bytes_per_round": nbytes, "val_correct": [1] * val_right + [0] * (n_val - val_right),
                "test_correct": [1] * test_right + [0] * (n_test - test_right)}

    table = {None: fake(196, 290, 4e6),  # the baseline: 98% on validation
             "kmeans:4": fake(195, 280, 40e3),  # -0.5 pt on validation: within, and the smallest within
             "kmeans:3": fake(190, 300, 30e3),  # -3 pt on validation but perfect on test: never chosen
             "int8": fake(196, 250, 60e3)}  # as good on validation, larger

    def run(job):
        return table[job.coding]

    s = FLSettings(repeats=2, candidates=((16, 32, "kmeans:4"), (16, 32, "kmeans:3"), (16, 32, "int8")))
    got = choose(run, s, log=lambda line: None)
    assert got["chosen"]["coding"] == "kmeans:4" and got["chosen"]["within_tolerance"] and got["compared"] == 3
    assert all(r["test_accuracy"] is None for r in got["rows"])  # nothing of the test split is kept
    table["kmeans:3"] = fake(190, 0, 30e3)  # its test outcomes change: the pick does not
    assert choose(run, s, log=lambda line: None)["chosen"] == got["chosen"]
    table["kmeans:4"] = fake(150, 300, 40e3)  # worse on validation: now the larger int8 is the pick
    assert choose(run, s, log=lambda line: None)["chosen"]["coding"] == "int8"


def test_choose_keeps_the_options_for_the_fields_it_leaves_out():
    """``--latent 24 --choose coding=A,B`` compares codings at latent 24 (it took FLSettings'
    default latent, 16, silently)."""
    from aecomp.fl.cli import _parse_choose

    assert _parse_choose("coding=int8,kmeans:4", 24, 48, "int8") == ((24, 48, "int8"), (24, 48, "kmeans:4"))
    assert _parse_choose("latent=8,12", 24, 48, "kmeans:3") == ((8, 48, "kmeans:3"), (12, 48, "kmeans:3"))
    assert _parse_choose("", 24, 48, "int8") == ()


def test_a_candidate_job_is_never_run_on_the_test_split():
    """A --choose candidate (split "val") carries validation outcomes only; a final repeat both."""
    from aecomp.fl.apps import make_client_app, run_job
    from aecomp.fl.settings import FLSettings, Job

    s = FLSettings(clients=3, rounds=1, local_epochs=1, round_timeout=30)
    grid = GridWrapper(LoopbackGrid(make_client_app(s), nodes=(5, 6, 7)))
    cand = run_job(Job("small+coding", 0, 16, 32, "kmeans:4", "val"), grid, s, log=lambda line: None)
    assert "test_correct" not in cand and "test_accuracy" not in cand and len(cand["val_correct"]) > 0
    assert cand["val_accuracy"] == 100.0 * sum(cand["val_correct"]) / len(cand["val_correct"])


def test_a_zero_reference_message_starts_a_new_residual():
    """Regression: the residual of one run (or job) leaked into the next one's first update when
    the two models had the same layout (an aecomp fl run trains several in a row)."""
    ctx = Context(run_id=7, node_id=11, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    app = _make_app({}, step=0.5)
    codec = parse_codec("top0.05+int8")
    arrays = {"w": np.zeros(400, np.float32)}

    def blob_for(reference):
        coded = encode_message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                           "config": ConfigRecord({"server-round": 1})}), codec,
                               {"arrays": reference}, reply_codec=codec)
        return make_message(_meta(dst=11), RecordDict({CODED_RECORD: ConfigRecord({CODED_KEY: coded.blob})}))

    app(blob_for(None), ctx)
    assert np.abs(ctx.state["aecomp.fl.residual.arrays"]["w"].numpy()).max() > 0  # most of the update stayed
    app(blob_for(None), ctx)  # a new start: the same update again, from a fresh residual
    first = ctx.state["aecomp.fl.residual.arrays"]["w"].numpy().copy()
    fresh_ctx = Context(run_id=7, node_id=11, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    app(blob_for(None), fresh_ctx)
    assert _bits_equal(first, fresh_ctx.state["aecomp.fl.residual.arrays"]["w"].numpy())


def test_error_line_finds_the_client_exception_in_a_wrapped_traceback():
    from aecomp.fl.grid import error_line

    ray_like = ("The actor died unexpectedly before finishing this task.\n  class_name: ClientAppActor\n"
                "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                "aecomp.fl.apps.ClientDropout: client 0 dropped out in the middle of round 1 (fault injection)\n"
                "    repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f>)")
    assert error_line(ray_like).startswith("aecomp.fl.apps.ClientDropout: client 0 dropped out")
    assert error_line("plain reason") == "plain reason" and error_line("") == "(no reason)"
    flower = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n"
              "Exception ClientAppException occurred. Message: client 1 dropped out (fault injection)\n"
              "ray.exceptions.RayTaskError: other: text'>")
    assert error_line(flower) == "client 1 dropped out (fault injection)"
