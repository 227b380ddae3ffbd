"""aecomp.fl: partitions, the coding Mod and its server Grid, the bytes counter, and one Flower
simulation of all three set-ups with a client that drops out (tests/test_fl_sim.py has the run).

Everything here but the partition tests needs flwr (the ``fl`` extra, which scripts/setup.sh
installs); no Ray here: messages go through a loopback Grid that calls the ClientApp in-process.
"""
from __future__ import annotations

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


# ---------------------------------------------------------------------- flwr from here on
flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.app.message import make_message, remove_content_from_message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.serde import message_to_proto  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree  # noqa: E402
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents  # noqa: E402

from aecomp.compress.quantize import dequantize_per_channel, quantize_per_channel  # noqa: E402
from aecomp.fl.coding import (CODED_ERROR, CODED_KEY, CodedGrid, CodingError, coded_mod, decode_arrays,  # noqa: E402
                              encode_arrays, is_coded)
from aecomp.fl.grid import CountingGrid, wire_bytes  # noqa: E402


def _meta(dst=2, src=1, reply_to="", message_type="train"):
    return Metadata(run_id=7, message_id="", src_node_id=src, dst_node_id=dst, reply_to_message_id=reply_to,
                    group_id="", created_at=time.time(), ttl=3600.0, message_type=message_type)


def _model_arrays(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "0.weight": torch.randn(300, 64, generator=g).numpy(),
        "0.bias": torch.randn(300, generator=g).numpy(),
        "2.weight": (torch.randn(7, 1, generator=g) * 1e-3).numpy(),  # one column, tiny values
        "2.bias": np.zeros(7, np.float32),  # a zero row: scale 1, codes 0
        "steps": np.arange(5, dtype=np.int64),  # not float32: raw
        "w64": np.linspace(-1, 1, 11),  # float64: raw
        "scalar": np.array(3.5, np.float32),  # 0-d: raw
        "empty": np.zeros((0, 4), np.float32),  # no elements: raw
        "conv": torch.randn(4, 3, 2, 2, generator=g).numpy(),  # rows = first dim
    }


def _quantdequant(w: np.ndarray) -> np.ndarray:
    """The reference: aecomp.compress.quantize's per-channel int8, rows = first dimension."""
    t = torch.from_numpy(np.ascontiguousarray(w)).reshape(w.shape[0] if w.ndim >= 2 else 1, -1)
    q, s = quantize_per_channel(t)
    return dequantize_per_channel(q, s).reshape(w.shape).numpy()


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------- coding: arrays
def test_encode_decode_bit_exact_absolute():
    arrays = _model_arrays()
    blob, sent = encode_arrays(arrays)
    got = decode_arrays(blob)
    assert list(got) == list(arrays)
    for name, a in arrays.items():
        assert _bits_equal(got[name], sent[name]), name  # both ends hold the very same bits
        if a.dtype == np.float32 and a.ndim >= 1 and a.size:
            assert _bits_equal(got[name], _quantdequant(a)), name  # = the project's int8 per channel
            rows = a.reshape(a.shape[0] if a.ndim >= 2 else 1, -1)
            step = np.abs(rows).max(1) / 127
            err = np.abs(got[name].reshape(rows.shape) - rows)
            assert np.all(err <= step[:, None] / 2 * (1 + 1e-6) + 1e-30), name  # half a step of its row
        else:
            assert _bits_equal(got[name], a), name  # raw: bit for bit
    assert np.all(got["2.bias"] == 0)
    n_float = sum(a.size for a in arrays.values() if a.dtype == np.float32 and a.ndim and a.size)
    assert len(blob) < 1.1 * n_float + 2000  # int8: about a byte per float32, not four


def test_encode_decode_bit_exact_delta():
    ref_in = _model_arrays(0)
    _, ref = encode_arrays(ref_in)  # what the receiver holds
    g = torch.Generator().manual_seed(5)
    new = {k: (v + 1e-3 * torch.randn(v.shape, generator=g).numpy().astype(np.float32)
               if v.dtype == np.float32 and v.ndim and v.size else v) for k, v in ref.items()}
    blob, sent = encode_arrays(new, reference=ref)
    got = decode_arrays(blob, reference=ref)
    for name in new:
        assert _bits_equal(got[name], sent[name]), name
    w, r = new["0.weight"], ref["0.weight"]
    assert _bits_equal(got["0.weight"], r + _quantdequant(w - r))  # W' = R + int8(W - R), float32
    # the delta is far more precise than coding the weights themselves
    abs_err = np.abs(decode_arrays(encode_arrays(new)[0])["0.weight"] - w).max()
    assert np.abs(got["0.weight"] - w).max() < abs_err / 50
    with pytest.raises(CodingError, match="delta but the receiver holds no reference"):
        decode_arrays(blob)
    # deterministic: the same input codes to the same bytes
    assert encode_arrays(new, reference=ref)[0] == blob


def test_decode_rejects_corrupt_streams():
    blob, _ = encode_arrays(_model_arrays())
    with pytest.raises(CodingError):
        decode_arrays(b"")
    with pytest.raises(CodingError, match="unknown codec tag"):
        decode_arrays(bytes([7]) + blob[1:])
    with pytest.raises(CodingError):
        decode_arrays(blob[: len(blob) // 2])
    with pytest.raises(CodingError, match="magic"):
        decode_arrays(bytes([0]) + b"XXXX" + b"\0" * 10)
    with pytest.raises(CodingError, match="after its last array"):
        raw, _ = encode_arrays({"a": np.arange(3)})
        decode_arrays(bytes([0]) + _stored_body(raw) + b"junk")


def _stored_body(blob: bytes) -> bytes:
    import lzma
    import zlib

    if blob[0] == 0:
        return blob[1:]
    if blob[0] == 1:
        return zlib.decompress(blob[1:], wbits=-15)
    return lzma.decompress(blob[1:], format=lzma.FORMAT_RAW,
                           filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])


# ---------------------------------------------------------------------- the Mod and the CodedGrid
class LoopbackGrid(Grid):
    """A Grid that hands each message to a ClientApp in this process (no Ray), like the
    simulation engine does: node ``i`` has partition ``i``; an exception becomes an error reply."""

    def __init__(self, app: ClientApp, nodes=(11, 12, 13)):
        self.app, self.nodes, self.replies, self.pushed = app, list(nodes), {}, []
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
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # what Flower's simulation worker does with a raising ClientApp
                from flwr.app.error import Error

                reply = Message(Error(code=2, reason=str(exc)), reply_to=msg)
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


def _make_app(seen, step=0.01, fail_node=None):
    """A ClientApp (with coded_mod) that records what it received and returns weights + step."""
    app = ClientApp(mods=[coded_mod])

    @app.train()
    def train(msg, context):
        if context.node_id == fail_node:
            raise RuntimeError("client went away")
        got = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        seen[context.node_id] = got
        rng = np.random.default_rng(context.node_id)
        out = {k: (np.asarray(v + step * rng.standard_normal(v.shape).astype(np.float32)) if v.dtype == np.float32 else v)
               for k, v in got.items()}
        seen[("sent", context.node_id)] = out
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    return app


def test_mod_and_grid_round_trip_bit_exact():
    """Server codes -> Mod decodes -> ClientApp -> Mod codes the delta -> server decodes: the
    ClientApp sees exactly the arrays the server kept as sent, and the server gets exactly
    ``sent + int8(update - sent)``, bit for bit."""
    seen = {}
    loop = LoopbackGrid(_make_app(seen))
    grid = CodedGrid(loop)
    arrays = {k: v for k, v in _model_arrays().items()}
    shared = _train_message(arrays, 11).content  # FedAvg sends one RecordDict to every node
    msgs = [make_message(_meta(dst=n), shared) for n in loop.nodes]
    replies = grid.send_and_receive(msgs, timeout=10)
    assert len(replies) == 3 and not any(r.has_error() for r in replies)
    # what crossed the wire was coded, both ways
    assert all(is_coded(m.content["arrays"]) for m in loop.pushed)
    blob = loop.pushed[0].content["arrays"][CODED_KEY]
    assert len({m.content["arrays"][CODED_KEY] for m in loop.pushed}) == 1  # coded once per round
    sent = decode_arrays(blob)
    for r in replies:
        node = r.metadata.src_node_id
        got = {k: v.numpy() for k, v in r.content["arrays"].items()}
        assert list(got) == list(arrays)
        for name in arrays:
            assert _bits_equal(seen[node][name], sent[name]), name  # ClientApp view == server's copy
            out = seen[("sent", node)][name]
            if out.dtype == np.float32 and out.ndim and out.size:
                assert _bits_equal(got[name], sent[name] + _quantdequant(out - sent[name])), name
            else:
                assert _bits_equal(got[name], out), name
        assert r.content["metrics"]["num-examples"] == 10  # other records untouched
    assert grid._sent == {}  # nothing kept once the replies are in


def test_mod_passes_plain_messages_through():
    seen = {}
    app = _make_app(seen)
    arrays = _model_arrays()
    msg = _train_message(arrays, 11)
    reply = app(msg, Context(run_id=7, node_id=11, node_config={}, state=RecordDict(), run_config={}))
    assert not is_coded(reply.content["arrays"])
    for name, a in arrays.items():
        assert _bits_equal(seen[11][name], a)
        assert _bits_equal(reply.content["arrays"][name].numpy(), seen[("sent", 11)][name])


def test_coded_grid_failed_and_corrupt_replies():
    seen = {}
    loop = LoopbackGrid(_make_app(seen, fail_node=12))
    grid = CodedGrid(loop)
    arrays = _model_arrays()
    replies = grid.send_and_receive([_train_message(arrays, n) for n in loop.nodes], timeout=10)
    assert sorted(r.has_error() for r in replies) == [False, False, True]
    # a reply whose coded payload is damaged becomes an error reply, not a crashed server
    msg = _train_message(arrays, 13)
    ids = list(grid.push_messages([msg]))
    reply = loop.replies[ids[0]]
    reply.content["arrays"][CODED_KEY] = b"\x01\xff\xfe"
    (bad,) = grid.pull_messages(ids)
    assert bad.has_error() and bad.error.code == CODED_ERROR and "corrupt" in bad.error.reason


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
    assert c.per_node_down.keys() == {11, 12, 13} and sum(c.per_node_up.values()) == c.up
    assert counter.take().total == 0 and counter.total.total == c.total
    # coded then counted: the count is of the coded messages, a fraction of the plain ones
    coded_counter = CountingGrid(LoopbackGrid(_make_app({})))
    CodedGrid(coded_counter).send_and_receive([_train_message(_model_arrays(), n) for n in (11, 12, 13)],
                                              timeout=10)
    cc = coded_counter.take()
    assert cc.messages_down == 3 and cc.down < c.down / 3 and cc.up < (c.up - 0) / 2


# ---------------------------------------------------------------------- the command line's refusals
@pytest.mark.parametrize("argv,words", [
    (["--clients", "5000"], "--clients 5000 needs at least 5000 training samples"),
    (["--clients", "0"], "--clients must be a positive integer"),
    (["--partition", "pathological"], "unknown --partition 'pathological'"),
    (["--partition", "dirichlet:0"], "Dirichlet alpha must be a positive number"),
    (["--setup", "baseline,fancy"], "unknown --setup fancy"),
    (["--rounds", "1"], "need at least one autoencoder round and one classifier round"),
    (["--rounds", "0", "--setup", "baseline"], "--rounds must be a positive integer"),
    (["--data", "/nonexistent/x.npz"], "x.npz"),
])
def test_cli_bad_settings_one_line(argv, words, capsys, tmp_path):
    from aecomp.cli import main

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


# ---------------------------------------------------------------------- local training
def test_client_autoencoder_training_uses_fused_step(monkeypatch):
    """The clients' autoencoder steps are aecomp.train.FusedStep calls (one fused chain call each)."""
    from aecomp.fl import apps
    from aecomp.fl.settings import FLSettings
    from aecomp.train import FusedStep

    calls = []
    real = FusedStep.step
    monkeypatch.setattr(FusedStep, "step", lambda self, batch, weight=None: calls.append(1) or real(self, batch, weight))
    s = FLSettings()
    ae = apps.build_model("autoencoder", s, 64, 10)
    x = torch.rand(70, 64)
    before = apps.recon_mse(ae, x)
    apps.train_autoencoder(ae, x, epochs=3, lr=1e-2, batch_size=32, seed=0)
    assert len(calls) == 3 * 3  # ceil(70 / 32) batches x 3 epochs
    assert apps.recon_mse(ae, x) < before
