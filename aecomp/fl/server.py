"""The ServerApp's main, the same on both engines: choose on validation, then the final repeats.

``server_main(s, files, log)`` runs, on the grid Flower gives the ServerApp:

1. **Choice** (only when ``s.candidates`` is set, ``aecomp fl --choose``): on the first
   ``min(2, repeats)`` seeds, the plain baseline and every candidate ``(latent, head, coding)``
   as ``compressed+coding``; each is scored on the server's *validation* split. The candidate
   with the fewest bytes per round whose mean validation gap to the baseline is within
   :data:`TOLERANCE` points is chosen (``aecomp.fl.stats.choose_on_validation``); test accuracy is
   not even computed for these runs.
2. **Final repeats**: every set-up of ``s.setups`` on seeds ``seed .. seed + repeats - 1`` with the
   chosen (or given) settings; test accuracy computed once per final model.

Results go to ``files["result"]`` (JSON, rewritten atomically after every job, ``"done": true`` at
the end, ``"error"`` when a job failed) and progress lines to ``files["progress"]``: the parent
process (``aecomp.fl.engine``) reads both, whichever engine ran the ServerApp.
"""
from __future__ import annotations

import json
import os
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .apps import run_job
from .settings import FLError, FLSettings, Job, jobs_of
from .stats import choose_on_validation

__all__ = ["TOLERANCE", "make_server_app", "server_main"]

TOLERANCE = 0.5  # percentage points: the accuracy target, used for the choice on validation


def _write_json(path: str, doc: Dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, allow_nan=True)
    os.replace(tmp, path)


def server_main(grid: Grid, s: FLSettings, files: Dict[str, str], log: Callable[[str], None]) -> Dict[str, Any]:
    doc: Dict[str, Any] = {"settings": s.to_dict(), "choice": None, "jobs": [], "done": False, "error": None}
    first = [True]

    def run(job: Job, last: bool = False) -> Dict[str, Any]:
        r = run_job(job, grid, s, log, first=first[0], last=last)
        first[0] = False
        return r

    try:
        if s.candidates:
            doc["choice"] = choose(run, s, log)
            c = doc["choice"]["chosen"]
            s = replace(s, latent=c["latent"], head_hidden=c["head_hidden"], coding=c["coding"])
            doc["settings"] = s.to_dict()
        jobs = jobs_of(s)
        for i, job in enumerate(jobs):
            doc["jobs"].append(run(job, last=i == len(jobs) - 1))
            _write_json(files["result"], doc)
        doc["done"] = True
    except FLError as exc:
        doc["error"] = str(exc)
    except Exception as exc:  # anything else: the parent reports it, with the traceback in the log
        doc["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log("".join(traceback.format_exception(exc)).rstrip())
    _write_json(files["result"], doc)
    return doc


def choose(run: Callable[[Job], Dict[str, Any]], s: FLSettings, log: Callable[[str], None]) -> Dict[str, Any]:
    """Stage 1 of :func:`server_main`: the candidates on validation only."""
    seeds = list(range(s.seed, s.seed + min(2, s.repeats)))
    base = [run(Job("baseline", seed, s.latent, s.head_hidden, None, "val")) for seed in seeds]
    rows: List[Dict[str, Any]] = []
    for latent, head, coding in s.candidates:
        runs = [run(Job("compressed+coding", seed, latent, head, coding, "val")) for seed in seeds]
        rows.append({"latent": latent, "head_hidden": head, "coding": coding,
                     "val_accuracy": [r["val_accuracy"] for r in runs],
                     "bytes_per_round": sum(r["bytes_per_round"] for r in runs) / len(runs)})
    chosen = choose_on_validation(rows, [b["val_accuracy"] for b in base], TOLERANCE)
    log(f"chosen on validation: latent {chosen['latent']}, head {chosen['head_hidden']}, {chosen['coding']} "
        f"({chosen['bytes_per_round']:,.0f} B per round, validation gap {chosen['val_gap']:+.2f} pt"
        + ("" if chosen["within_tolerance"] else f"; no candidate within {TOLERANCE} pt: the best on validation")
        + ")")
    return {"seeds": seeds, "tolerance": TOLERANCE, "baseline_val_accuracy": [b["val_accuracy"] for b in base],
            "baseline_bytes_per_round": sum(b["bytes_per_round"] for b in base) / len(base),
            "candidates": rows, "chosen": chosen, "compared": len(rows)}


def _progress_log(path: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    return log


def make_server_app(s: FLSettings = None, files: Dict[str, str] = None) -> ServerApp:
    """A ServerApp running :func:`server_main`. Without arguments (the deployment's FAB) the
    settings and file paths come from the run config (``settings-file``, ``result-file``,
    ``progress-file``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings, paths = s, files
        if settings is None:
            rc = context.run_config
            settings = FLSettings.from_dict(json.loads(Path(str(rc["settings-file"])).read_text()))
            paths = {"result": str(rc["result-file"]), "progress": str(rc["progress-file"])}
        server_main(grid, settings, paths, _progress_log(paths["progress"]))

    return app
