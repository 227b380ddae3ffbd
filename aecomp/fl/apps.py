"""The Flower apps: one ``ClientApp`` and one ``ServerApp`` for the three set-ups.

Set-ups (same data, same partition, same number of rounds ``R``, same local epochs):

``baseline``
    FedAvg on LeNet-300-100 (``in -relu-> 300 -relu-> 100 -> C``) for ``R`` rounds.
``compressed``
    ``A`` rounds of FedAvg on the autoencoder ``in -> latent -> in`` (``in -relu-> hidden ->
    latent -relu-> hidden -> in`` with ``hidden > 0``; sigmoid output) trained on the clients'
    pixels only (labels unused; each client step is one ``aecomp.train.FusedStep``, the whole
    chain forward + MSE + backward in one fused call), then ``R - A`` rounds of FedAvg
    on a ``CompressedNet``: the federated encoder plus a head ``latent -relu-> head -> C``, both
    trained ("replace" mode, see ``aecomp.compress.net``). Every round moves the small model.
``compressed+coded``
    the same, with every model sent packed (``aecomp.fl.coding``: int8 per channel, deltas on
    the way up, entropy-coded) by the client Mod ``coded_mod`` and the server's ``CodedGrid``.

Client side (:func:`make_client_app`): ``ClientApp(mods=[coded_mod])`` with one ``@train``
handler. The message's ConfigRecord says which model (``task``: ``lenet`` / ``autoencoder`` /
``compressed``) and which round; the client builds that model, loads the arrays, trains for
``local_epochs`` on its own partition (``context.node_config["partition-id"]``) and replies with
the arrays and ``num-examples``. A classifier's step is the fused chain op (``aecomp.ops.mlp``)
under autograd and Adam on the cross-entropy (``aecomp.compress.net.fit_classifier``). A client
listed in ``settings.drop`` for a round trains for half its epochs and then raises
:class:`ClientDropout`: Flower turns that into an error reply, and FedAvg averages the replies
that did arrive.

Server side (:func:`make_server_app`): for each set-up, Flower's own ``FedAvg`` (message API,
``strategy.start``) over a ``CountingGrid`` (bytes measured, ``aecomp.fl.grid``), wrapped in a
``CodedGrid`` for the coded set-up. Failure handling is Flower's: ``min_available_nodes`` (wait
until every client is connected), error replies and replies missing after ``round_timeout``
seconds are left out of the average, a round with no reply keeps the previous model. After
every round the server evaluates the global model on the held-out test split (``evaluate_fn``:
accuracy, or reconstruction MSE during the autoencoder rounds), takes the byte count of the
round, and reports a progress line.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .. import data as data_mod
from ..compress.baselines import lenet_300_100
from ..compress.net import CompressedNet, accuracy, fit_classifier
from ..compress.pipeline import recon_mse
from ..models import Autoencoder
from ..train import PlainStep
from .coding import CodedGrid, coded_mod
from .grid import CountingGrid
from .partition import partition_indices
from .settings import SETUPS, FLSettings

__all__ = ["SETUPS", "ClientDropout", "FLSettings", "make_client_app", "make_server_app"]


class ClientDropout(RuntimeError):
    """Raised by a client that drops out in the middle of its round (``FLSettings.drop``)."""


# ---------------------------------------------------------------------- data (cached per process)
_DATA: Dict[Tuple, Tuple[data_mod.Splits, List[np.ndarray]]] = {}


def load_federated(s: FLSettings) -> Tuple[data_mod.Splits, List[np.ndarray]]:
    """``(splits, parts)``: the seeded train/test split and each client's indices into ``train``.
    No validation split: the server evaluates on ``test`` (held out from every client)."""
    key = (s.data, s.seed, s.test_fraction, s.partition, s.clients)
    if key not in _DATA:
        splits = data_mod.load(s.data, val_fraction=0.0, test_fraction=s.test_fraction, seed=s.seed)
        if splits.train.y is None:
            raise data_mod.DataError(f"{s.data} has no labels; federated classification needs them")
        parts = partition_indices(splits.train.y.numpy(), s.clients, s.partition, seed=s.seed)
        _DATA[key] = (splits, parts)
    return _DATA[key]


def num_classes(splits: data_mod.Splits) -> int:
    return int(splits.train.y.max()) + 1


# ---------------------------------------------------------------------- models
def build_model(task: str, s: FLSettings, features: int, classes: int) -> torch.nn.Module:
    """The model a message's ``task`` trains (initialised from the global seed)."""
    torch.manual_seed(s.seed)
    if task == "lenet":
        return lenet_300_100(features, classes, backend=s.backend)
    dims = (features, s.hidden, s.latent) if s.hidden else (features, s.latent)
    ae = Autoencoder(dims, output="sigmoid", backend=s.backend)
    if task == "autoencoder":
        return ae
    if task == "compressed":
        return CompressedNet.from_autoencoder(ae, classes, mode="replace", head_hidden=(s.head_hidden,),
                                              backend=s.backend)
    raise ValueError(f"unknown task {task!r}; expected lenet, autoencoder or compressed")


def to_record(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()})


def load_record(model: torch.nn.Module, record: ArrayRecord) -> torch.nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()})
    return model


def num_params(model: torch.nn.Module) -> int:
    return sum(int(v.numel()) for v in model.state_dict().values())


# ---------------------------------------------------------------------- local training
def train_autoencoder(model: Autoencoder, x: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
                      seed: int) -> float:
    """``epochs`` of Adam on the reconstruction MSE, one ``FusedStep`` (forward + loss + backward in
    one fused call) per batch where the model allows; returns the mean loss of the last epoch."""
    from ..train import FusedStep

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = FusedStep(model, optimizer) if FusedStep.supports(model) else PlainStep(model.loss, optimizer)
    loader = data_mod.InMemoryLoader(x, batch_size=batch_size, seed=seed)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for batch in loader:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            loss_sum += float(step.step(xb)) * xb.shape[0]
            seen += xb.shape[0]
    model.eval()
    return loss_sum / max(seen, 1)


def _client_seed(s: FLSettings, round_: int, partition_id: int) -> int:
    return (s.seed * 1_000_003 + round_ * 1009 + partition_id) % (2**31)


def client_train(msg: Message, context: Context, s: FLSettings) -> Message:
    """The ClientApp's ``train`` handler (see the module docstring)."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    task = str(config["task"])
    round_ = int(config["server-round"]) + int(config.get("round-offset", 0))
    pid = int(context.node_config["partition-id"])
    splits, parts = load_federated(s)
    idx = torch.from_numpy(parts[pid])
    x, y = splits.train.x.index_select(0, idx), splits.train.y.index_select(0, idx)
    model = load_record(build_model(task, s, splits.train.features, num_classes(splits)), msg.content["arrays"])
    drops = (round_, pid) in s.drop
    epochs = max(1, s.local_epochs // 2) if drops else s.local_epochs
    seed = _client_seed(s, round_, pid)
    if task == "autoencoder":
        loss = train_autoencoder(model, x, epochs=epochs, lr=s.ae_lr, batch_size=s.batch_size, seed=seed)
    else:
        loss = fit_classifier(model, x, y, epochs=epochs, lr=s.lr, batch_size=s.batch_size, seed=seed)["train_loss"]
    if drops:
        raise ClientDropout(f"client {pid} dropped out in the middle of round {round_}")
    metrics = MetricRecord({"num-examples": int(x.shape[0]), "train-loss": float(loss)})
    return Message(RecordDict({"arrays": to_record(model), "metrics": metrics}), reply_to=msg)


def make_client_app(s: FLSettings) -> ClientApp:
    """``ClientApp(mods=[coded_mod])`` whose ``train`` handler is :func:`client_train` for ``s``."""
    app = ClientApp(mods=[coded_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, s)

    return app


# ---------------------------------------------------------------------- server
@dataclass
class SetupResult:
    """One set-up's record: a row per round, and what moved."""

    setup: str
    rounds: List[Dict[str, Any]] = field(default_factory=list)
    params: Dict[str, int] = field(default_factory=dict)  # task -> parameters per model
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        total = sum(r["bytes"] for r in self.rounds)
        accs = [r["accuracy"] for r in self.rounds if r["accuracy"] is not None]
        return {
            "setup": self.setup,
            "rounds": self.rounds,
            "params": self.params,
            "seconds": round(self.seconds, 2),
            "final_accuracy": accs[-1] if accs else None,
            "bytes_total": total,
            "bytes_down": sum(r["bytes_down"] for r in self.rounds),
            "bytes_up": sum(r["bytes_up"] for r in self.rounds),
            "bytes_per_round": total / len(self.rounds) if self.rounds else 0.0,
            "failures": sum(r["failures"] for r in self.rounds),
        }


def _run_phase(setup: str, task: str, grid: Grid, counter: CountingGrid, model: torch.nn.Module, num_rounds: int,
               offset: int, s: FLSettings, test: data_mod.Dataset, result: SetupResult,
               log: Callable[[str], None]) -> torch.nn.Module:
    """``num_rounds`` rounds of Flower's FedAvg on ``model``; rows appended to ``result``."""
    t_round = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        if server_round == 0:
            counter.take()  # nothing has moved yet; start this phase's count clean
            return None
        load_record(model, arrays)
        count = counter.take()
        if task == "autoencoder":
            acc, mse = None, recon_mse(model, test.x)
        else:
            acc, mse = accuracy(model, test.x, test.y), None
        now = time.perf_counter()
        row = {"round": offset + server_round, "task": task, "accuracy": acc, "recon_mse": mse,
               "bytes": count.total, "bytes_down": count.down, "bytes_up": count.up,
               "messages_down": count.messages_down, "messages_up": count.messages_up,
               "failures": count.failures, "failure_bytes": count.failure_bytes, "seconds": round(now - t_round[0], 3)}
        t_round[0] = now
        result.rounds.append(row)
        cum = sum(r["bytes"] for r in result.rounds)
        what = f"recon mse {mse:.5f}" if acc is None else f"accuracy {acc:6.2f}%"
        fail = f"  {count.failures} failed" if count.failures else ""
        log(f"[{setup}] round {row['round']:>3}/{s.rounds} {task:<11} {what}  "
            f"{count.total:>10,} B this round (down {count.down:,} / up {count.up:,})  "
            f"cumulative {cum:,} B{fail}")
        return MetricRecord({"accuracy": acc if acc is not None else math.nan,
                             "recon-mse": mse if mse is not None else math.nan})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=s.clients,
                      min_available_nodes=s.clients)
    res = strategy.start(grid, to_record(model), num_rounds=num_rounds, timeout=s.round_timeout,
                         train_config=ConfigRecord({"task": task, "round-offset": offset}), evaluate_fn=evaluate)
    return load_record(model, res.arrays) if len(res.arrays) else model


def run_setup(setup: str, grid: Grid, s: FLSettings, log: Callable[[str], None]) -> SetupResult:
    """One set-up on ``grid`` (see the module docstring)."""
    splits, _ = load_federated(s)
    features, classes = splits.train.features, num_classes(splits)
    counter = CountingGrid(grid)
    g = CodedGrid(counter) if setup == "compressed+coded" else counter
    result = SetupResult(setup)
    t0 = time.perf_counter()
    if setup == "baseline":
        model = build_model("lenet", s, features, classes)
        result.params["lenet"] = num_params(model)
        _run_phase(setup, "lenet", g, counter, model, s.rounds, 0, s, splits.test, result, log)
    else:
        a = s.ae_rounds_for(setup)
        ae = build_model("autoencoder", s, features, classes)
        result.params["autoencoder"] = num_params(ae)
        ae = _run_phase(setup, "autoencoder", g, counter, ae, a, 0, s, splits.test, result, log)
        net = build_model("compressed", s, features, classes)
        net.encoder.load_state_dict(ae.encoder.state_dict())
        result.params["compressed"] = num_params(net)
        _run_phase(setup, "compressed", g, counter, net, s.rounds - a, a, s, splits.test, result, log)
    result.seconds = time.perf_counter() - t0
    return result


def make_server_app(s: FLSettings, sink: Dict[str, Any], log: Callable[[str], None] = print) -> ServerApp:
    """A ``ServerApp`` that runs ``s.setups`` one after the other; results land in ``sink[setup]``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for setup in s.setups:
            sink[setup] = run_setup(setup, grid, s, log).to_dict()

    return app
