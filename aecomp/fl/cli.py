"""``aecomp fl``: federated learning of the three set-ups on Flower's simulation engine, and report.

Examples::

    aecomp fl --data digits --clients 10 --rounds 20 --partition dirichlet:0.5 --setup all --out runs/fl
    aecomp fl --partition iid --setup baseline,compressed+coded --local-epochs 1

Writes ``fl_report.json``, ``fl_report.md`` and ``accuracy_vs_bytes.png`` into ``--out`` and
prints a line per round of each set-up. Mistakes (more clients than training samples, an
unknown partition or set-up, flwr not installed) print one line and exit with 2. Needs the
extra: ``pip install 'aecomp[fl]'`` (flwr with its Ray simulation engine).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import UsageError
from .settings import SETUPS, FLSettings

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
    a("--out", default="aecomp-fl", metavar="DIR", help="output folder (default: aecomp-fl)")
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
      help=f"hidden width of the CompressedNet head (default: {d.head_hidden})")
    a("--seed", type=int, default=d.seed, help="seed for the split, partition, initialisation, batches (default: 0)")
    a("--test-fraction", type=float, default=d.test_fraction, dest="test_fraction",
      help=f"held-out test share, never seen by a client (default: {d.test_fraction:g})")
    a("--num-cpus", type=int, default=None, dest="num_cpus",
      help="CPUs for Ray's client actors, one each (default: all)")
    a("--backend", default=None, help="op backend: reference | cpu | triton | cuda (default: automatic)")
    a("--verbose", action="store_true", help="show Flower's and Ray's own log")


def settings_from_args(args: argparse.Namespace) -> FLSettings:
    text = args.setup.strip()
    setups = SETUPS if text == "all" else tuple(x.strip() for x in text.split(",") if x.strip())
    return FLSettings(data=args.data, clients=args.clients, rounds=args.rounds, partition=args.partition,
                      setups=setups, ae_rounds=args.ae_rounds, local_epochs=args.local_epochs,
                      batch_size=args.batch_size, lr=args.lr, ae_lr=args.ae_lr, latent=args.latent,
                      hidden=args.hidden, head_hidden=args.head_hidden, seed=args.seed,
                      test_fraction=args.test_fraction, backend=args.backend, num_cpus=args.num_cpus)


def run(args: argparse.Namespace) -> int:
    from .run import FLError, check_settings, format_markdown, run_federated, write_report

    s = settings_from_args(args)
    try:
        check_settings(s)
    except FLError as exc:
        raise UsageError(str(exc)) from None
    print(f"aecomp fl: {', '.join(s.setups)} on {s.data}, {s.clients} clients, {s.partition}, {s.rounds} rounds "
          f"(Flower simulation; Ray starting)", flush=True)
    report = run_federated(s, log=lambda line: print(line, flush=True), verbose=args.verbose)
    paths = write_report(report, Path(args.out))
    print()
    print(format_markdown(report).split("\n\nPer round")[0])
    print(f"\nwrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
