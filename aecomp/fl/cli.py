"""``aecomp fl``: federated learning on Flower, the ablation of model and message compression.

Examples::

    aecomp fl --data digits --clients 10 --partition dirichlet:0.5 --repeats 5 --out runs/fl
    aecomp fl --setup baseline,compressed+coding --coding top0.05+kmeans:3 --engine deployment
    aecomp fl --choose "latent=16,24;head=32,64;coding=top0.1+kmeans:4,top0.25+kmeans:4" --repeats 5

Runs every set-up (``baseline``, ``compressed``, ``small``, each also ``+coding``: through the
compression Mod) for ``--repeats`` seeds on Flower's simulation engine (Ray) or its deployment
runtime (``--engine deployment``: a SuperLink and one SuperNode per client as processes on
127.0.0.1), and writes ``fl_report.json``, ``fl_report.md`` and ``accuracy_vs_bytes.png`` into
``--out``. Every setting is checked before anything starts: a mistake prints one line and exits
with 2 (so does an unusable or busy ``--out``, or one that holds something else than an earlier
run's outputs without ``--overwrite``). A run that fails (a round in which every client failed,
an engine process that died) prints one line and exits with 1. Ctrl-C ends every process the
run started within seconds and exits with 130; ``--out`` then says ``complete: false`` in
``outputs.json`` and a rerun with ``--overwrite`` replaces it.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Tuple

from ..cli import UsageError
from .settings import ENGINES, SETUPS, FLError, FLSettings, FolderError, parse_faults

__all__ = ["add_arguments", "run", "settings_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FLSettings()
    a = parser.add_argument
    a("--data", default=d.data, help="digits (default) | digits28 | mnist:DIR | FILE.npz/.csv with labels")
    a("--clients", type=int, default=d.clients, help=f"number of clients (default: {d.clients})")
    a("--rounds", type=int, default=d.rounds,
      help=f"federated rounds per set-up, autoencoder rounds included (default: {d.rounds})")
    a("--partition", default=d.partition, help="iid (default) | dirichlet:ALPHA (label skew, e.g. dirichlet:0.5)")
    a("--setup", default="all", help=f"comma-separated of {', '.join(SETUPS)}, or all (default)")
    a("--repeats", type=int, default=d.repeats,
      help=f"seeds seed..seed+N-1, each another split, partition and initialisation (default: {d.repeats})")
    a("--engine", choices=ENGINES, default=d.engine,
      help="simulation (Flower's Ray engine, default) | deployment (SuperLink + SuperNodes on 127.0.0.1)")
    a("--coding", default=d.coding,
      help=f"the compression Mod's codec for the +coding set-ups: [topP+]int8|kmeans:B|float32 (default: {d.coding})")
    a("--choose", default=None, metavar="SPEC",
      help="choose latent, head and coding on validation first: 'latent=16,24;head=32,64;coding=A,B' (products)")
    a("--out", default="aecomp-fl", metavar="DIR", help="output folder (default: aecomp-fl)")
    a("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    a("--ae-rounds", type=int, default=None, dest="ae_rounds",
      help="of the rounds, how many train the autoencoder in the compressed set-ups (default: a quarter)")
    a("--local-epochs", type=int, default=d.local_epochs, dest="local_epochs",
      help=f"epochs each client trains per round (default: {d.local_epochs})")
    a("--batch-size", type=int, default=d.batch_size, dest="batch_size", help=f"batch size (default: {d.batch_size})")
    a("--lr", type=float, default=d.lr, help=f"Adam learning rate of the classifiers (default: {d.lr:g})")
    a("--ae-lr", type=float, default=d.ae_lr, dest="ae_lr",
      help=f"Adam learning rate of the autoencoder (default: {d.ae_lr:g})")
    a("--latent", type=int, default=d.latent, help=f"autoencoder code width (default: {d.latent})")
    a("--hidden", type=int, default=d.hidden, help=f"autoencoder hidden width (default: {d.hidden})")
    a("--head-hidden", type=int, default=d.head_hidden, dest="head_hidden",
      help=f"hidden width of the CompressedNet head, 0: none (default: {d.head_hidden})")
    a("--seed", type=int, default=d.seed, help="first seed (default: 0)")
    a("--val-fraction", type=float, default=d.val_fraction, dest="val_fraction",
      help=f"validation share, held by the server; every choice is made on it (default: {d.val_fraction:g})")
    a("--test-fraction", type=float, default=d.test_fraction, dest="test_fraction",
      help=f"test share, held by the server, reported once per final model (default: {d.test_fraction:g})")
    a("--round-timeout", type=float, default=d.round_timeout, dest="round_timeout",
      help=f"seconds a round waits for replies (default: {d.round_timeout:g})")
    a("--num-cpus", type=int, default=None, dest="num_cpus",
      help="CPUs for Ray's client actors, one each (default: all)")
    a("--backend", default=None, help="op backend: reference | cpu | triton | cuda (default: automatic)")
    a("--fail", default=None, metavar="ROUND:CLIENT",
      help="fault injection: that client (* = every client) raises half-way through that round")
    a("--kill", default=None, metavar="ROUND:CLIENT",
      help="fault injection (deployment): that client's SuperNode is killed half-way through that round")


def _parse_choose(text, latent: int, head: int, coding: str) -> Tuple[Tuple[int, int, str], ...]:
    """--choose's candidates; a field it leaves out keeps the value of its own option (--latent,
    --head-hidden, --coding)."""
    if not text:
        return ()
    fields = {"latent": [], "head": [], "coding": []}
    for part in str(text).split(";"):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in fields or not values.strip():
            raise UsageError(f"--choose {text!r}: expected 'latent=A,B;head=C,D;coding=E,F' (any of the three)")
        fields[key] = [v.strip() for v in values.split(",") if v.strip()]
    try:
        latents = [int(x) for x in fields["latent"]] or [latent]
        heads = [int(x) for x in fields["head"]] or [head]
    except ValueError:
        raise UsageError(f"--choose {text!r}: latent and head take integers") from None
    codings = fields["coding"] or [coding]
    return tuple(itertools.product(latents, heads, codings))


def settings_from_args(args: argparse.Namespace) -> FLSettings:
    text = args.setup.strip()
    setups = SETUPS if text == "all" else tuple(x.strip() for x in text.split(",") if x.strip())
    try:
        drop, kill = parse_faults(args.fail, "--fail"), parse_faults(args.kill, "--kill")
    except FLError as exc:
        raise UsageError(str(exc)) from None
    return FLSettings(data=args.data, clients=args.clients, rounds=args.rounds, partition=args.partition,
                      setups=setups, ae_rounds=args.ae_rounds, local_epochs=args.local_epochs,
                      batch_size=args.batch_size, lr=args.lr, ae_lr=args.ae_lr, latent=args.latent,
                      hidden=args.hidden, head_hidden=args.head_hidden, coding=args.coding, seed=args.seed,
                      repeats=args.repeats, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                      round_timeout=args.round_timeout, engine=args.engine, drop=drop, kill=kill,
                      backend=args.backend, num_cpus=args.num_cpus,
                      candidates=_parse_choose(args.choose, args.latent, args.head_hidden, args.coding))


def _check_install(engine: str) -> None:
    import importlib.util

    need = [("flwr", "flwr")] + ([("ray", "ray (flwr's simulation engine)")] if engine == "simulation" else [])
    for module, what in need:
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"{what} is not installed; install the extra: pip install 'aecomp[fl]'")


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    _check_install(s.engine)
    from .run import format_markdown, run_federated
    from .settings import check_settings

    try:
        check_settings(s)
    except FLError as exc:
        raise UsageError(str(exc)) from None
    print(f"aecomp fl: {', '.join(s.setups)} on {s.data}, {s.clients} clients, {s.partition}, {s.rounds} rounds, "
          f"{s.repeats} repeat(s), Flower {s.engine} engine", flush=True)
    out = Path(args.out)
    try:
        report = run_federated(s, out, overwrite=args.overwrite, log=lambda line: print(line, flush=True))
    except FolderError as exc:  # refused before anything ran: a usage mistake
        raise UsageError(str(exc)) from None
    except FLError as exc:
        print(f"aecomp fl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"aecomp fl: interrupted; every process of the run has ended; {out} is incomplete "
              f"(outputs.json: complete: false): rerun with --overwrite", file=sys.stderr)
        return 130
    print()
    print(format_markdown(report).split("\n\nPer repeat")[0])
    print(f"\nwrote {out / 'fl_report.json'}, {out / 'fl_report.md'}, {out / 'accuracy_vs_bytes.png'}")
    return 0
