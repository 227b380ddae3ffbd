"""Run the federated set-ups in Flower's simulation engine and write the report.

:func:`run_federated` starts ONE ``flwr.simulation.run_simulation`` (Ray backend, one actor
per CPU, ``settings.clients`` virtual SuperNodes) whose ServerApp runs the set-ups one after the
other, so Ray starts once. Ray is shut down by Flower when the simulation ends (and again here,
should Flower have stopped early); no process is left behind.

:func:`write_report` writes ``fl_report.json`` (settings, versions, every round of every set-up),
``fl_report.md`` (the table: accuracy, bytes per round, ratio to the baseline, targets) and
``accuracy_vs_bytes.png`` (test accuracy against cumulative bytes, one curve per set-up; the
autoencoder rounds of the compressed set-ups have no accuracy, so their curves start at the
bytes those rounds cost).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .. import data as data_mod
from .settings import SETUPS, FLSettings
from .partition import parse_partition

__all__ = ["FLError", "TARGETS", "check_settings", "run_federated", "write_report"]

# the targets: accuracy within 1 point of the baseline, bytes per round reduced by
TARGETS = {"compressed": 10.0, "compressed+coded": 40.0}
ACCURACY_TOLERANCE = 1.0  # percentage points


class FLError(ValueError):
    """A setting the federated run cannot work with; the message is one line."""


def check_settings(s: FLSettings) -> None:
    """Raise :class:`FLError` for settings that cannot run (before Ray starts)."""
    import importlib.util

    for module, what in (("flwr", "flwr"), ("ray", "ray (flwr's simulation engine)")):
        if importlib.util.find_spec(module) is None:
            raise FLError(f"{what} is not installed; install the extra: pip install 'aecomp[fl]'")
    unknown = [x for x in s.setups if x not in SETUPS]
    if unknown or not s.setups:
        raise FLError(f"unknown --setup {','.join(unknown) or '(none)'}; expected {', '.join(SETUPS)} or all")
    try:
        parse_partition(s.partition)
    except ValueError as exc:
        raise FLError(str(exc)) from None
    if s.clients < 1:
        raise FLError(f"--clients must be a positive integer, got {s.clients}")
    if s.rounds < 1:
        raise FLError(f"--rounds must be a positive integer, got {s.rounds}")
    if s.local_epochs < 1 or s.batch_size < 1:
        raise FLError(f"--local-epochs and --batch-size must be positive, got {s.local_epochs} and {s.batch_size}")
    if any(x != "baseline" for x in s.setups):
        a = s.ae_rounds_for("compressed")
        if not 1 <= a < s.rounds:
            raise FLError(f"the compressed set-ups need at least one autoencoder round and one classifier round: "
                          f"--ae-rounds {a} of --rounds {s.rounds}")
    if s.num_cpus is not None and s.num_cpus < 1:
        raise FLError(f"--num-cpus must be positive, got {s.num_cpus}")
    from .apps import load_federated

    try:
        splits, _ = load_federated(s)
    except (data_mod.DataError, ValueError) as exc:
        raise FLError(str(exc)) from None
    if s.latent >= splits.train.features:
        raise FLError(f"--latent {s.latent} is not smaller than the {splits.train.features} input features of {s.data}")
    if len(splits.test) == 0:
        raise FLError(f"{s.data}: the test split is empty; use more data or a larger test fraction")


def _backend_config(s: FLSettings, verbose: bool, ray_temp_dir: Optional[str]) -> Dict[str, Any]:
    init_args: Dict[str, Any] = {"num_cpus": s.num_cpus or os.cpu_count() or 1, "include_dashboard": False,
                                 "log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    if ray_temp_dir:
        init_args["_temp_dir"] = ray_temp_dir
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


def run_federated(s: FLSettings, log: Callable[[str], None] = print, verbose: bool = False,
                  ray_temp_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run ``s.setups`` in one Flower simulation; returns the report (see :func:`write_report`)."""
    check_settings(s)
    import flwr
    import ray
    from flwr.simulation import run_simulation

    from .apps import make_client_app, make_server_app

    sink: Dict[str, Any] = {}
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # our own progress lines say what happens; Flower's INFO log would double them
        flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")
            run_simulation(server_app=make_server_app(s, sink, log), client_app=make_client_app(s),
                           num_supernodes=s.clients, backend_config=_backend_config(s, verbose, ray_temp_dir))
    finally:
        flwr_logger.setLevel(level)
        if ray.is_initialized():
            ray.shutdown()
    missing = [x for x in s.setups if x not in sink]
    if missing:
        raise RuntimeError(f"the federated run ended without results for {', '.join(missing)} "
                           f"(see Flower's log above)")
    return make_report(s, sink, versions={"flwr": flwr.__version__, "ray": ray.__version__})


def make_report(s: FLSettings, results: Dict[str, Any], versions: Dict[str, str]) -> Dict[str, Any]:
    settings = asdict(s)
    settings["setups"] = list(s.setups)
    settings["drop"] = [list(d) for d in s.drop]
    base = results.get("baseline")
    for name, r in results.items():
        r["bytes_ratio"] = (base["bytes_per_round"] / r["bytes_per_round"]) if base and r["bytes_per_round"] else None
        r["accuracy_gap"] = (r["final_accuracy"] - base["final_accuracy"]
                             if base and r["final_accuracy"] is not None and base["final_accuracy"] is not None
                             else None)
        need = TARGETS.get(name)
        if need is not None and r["bytes_ratio"] is not None and r["accuracy_gap"] is not None:
            r["target"] = {"bytes_ratio_min": need, "accuracy_gap_min": -ACCURACY_TOLERANCE,
                           "met": bool(r["bytes_ratio"] >= need and r["accuracy_gap"] >= -ACCURACY_TOLERANCE)}
    return {"settings": settings, "versions": versions, "python": sys.version.split()[0],
            "bytes_counted": "aecomp.fl.grid.wire_bytes: serialized Flower message (metadata proto + object "
                             "tree + every object's bytes), each message to or from each client",
            "setups": results}


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Federated learning with autoencoder-compressed clients",
        "",
        f"Data `{s['data']}`, {s['clients']} clients, partition `{s['partition']}`, {s['rounds']} rounds, "
        f"{s['local_epochs']} local epochs, seed {s['seed']}; flwr {report['versions'].get('flwr')}, "
        f"ray {report['versions'].get('ray')}. Bytes: {report['bytes_counted']}.",
        "",
        "| set-up | params moved | final test accuracy | vs baseline | bytes / round (down + up) | fewer bytes than baseline | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["setups"].items():
        acc = "-" if r["final_accuracy"] is None else f"{r['final_accuracy']:.2f}%"
        gap = "-" if r.get("accuracy_gap") is None or name == "baseline" else f"{r['accuracy_gap']:+.2f} pt"
        ratio = "1x" if name == "baseline" else ("-" if r.get("bytes_ratio") is None else f"{r['bytes_ratio']:.1f}x")
        params = ", ".join(f"{k} {v:,}" for k, v in r["params"].items())
        t = r.get("target")
        target = f">= {t['bytes_ratio_min']:.0f}x, within 1 pt" if t else "-"
        met = "-" if not t else ("yes" if t["met"] else "**no**")
        lines.append(f"| {name} | {params} | {acc} | {gap} | {_fmt_bytes(r['bytes_per_round'])} "
                     f"({_fmt_bytes(r['bytes_down'] / max(len(r['rounds']), 1))} + "
                     f"{_fmt_bytes(r['bytes_up'] / max(len(r['rounds']), 1))}) | {ratio} | {target} | {met} |")
    lines += ["", "Per round (test accuracy, or reconstruction MSE in the autoencoder rounds; bytes of the round):", ""]
    names = list(report["setups"])
    lines.append("| round | " + " | ".join(names) + " |")
    lines.append("| --- |" + " --- |" * len(names))
    for i in range(max(len(r["rounds"]) for r in report["setups"].values())):
        cells = []
        for n in names:
            rows = report["setups"][n]["rounds"]
            if i >= len(rows):
                cells.append("")
                continue
            row = rows[i]
            what = f"mse {row['recon_mse']:.4f}" if row["accuracy"] is None else f"{row['accuracy']:.2f}%"
            fail = f", {row['failures']} failed" if row["failures"] else ""
            cells.append(f"{what}, {_fmt_bytes(row['bytes'])}{fail}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_bytes(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in report["setups"].items():
        xs, ys, cum = [], [], 0
        for row in r["rounds"]:
            cum += row["bytes"]
            if row["accuracy"] is not None:
                xs.append(cum)
                ys.append(row["accuracy"])
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes, both directions, all clients (log scale)")
    ax.set_ylabel("test accuracy (%)")
    s = report["settings"]
    ax.set_title(f"{s['data']}, {s['clients']} clients, {s['partition']}, {s['rounds']} rounds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Dict[str, Any], out: Path) -> Dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "fl_report.json", "md": out / "fl_report.md", "png": out / "accuracy_vs_bytes.png"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["md"].write_text(format_markdown(report))
    plot_accuracy_vs_bytes(report, paths["png"])
    return paths
