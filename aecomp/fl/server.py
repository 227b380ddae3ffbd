"""The ServerApp's main, the same on both engines: choose on validation, then the final repeats.

``server_main(s, files, log)`` runs, on the grid Flower gives the ServerApp:

1. **Choice** (only when ``s.candidates`` is set, ``aecomp fl --choose``): on the first
   ``min(2, repeats)`` seeds, the plain baseline and every candidate ``(latent, head, coding)``
   as ``compressed+coding``; each is scored on the server's *validation* split, and the candidate
   with the fewest bytes per round whose mean validation gap to the baseline is within
   :data:`TOLERANCE` points is chosen (:func:`choose`, with ``aecomp.compress.protocol``). Their
   test outcomes are neither read nor reported (the result keeps only validation figures).
2. **Final repeats**: every set-up of ``s.setups`` on seeds ``seed .. seed + repeats - 1`` with the
   chosen (or given) settings; test accuracy computed once per final model.

Results go to ``files["result"]`` (JSON, rewritten atomically after every job, ``"done": true`` at
the end, ``"error"`` when a job failed) and progress lines to ``files["progress"]``: the parent
process (``aecomp.fl.engine``) reads both, whichever engine ran the ServerApp.
"""
from __future__ import annotations

import json
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..train.checkpoint import atomic_write
from .apps import run_job
from .settings import FLError, FLSettings, Job, jobs_of

__all__ = ["TOLERANCE", "make_server_app", "server_main"]

TOLERANCE = 0.5  # percentage points: the accuracy target, used for the choice on validation


def _write_json(path: str, doc: Dict[str, Any]) -> None:
    atomic_write(path, json.dumps(doc, allow_nan=True).encode())


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


def evaluation(name: str, repeat: int, job: Dict[str, Any], tested: bool = True):
    """A job as the protocol's :class:`~aecomp.compress.protocol.Evaluation` (its "bytes": per round);
    ``tested=False``: validation only, whatever the job carries (a candidate of the choice)."""
    import numpy as np

    from ..compress.protocol import Evaluation

    test = job.get("test_correct") if tested else None  # a --choose candidate is never tested
    return Evaluation(name, repeat, job["bytes_per_round"], np.asarray(job["val_correct"], dtype=bool),
                      None if test is None else np.asarray(test, dtype=bool))


def choose(run: Callable[[Job], Dict[str, Any]], s: FLSettings, log: Callable[[str], None]) -> Dict[str, Any]:
    """Stage 1 of :func:`server_main`: the candidates, ranked on validation only
    (``aecomp.compress.protocol.smallest_within``: the fewest bytes per round whose mean
    validation gap to the baseline is within :data:`TOLERANCE`; when none is, the best on
    validation, and the result says so)."""
    from ..compress.protocol import best_on_validation, repeat_seed, smallest_within, summarize

    repeats = range(min(2, s.repeats))
    seeds = [repeat_seed(s.seed, r) for r in repeats]
    evals = [evaluation("baseline", r, run(Job("baseline", seeds[r], s.latent, s.head_hidden, None, "val")),
                        tested=False)
             for r in repeats]
    labels = {}
    for latent, head, coding in s.candidates:
        label = f"latent {latent}, head {head}, {coding}"
        labels[label] = (latent, head, coding)
        evals += [evaluation(label, r, run(Job("compressed+coding", seeds[r], latent, head, coding, "val")),
                             tested=False)
                  for r in repeats]
    rows = summarize(evals, "baseline")
    rec = smallest_within(rows.values(), "baseline", points=TOLERANCE)
    within = rec.row is not None and rec.name != "baseline"
    pick = rec.row if within else best_on_validation([r for n, r in rows.items() if n != "baseline"])
    latent, head, coding = labels[pick.name]
    chosen = {"latent": latent, "head_hidden": head, "coding": coding, "bytes_per_round": pick.bytes.mean,
              "val_gap": pick.val_gap.mean, "within_tolerance": within}
    log(f"chosen on validation: {pick.name} ({pick.bytes.mean:,.0f} B per round, validation gap "
        f"{pick.val_gap.mean:+.2f} pt" + ("" if within else f"; no candidate within {TOLERANCE} pt: the best on "
                                                              f"validation") + ")")
    return {"seeds": seeds, "tolerance": TOLERANCE, "compared": len(labels), "reason": rec.reason,
            "rows": [r.to_dict() for r in rows.values()],  # validation only: candidates are not tested
            "chosen": chosen}


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
