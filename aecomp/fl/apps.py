"""The Flower apps: one ``ClientApp`` and one ``ServerApp`` for every set-up, repeat and candidate.

Set-ups (same data, partition and number of rounds ``R``; the suffix ``+coding`` sends every
message through the compression Mod, :mod:`aecomp.fl.compression`, with ``settings.coding``):

``baseline``
    FedAvg on LeNet-300-100 (``in -relu-> 300 -relu-> 100 -> C``) for ``R`` rounds.
``compressed``
    ``A`` rounds of FedAvg on the autoencoder ``in -> latent -> in`` (sigmoid output; with
    ``hidden > 0`` one more layer each side) on the clients' pixels (labels unused; each step one
    fused ``aecomp.train.FusedStep``), then ``R - A`` rounds on a ``CompressedNet``: the federated
    encoder plus a head ``latent -relu-> head -> C``, all trained ("replace" mode).
``small``
    the right-sized baseline: the same CompressedNet architecture from random initialisation,
    ``R`` rounds, no autoencoder.

Client (:func:`make_client_app`): ``ClientApp(mods=[compression_mod()])``, one ``@train``
handler. The message's config says what to train (``task``, ``seed``, ``latent``, ``head``,
the round); the client takes its partition (``node_config["partition-id"]``) of that seed's
training split, trains ``local_epochs`` seeded by ``(seed, round, partition)`` and replies with
the arrays and ``num-examples`` / ``partition-id``. Fault injection (``settings.drop``): the client
raises :class:`ClientDropout` half-way through its round; (``settings.kill``, deployment) it
writes a marker and waits to be killed by the driver.

Server (:func:`run_job`): Flower's ``FedAvg`` (``strategy.start``) over a ``CountingGrid`` (bytes
measured), under a ``CompressionGrid`` for ``+coding``, under an ``OrderedGrid`` that hands the
replies to the strategy in partition order (so the average does not depend on who answered
first). Failure handling is Flower's: error replies and replies missing after ``round_timeout``
are left out of the average. A round in which every client failed raises :class:`RoundFailed`.
Every round the global model is evaluated on the server's validation split; the test split
only on the final model (and read only for the final repeats' report, never for a choice).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .. import data as data_mod
from ..compress.baselines import lenet_300_100
from ..compress.net import CompressedNet, accuracy, fit_classifier
from ..compress.pipeline import recon_mse
from ..models import Autoencoder
from ..train import PlainStep
from .codec import parse_codec
from .compression import CompressionGrid, compression_mod
from .grid import CountingGrid, OrderedGrid
from .partition import partition_indices
from .settings import FLError, FLSettings, Job

__all__ = ["ClientDropout", "RoundFailed", "make_client_app", "run_job"]


class ClientDropout(RuntimeError):
    """Raised by a client that drops out in the middle of its round (``FLSettings.drop``)."""


class RoundFailed(FLError):
    """A round in which no client replied with a model."""


# ---------------------------------------------------------------------- data (cached per process)
_DATA: Dict[Tuple, Tuple[data_mod.Splits, List[np.ndarray]]] = {}


def load_federated(s: FLSettings, seed: int) -> Tuple[data_mod.Splits, List[np.ndarray]]:
    """``(splits, parts)``: the seeded, stratified train/val/test split of the project's protocol
    (``aecomp.compress.protocol.load_repeat``; ``seed`` is the repeat's) and each client's indices
    into ``train``. Validation and test stay with the server; no client sees them."""
    from ..compress.protocol import load_repeat

    key = (s.data, seed, s.val_fraction, s.test_fraction, s.partition, s.clients)
    if key not in _DATA:
        splits = load_repeat(s.data, 0, seed=seed, val_fraction=s.val_fraction, test_fraction=s.test_fraction)
        parts = partition_indices(splits.train.y.numpy(), s.clients, s.partition, seed=seed)
        _DATA[key] = (splits, parts)
    return _DATA[key]


def num_classes(splits: data_mod.Splits) -> int:
    return int(splits.train.y.max()) + 1


# ---------------------------------------------------------------------- models
def build_model(task: str, seed: int, latent: int, head: int, features: int, classes: int, hidden: int = 0,
                backend: Optional[str] = None) -> torch.nn.Module:
    """The model a message's ``task`` trains, initialised from ``seed``."""
    torch.manual_seed(seed)
    if task == "lenet":
        return lenet_300_100(features, classes, backend=backend)
    dims = (features, hidden, latent) if hidden else (features, latent)
    ae = Autoencoder(dims, output="sigmoid", backend=backend)
    if task == "autoencoder":
        return ae
    if task == "compressed":
        return CompressedNet.from_autoencoder(ae, classes, mode="replace", head_hidden=(head,) if head else (),
                                              backend=backend)
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


def client_seed(seed: int, round_: int, partition_id: int) -> int:
    return (seed * 1_000_003 + round_ * 1009 + partition_id) % (2**31)


def _wait_to_be_killed(s: FLSettings, pid: int, round_: int) -> None:
    """Fault injection (``settings.kill``): say so in the marker folder, then wait for the driver."""
    folder = os.environ.get("AECOMP_FL_MARKERS")
    if not folder:
        return
    with open(os.path.join(folder, f"kill-{pid}"), "w") as f:
        f.write(f"{os.getpid()} {round_}\n")
    time.sleep(120.0)  # the driver kills this SuperNode's processes long before


def client_train(msg: Message, context: Context, s: FLSettings) -> Message:
    """The ClientApp's ``train`` handler (module docstring)."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    task, seed = str(config["task"]), int(config["seed"])
    round_ = int(config["server-round"]) + int(config.get("round-offset", 0))
    pid = int(context.node_config["partition-id"])
    splits, parts = load_federated(s, seed)
    idx = torch.from_numpy(parts[pid])
    x, y = splits.train.x.index_select(0, idx), splits.train.y.index_select(0, idx)
    model = build_model(task, seed, int(config["latent"]), int(config["head"]), splits.train.features,
                        num_classes(splits), s.hidden, s.backend)
    load_record(model, msg.content["arrays"])
    drops = any(r == round_ and c in (pid, -1) for r, c in s.drop)
    epochs = max(1, s.local_epochs // 2) if drops else s.local_epochs
    cs = client_seed(seed, round_, pid)
    torch.manual_seed(cs)
    if task == "autoencoder":
        loss = train_autoencoder(model, x, epochs=epochs, lr=s.ae_lr, batch_size=s.batch_size, seed=cs)
    else:
        loss = fit_classifier(model, x, y, epochs=epochs, lr=s.lr, batch_size=s.batch_size, seed=cs)["train_loss"]
    if (round_, pid) in s.kill and int(config.get("last-job", 0)):
        _wait_to_be_killed(s, pid, round_)
    if drops:
        raise ClientDropout(f"client {pid} dropped out in the middle of round {round_} (fault injection)")
    metrics = MetricRecord({"num-examples": int(x.shape[0]), "train-loss": float(loss), "partition-id": pid})
    return Message(RecordDict({"arrays": to_record(model), "metrics": metrics}), reply_to=msg)


def make_client_app(s: Optional[FLSettings] = None) -> ClientApp:
    """``ClientApp(mods=[compression_mod()])`` whose ``train`` handler is :func:`client_train` for
    ``s`` (None: the deployment's FAB; the settings file named by the run config)."""
    app = ClientApp(mods=[compression_mod()])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, s if s is not None else _settings_of(context))

    return app


def _settings_of(context: Context) -> FLSettings:
    import json
    from pathlib import Path

    return FLSettings.from_dict(json.loads(Path(str(context.run_config["settings-file"])).read_text()))


# ---------------------------------------------------------------------- server
def _phase(job: Job, task: str, grid: Grid, counter: CountingGrid, model: torch.nn.Module, num_rounds: int,
           offset: int, s: FLSettings, splits: data_mod.Splits, rows: List[Dict[str, Any]], first: bool,
           last: bool, log: Callable[[str], None]) -> torch.nn.Module:
    """``num_rounds`` rounds of Flower's FedAvg on ``model``; a row per round appended to ``rows``."""
    t_round = [time.perf_counter()]
    val = splits.val

    def evaluate(server_round: int, arrays: ArrayRecord) -> Optional[MetricRecord]:
        if server_round == 0:
            counter.take()  # nothing has moved yet; start this phase's count clean
            return None
        count = counter.take()
        if count.messages_down and count.messages_up == count.failures:
            first_error = count.errors[0] if count.errors else "no reply before the round timeout"
            raise RoundFailed(f"{job.name}, round {offset + server_round}: every client failed "
                              f"({count.failures} error replies of {count.messages_down}; first: {first_error})")
        load_record(model, arrays)
        if task == "autoencoder":
            acc, mse = None, recon_mse(model, val.x)
        else:
            acc, mse = accuracy(model, val.x, val.y), None
        now = time.perf_counter()
        row = {"round": offset + server_round, "task": task, "val_accuracy": acc, "val_recon_mse": mse,
               "bytes": count.total, "bytes_down": count.down, "bytes_up": count.up,
               "messages_down": count.messages_down, "messages_up": count.messages_up,
               "failures": count.failures, "failure_bytes": count.failure_bytes, "seconds": round(now - t_round[0], 3)}
        t_round[0] = now
        rows.append(row)
        what = f"val mse {mse:.5f}" if acc is None else f"val accuracy {acc:6.2f}%"
        fail = f"  {count.failures} failed" if count.failures else ""
        log(f"[{job.name}] round {row['round']:>3}/{s.rounds} {task:<11} {what}  "
            f"{count.total:>10,} B (down {count.down:,} / up {count.up:,}){fail}")
        return MetricRecord({"accuracy": acc if acc is not None else math.nan,
                             "recon-mse": mse if mse is not None else math.nan})

    # the first phase of a run waits until every client is connected; later ones go on with
    # whoever is (a killed client does not stall the rest of the run)
    need = s.clients if first else 1
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=need)
    config = ConfigRecord({"task": task, "round-offset": offset, "seed": job.seed, "latent": job.latent,
                           "head": job.head_hidden, "last-job": int(last)})
    res = strategy.start(grid, to_record(model), num_rounds=num_rounds, timeout=s.round_timeout,
                         train_config=config, evaluate_fn=evaluate)
    return load_record(model, res.arrays) if len(res.arrays) else model


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, whether ``model`` (in eval mode) gets it right."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).argmax(1) == y
    finally:
        model.train(was)


def run_job(job: Job, grid: Grid, s: FLSettings, log: Callable[[str], None], first: bool = False,
            last: bool = False) -> Dict[str, Any]:
    """One federated training (a set-up on one repeat); returns its record (rows per round, bytes,
    validation accuracy, and test accuracy for a final repeat). ``first``: the run's first job
    (waits for every client to connect); ``last``: its last (where ``settings.kill`` applies, so
    that no later round waits for a client that is gone)."""
    splits, _ = load_federated(s, job.seed)
    features, classes = splits.train.features, num_classes(splits)
    counter = CountingGrid(grid)
    inner: Grid = counter
    if job.coding is not None:
        codec = parse_codec(job.coding)
        inner = CompressionGrid(counter, down=codec, up=codec)
    g = OrderedGrid(inner)
    rows: List[Dict[str, Any]] = []
    params: Dict[str, int] = {}
    t0 = time.perf_counter()
    args = (job.seed, job.latent, job.head_hidden, features, classes, s.hidden, s.backend)
    if job.setup.startswith("baseline"):
        model = build_model("lenet", *args)
        params["lenet"] = num_params(model)
        model = _phase(job, "lenet", g, counter, model, s.rounds, 0, s, splits, rows, first, last, log)
    elif job.setup.startswith("small"):
        model = build_model("compressed", *args)
        params["compressed"] = num_params(model)
        model = _phase(job, "compressed", g, counter, model, s.rounds, 0, s, splits, rows, first, last, log)
    else:
        a = s.ae_rounds_for(job.setup)
        ae = build_model("autoencoder", *args)
        params["autoencoder"] = num_params(ae)
        ae = _phase(job, "autoencoder", g, counter, ae, a, 0, s, splits, rows, first, last, log)
        model = build_model("compressed", *args)
        model.encoder.load_state_dict(ae.encoder.state_dict())
        params["compressed"] = num_params(model)
        model = _phase(job, "compressed", g, counter, model, s.rounds - a, a, s, splits, rows, False, last, log)
    total = sum(r["bytes"] for r in rows)
    out = {"setup": job.setup, "seed": job.seed, "latent": job.latent, "head_hidden": job.head_hidden,
           "coding": job.coding, "split": job.split, "rounds": rows, "params": params,
           "seconds": round(time.perf_counter() - t0, 2),
           "bytes_total": total, "bytes_down": sum(r["bytes_down"] for r in rows),
           "bytes_up": sum(r["bytes_up"] for r in rows), "bytes_per_round": total / len(rows) if rows else 0.0,
           "failures": sum(r["failures"] for r in rows)}
    # each image's outcome, once per split (the paired gaps of aecomp.compress.protocol need them);
    # a --choose candidate (split "val") is never run on the test split
    for name in ("val", "test") if job.split == "test" else ("val",):
        part = getattr(splits, name)
        out[f"{name}_correct"] = _correct(model, part.x, part.y).to(torch.uint8).tolist()
        out[f"{name}_accuracy"] = 100.0 * sum(out[f"{name}_correct"]) / len(part) if len(part) else math.nan
    return out
