"""``aecomp fl``'s run: the output folder, the engine, and the report.

:func:`run_federated` checks every setting (before any process starts), takes the output folder
(the same rules as ``aecomp compress``, :mod:`aecomp.train.output`: created or refused up front,
locked, not empty only with ``--overwrite`` over an earlier run's outputs, ``outputs.json`` saying
``complete: false`` until the report is written), runs the engine (:mod:`aecomp.fl.engine`) and
writes ``fl_report.json``, ``fl_report.md`` and ``accuracy_vs_bytes.png``.

The report (:func:`make_report`) is the ablation over the final repeats, per set-up, with the
project's protocol (``aecomp.compress.protocol.summarize``): test accuracy mean and sample
standard deviation over repeats (each repeat another stratified split, partition and
initialisation), validation accuracy likewise, bytes per round (both directions, all clients,
every round: the autoencoder's included), how many times fewer bytes than the uncoded baseline
and than the baseline through the same compression Mod, and the gap to the baseline, paired
image by image within a repeat and combined over repeats with a 95% interval. Settings chosen
with ``--choose`` were chosen on validation only; the report says how many were compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .settings import FLSettings, FolderError, check_settings

__all__ = ["LAYOUT", "TARGETS", "format_markdown", "make_report", "run_federated", "write_report"]

REPORT = "fl_report.json"
LAYOUT = (REPORT, "fl_report.md", "accuracy_vs_bytes.png", "outputs.json")
# the issue's targets for compressed+coding: bytes per round reduced by, accuracy gap at least
TARGETS = {"vs_baseline": 100.0, "vs_baseline_coding": 10.0, "gap": -0.5}
BYTES_COUNTED = ("aecomp.fl.grid.wire_bytes: serialized Flower message (metadata proto + object tree + every "
                 "object's bytes), each message to or from each client, every round (autoencoder rounds included)")


def run_federated(s: FLSettings, out: Path, overwrite: bool = False, log: Callable[[str], None] = print,
                  ) -> Dict[str, Any]:
    """Check, take ``out``, run, report; returns the report. ``FLError`` for a setting that cannot
    be used and for a failed run; its ``FolderError`` for a folder (both before anything runs)."""
    from ..train.output import run_folder
    from .engine import run_engine

    check_settings(s)
    with run_folder(out, overwrite, LAYOUT, "aecomp fl", REPORT, error=FolderError) as folder:
        doc = run_engine(s, log)
        report = make_report(doc)
        write_report(report, folder)
    return report


def _versions() -> Dict[str, str]:
    out = {}
    for name in ("flwr", "ray", "torch"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def make_report(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The ablation over the final repeats (module docstring) from the ServerApp's result."""
    from ..compress.protocol import summarize
    from .server import evaluation

    jobs = [j for j in doc["jobs"] if j["split"] == "test"]
    seeds = sorted({j["seed"] for j in jobs})
    names: List[str] = list(dict.fromkeys(j["setup"] for j in jobs))
    ref = "baseline" if "baseline" in names else names[0]
    stats = summarize([evaluation(j["setup"], seeds.index(j["seed"]), j) for j in jobs], ref)
    setups: Dict[str, Any] = {}
    for n in names:
        rs = [j for j in jobs if j["setup"] == n]
        row = stats[n].to_dict()
        row.pop("name")
        if ref != "baseline":  # gaps only against the baseline
            row["val_gap"] = row["test_gap"] = None
        row.update({"seeds": [j["seed"] for j in rs], "params": rs[0]["params"], "coding": rs[0]["coding"],
                    "latent": rs[0]["latent"], "head_hidden": rs[0]["head_hidden"],
                    "bytes_per_round": row.pop("bytes"),
                    "bytes_down_per_round": sum(j["bytes_down"] / len(j["rounds"]) for j in rs) / len(rs),
                    "bytes_up_per_round": sum(j["bytes_up"] / len(j["rounds"]) for j in rs) / len(rs),
                    "per_repeat": [{"seed": j["seed"], "test_accuracy": j["test_accuracy"],
                                    "val_accuracy": j["val_accuracy"], "bytes_per_round": j["bytes_per_round"],
                                    "failures": j["failures"]} for j in rs],
                    "failures": sum(j["failures"] for j in rs), "seconds": sum(j["seconds"] for j in rs)})
        setups[n] = row
    for base, key in (("baseline", "vs_baseline"), ("baseline+coding", "vs_baseline_coding")):
        if base in setups:
            for row in setups.values():
                row[f"fewer_bytes_{key}"] = setups[base]["bytes_per_round"]["mean"] / row["bytes_per_round"]["mean"]
    target = None
    c = setups.get("compressed+coding")
    if c and "fewer_bytes_vs_baseline" in c:
        gap = c["test_gap"]["mean"] if c.get("test_gap") else None
        checks = {"fewer_bytes_vs_baseline": (c["fewer_bytes_vs_baseline"], TARGETS["vs_baseline"]),
                  "fewer_bytes_vs_baseline_coding": (c.get("fewer_bytes_vs_baseline_coding"),
                                                     TARGETS["vs_baseline_coding"]),
                  "gap_vs_baseline": (gap, TARGETS["gap"])}
        target = {k: {"value": v, "need": need, "met": v is not None and v >= need} for k, (v, need) in checks.items()}
    return {"settings": doc["settings"], "versions": _versions(), "python": sys.version.split()[0],
            "bytes_counted": BYTES_COUNTED, "choice": doc.get("choice"), "setups": setups, "targets": target,
            "jobs": doc["jobs"]}


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _spread(d: Dict[str, Any], unit: str = "%") -> str:
    return f"{d['mean']:.2f}{unit}" if d.get("std") is None else f"{d['mean']:.2f} ± {d['std']:.2f}{unit}"


def _ci(g: Optional[Dict[str, Any]]) -> str:
    return "-" if not g else f"{g['mean']:+.2f} pt [{g['low']:+.2f}, {g['high']:+.2f}]"


def format_markdown(report: Dict[str, Any]) -> str:
    s = report["settings"]
    v = report["versions"]
    lines = [
        "# Federated learning: compressed models and compressed messages (ablation)",
        "",
        f"Data `{s['data']}`, {s['clients']} clients, partition `{s['partition']}`, {s['rounds']} rounds, "
        f"{s['local_epochs']} local epochs, engine {s['engine']}, seeds {s['seed']}..{s['seed'] + s['repeats'] - 1} "
        f"(each repeat: another stratified train/validation/test split, partition and initialisation); flwr "
        f"{v.get('flwr')}. Latent {s['latent']}, head {s['head_hidden']}, coding `{s['coding']}` (both directions).",
        f"Bytes: {report['bytes_counted']}. Accuracy: mean ± sd over repeats; gap: paired image by image within a "
        f"repeat, combined over repeats, 95% interval (aecomp.compress.protocol).",
        "",
    ]
    ch = report.get("choice")
    if ch:
        c = ch["chosen"]
        lines += [f"Settings chosen on the validation split of seeds {ch['seeds']} among {ch['compared']} candidates "
                  f"(the fewest bytes within {ch['tolerance']} points of the baseline's validation accuracy): "
                  f"latent {c['latent']}, head {c['head_hidden']}, `{c['coding']}` (validation gap "
                  f"{c['val_gap']:+.2f} pt" + ("" if c["within_tolerance"] else
                                               "; none was within the tolerance: this is the best on validation")
                  + ").", ""]
    lines += ["| set-up | params moved | test accuracy | val accuracy | test gap vs baseline | bytes / round "
              "(down + up) | fewer bytes than baseline | than baseline+coding |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["setups"].items():
        params = ", ".join(f"{k} {n:,}" for k, n in r["params"].items())
        lines.append(
            f"| {name} | {params} | {_spread(r['test_accuracy'])} | {_spread(r['val_accuracy'])} | "
            f"{'-' if name == 'baseline' else _ci(r.get('test_gap'))} | {_fmt_bytes(r['bytes_per_round']['mean'])} "
            f"({_fmt_bytes(r['bytes_down_per_round'])} + {_fmt_bytes(r['bytes_up_per_round'])}) | "
            + " | ".join(f"{r[k]:.1f}x" if k in r else "-"
                         for k in ("fewer_bytes_vs_baseline", "fewer_bytes_vs_baseline_coding")) + " |")
    t = report.get("targets")
    if t:
        lines += ["", "Targets (compressed+coding): " + "; ".join(
            f"{k} {'-' if x['value'] is None else format(x['value'], '.2f')} (need >= {x['need']:g}): "
            f"{'met' if x['met'] else '**missed**'}" for k, x in t.items())]
    lines += ["", "Per repeat (test accuracy / validation accuracy / bytes per round / failed replies):", "",
              "| seed | " + " | ".join(report["setups"]) + " |", "| --- |" + " --- |" * len(report["setups"])]
    seeds = sorted({p["seed"] for r in report["setups"].values() for p in r["per_repeat"]})
    for seed in seeds:
        cells = []
        for r in report["setups"].values():
            p = next((p for p in r["per_repeat"] if p["seed"] == seed), None)
            cells.append("" if p is None else f"{p['test_accuracy']:.2f}% / {p['val_accuracy']:.2f}% / "
                         f"{_fmt_bytes(p['bytes_per_round'])}" + (f" / {p['failures']} failed" if p["failures"] else ""))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if ch:
        lines += ["", "Candidates on validation (the choice reads nothing else):", "",
                  "| candidate | val accuracy | val gap vs baseline | bytes / round |", "| --- | --- | --- | --- |"]
        for row in ch["rows"]:
            lines.append(f"| {row['name']} | {_spread(row['val_accuracy'])} | {_ci(row.get('val_gap'))} | "
                         f"{_fmt_bytes(row['bytes']['mean'])} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_bytes(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = min((j["seed"] for j in report["jobs"] if j["split"] == "test"), default=None)
    for j in report["jobs"]:
        if j["split"] != "test" or j["seed"] != first:
            continue
        xs, ys, cum = [], [], 0
        for row in j["rounds"]:
            cum += row["bytes"]
            if row["val_accuracy"] is not None:
                xs.append(cum)
                ys.append(row["val_accuracy"])
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=j["setup"])
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes, both directions, all clients (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    s = report["settings"]
    ax.set_title(f"{s['data']}, {s['clients']} clients, {s['partition']}, seed {first}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Dict[str, Any], out: Path) -> Dict[str, Path]:
    from ..train.checkpoint import atomic_write

    out = Path(out)
    paths = {"json": out / REPORT, "md": out / "fl_report.md", "png": out / "accuracy_vs_bytes.png"}
    atomic_write(paths["json"], (json.dumps(report, indent=1, allow_nan=True) + "\n").encode())
    atomic_write(paths["md"], format_markdown(report).encode())
    plot_accuracy_vs_bytes(report, paths["png"])
    return paths
