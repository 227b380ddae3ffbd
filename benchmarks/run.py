"""The benchmark runner: aecomp against torch eager and torch.compile, in one process.

    python -m benchmarks.run                       # the whole CPU matrix, 1 thread (~2 min here)
    python -m benchmarks.run --rounds 3 --publish  # three passes, medians over them (the published run)
    python -m benchmarks.run --quick --only op     # a short look at the single-layer ops
    python -m benchmarks.run --device cuda --budget-s 300   # the GPU matrix (gpu_check.sh)
    python -m benchmarks.render                    # tables, plots, README's Performance section
    aecomp bench ...                               # the runner, from the command line tool

It measures, in one process and on random data:

* the machine's ceilings, at the start and again at the end of the run -- CPU: single-core
  sgemm GFLOP/s (``torch.mm`` of two 1024^2 float32 matrices) and a 64 MiB copy (GB/s of read +
  write); GPU: an 8192^3 bfloat16 and float32 ``torch.mm`` (TFLOP/s) and a 1 GiB
  device-to-device copy. On the CPU the same sgemm also takes its turn in the alternation of
  every case, so each row's fraction of the ceiling is formed under the load that row saw (on a
  shared machine the load moves between cases; the start-of-run value is kept beside it);
* then the matrix (workload x backend x dtype x shape x batch; see ``benchmarks/_workloads.py``
  for what each workload times): ``op`` (linear_act at the six reference layers, mse_loss;
  forward and forward+backward), ``chain`` (mlp, mlp_mse_loss on 784-128-64-32-64-128-784),
  ``train_step`` (FusedStep vs eager vs torch.compile; on the GPU at batch 64, 4096 and 65536),
  ``train_job`` (DataLoader loop vs Trainer), ``latency`` (CompressedNet inference at batch 1
  and 256), ``inference`` (GPU: the packed CompressedNet, int8 and 4-bit shared weights, at
  batch 1, 256 and 65536; on the CPU ``--only inference`` runs ``benchmarks/bench_inference.py``).

Timing (``benchmarks/_timing.py``): CPU with ``time.perf_counter``, single-threaded by default,
every implementation of a case warmed up and then sampled round-robin (the medians of
alternating samples: load from other processes falls on all alike); GPU with
``triton.testing.do_bench`` (CUDA events). Peak memory of one extra call beside each time.

GPU runs are *phased* (``--phased``, the default there): each case is measured in up to three
passes -- eager and aecomp, then ``torch.compile``, then max-autotune -- and all passes of all
cases run in one priority order (bfloat16 before float32; the training step and the chain
before single ops; large batches first; a later pass of a case some way behind its first), so a
time budget (``--budget-s``) ends the run with the most useful numbers. Before each measurement
the runner checks the budget against a cost estimate: the implementation's guess until the same
implementation of the same workload has run, then what that took (``--plan`` prints the
selection without running anything). CPU runs measure every
implementation of a case together, in alternation.

Results: JSON Lines APPENDED to ``./runs/bench/<machine>.jsonl`` (``--results-dir``), or with
``--publish`` to the tracked ``benchmarks/results/<machine>.jsonl`` that the README's figures come
from (never from a ``--smoke`` run); ``<machine>`` from ``benchmarks/_machine.py``; one file per
machine and device kind, one line
per measurement, every line carrying the run id, date, machine, CPU model, GPU, torch and
triton versions, git commit and the load average. Row kinds: ``run`` (a run's settings and
environment, first), ``ceiling``, ``result``, ``run_end``. A result row holds ``median_ms``,
``p20_ms``, ``p80_ms``, ``ratio_vs_eager`` (eager median / this median: > 1 is faster than
eager), ``ratio_vs_compile`` (when compile was measured before this row), ``gflops``,
``frac_ceiling`` (achieved FLOP/s over ``ceiling_gflops``: on the CPU the sgemm sampled in
alternation with the case, on the GPU the matmul ceiling of the row's dtype), ``frac_ceiling_run`` (over the
start-of-run ceiling), ``gbps`` and ``frac_bw_ceiling`` (over the copy ceiling) where the traffic
is known, ``peak_mem_bytes`` and ``mem_method``.
``python -m benchmarks.render`` turns the files into tables, plots and README's section.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

from benchmarks import _machine, _timing
from benchmarks._workloads import GROUPS, Case, Impl, Settings, build_cases

BASELINES = ("eager", "compile", "compile-max-autotune")
SGEMM = "__sgemm_ceiling__"
PHASE_WEIGHT = 3.0  # see run(): how far a later phase of a case falls behind in the GPU order

# (repeats, seconds per sample, warm-up seconds, do_bench ms, job epochs, job repeats)
PROFILES = {
    "full": dict(repeats=31, sample_s=0.005, warmup_s=0.05, rep_ms=100.0, job_epochs=10, job_repeats=3),
    "quick": dict(repeats=9, sample_s=0.002, warmup_s=0.02, rep_ms=40.0, job_epochs=3, job_repeats=1),
    "smoke": dict(repeats=3, sample_s=0.0002, warmup_s=0.0, rep_ms=10.0, job_epochs=1, job_repeats=1),
}


DEFAULT_RESULTS_DIR = Path("runs") / "bench"  # relative to the current directory: the user's, not the repo's


class RunnerError(Exception):
    """A command-line mistake: one line, exit code 2."""


def _csv(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (auto: cuda if a GPU is visible, else cpu)")
    p.add_argument("--only", default=None,
                   help=f"comma list of workload groups: {','.join(GROUPS)} (default: all)")
    p.add_argument("--backends", default=None,
                   help="comma list of aecomp backends to time (default: every available one for the device "
                        "except 'reference')")
    p.add_argument("--baselines", default=None,
                   help="comma list among eager,compile,compile-max-autotune (default: eager,compile; "
                        "on cuda also compile-max-autotune)")
    p.add_argument("--batches", default=None,
                   help="comma list of batch sizes for op, chain and train_step (default cpu: 64,1024; "
                        "cuda: 64,1024,65536, the train step 64,4096,65536; train_job is batch 64, latency 1 and "
                        "256, inference on cuda 1,256,65536)")
    p.add_argument("--dtypes", default=None, help="comma list (default cpu: float32; cuda: bfloat16,float32)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and epochs: minutes, noisier numbers")
    p.add_argument("--smoke", action="store_true",
                   help="check the runner itself in seconds: batch 8, two of the six layers, 3 repeats, a "
                        "128-row training job, rows marked smoke; the numbers mean nothing")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting measurements after this many seconds (default: none on cpu, 300 on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--phased", default=None, action=argparse.BooleanOptionalAction,
                   help="measure eager+aecomp everywhere before compile, then max-autotune (default: on cuda)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile baselines (default inductor; 'eager' only checks "
                        "the plumbing)")
    p.add_argument("--repeats", type=int, default=None, help="samples per implementation (overrides the profile)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole matrix this many times in the process (rows carry their round; the "
                        "renderer takes the median over rounds): on a shared machine load comes and goes "
                        "over minutes, longer than one case")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each training job (default 10; quick 3)")
    p.add_argument("--results-dir", default=None,
                   help=f"where <machine>.jsonl is appended (default {DEFAULT_RESULTS_DIR}, under the current "
                        f"directory; with --publish {_machine.RESULTS_DIR})")
    p.add_argument("--publish", action="store_true",
                   help=f"append to the tracked {_machine.RESULTS_DIR} (what the README's Performance section is "
                        f"rendered from); never with --smoke")
    p.add_argument("--machine", default=None, help="the machine tag naming the results file")
    p.add_argument("--no-save", action="store_true", help="write no results file")
    p.add_argument("--quiet", action="store_true", help="no per-case lines, only the table at the end")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="build and time nothing: write to FILE (JSON) and print what the run would measure "
                        "within --budget-s by the runner's cost estimates, in its order; --device cuda needs no "
                        "GPU then (backends default to triton,cuda). gpu_check.sh --dry-run rehearses its bench "
                        "stage with it")


def _resolve_backends(names: Optional[List[str]], device: str) -> List[str]:
    import aecomp
    from aecomp._backend import get_backend

    avail = aecomp.available_backends()
    dtype = torch.float32
    if names is None:
        out = [n for n, (ok, _) in avail.items()
               if ok and n != "reference" and get_backend(n).takes(device, dtype)
               and not (device == "cpu" and n == "triton")]  # the interpreter is for tests, not timing
        return out or ["reference"]
    for n in names:
        if n not in avail:
            raise RunnerError(f"unknown backend {n!r}; expected some of {', '.join(avail)}")
        ok, why = avail[n]
        if not ok:
            raise RunnerError(f"backend {n!r} is not available here: {why}")
        if not get_backend(n).takes(device, dtype):
            raise RunnerError(f"backend {n!r} does not run on {device} tensors")
    return names


def results_dir(args: argparse.Namespace) -> Path:
    """Where this run appends its rows: ``--results-dir``, the tracked folder with ``--publish``, else
    ``./runs/bench``. Smoke rows are never published."""
    publish = getattr(args, "publish", False)
    if publish and args.smoke:
        raise RunnerError("--publish: smoke results (--smoke) are never published to benchmarks/results/")
    if publish and args.results_dir:
        raise RunnerError("--publish writes to benchmarks/results/; leave out --results-dir (or --publish)")
    if args.results_dir:
        return Path(args.results_dir)
    return _machine.RESULTS_DIR if publish else DEFAULT_RESULTS_DIR


def settings_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() and not getattr(args, "plan", None):
        raise RunnerError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    groups = _csv(args.only) or list(GROUPS)
    for g in groups:
        if g not in GROUPS:
            raise RunnerError(f"--only: unknown group {g!r}; expected some of {', '.join(GROUPS)}")
    baselines = _csv(args.baselines)
    if baselines is None:
        baselines = list(BASELINES) if device == "cuda" else ["eager", "compile"]
    for b in baselines:
        if b not in BASELINES:
            raise RunnerError(f"--baselines: unknown baseline {b!r}; expected some of {', '.join(BASELINES)}")
    # CPU bfloat16: the training step and the usual loop in mixed precision (autocast peers, aecomp's
    # bf16 step on the matrix engine); the other CPU workloads stay float32
    dtypes = _csv(args.dtypes) or ["bfloat16", "float32"]
    from benchmarks._workloads import DTYPES

    for d in dtypes:
        if d not in DTYPES:
            raise RunnerError(f"--dtypes: unknown dtype {d!r}; expected some of {', '.join(DTYPES)}")
    if args.batches is not None:
        try:
            batches = [int(b) for b in _csv(args.batches)]
        except ValueError:
            raise RunnerError(f"--batches: expected a comma list of integers, got {args.batches!r}") from None
        if not batches or min(batches) < 1:
            raise RunnerError(f"--batches: expected positive integers, got {args.batches!r}")
        step_batches = batches
    elif args.smoke:
        batches = step_batches = [8]
    elif device == "cuda":
        batches, step_batches = [64, 1024, 65536], [64, 4096, 65536]
    else:
        batches = step_batches = [64, 1024]  # batch 65536 of the train step is GPU-only
    profile = dict(PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"])
    if args.repeats is not None:
        if args.repeats < 1:
            raise RunnerError("--repeats must be >= 1")
        profile["repeats"] = args.repeats
    if args.epochs is not None:
        if args.epochs < 1:
            raise RunnerError("--epochs must be >= 1")
        profile["job_epochs"] = args.epochs
    if args.threads < 1:
        raise RunnerError("--threads must be >= 1")
    if args.rounds < 1:
        raise RunnerError("--rounds must be >= 1")
    budget = args.budget_s if args.budget_s is not None else (300.0 if device == "cuda" else 0.0)
    return {"device": device, "groups": groups, "baselines": baselines, "dtypes": dtypes, "batches": batches,
            "step_batches": step_batches, "profile": profile, "budget_s": budget,
            "phased": device == "cuda" if args.phased is None else args.phased}


class Runner:
    def __init__(self, args: argparse.Namespace, cfg: Dict[str, Any], out: Optional[Path],
                 env: Optional[Dict[str, Any]] = None) -> None:
        self.args = args
        self.cfg = cfg
        self.device = cfg["device"]
        self.profile = cfg["profile"]
        self.out = out
        self.clock = time.monotonic  # a fake one under --plan
        self.t0 = self.clock()
        self.deadline = self.t0 + cfg["budget_s"] if cfg["budget_s"] > 0 else math.inf
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.tag = _machine.machine_tag(self.device, args.machine)
        self.env = env if env is not None else _machine.describe(self.device, self.tag)
        self.ceilings: Dict[str, float] = {}
        self.medians: Dict[tuple, Dict[str, float]] = {}
        self.rows: List[Dict[str, Any]] = []
        self.skipped: List[str] = []
        self.observed: Dict[tuple, float] = {}  # (workload, impl) -> seconds it took (GPU; see estimate)
        self._sgemm_by_dtype: Dict[Any, tuple] = {}  # dtype -> (callable, inner loop count) of the per-case mm
        self.round = 0
        self.common = {k: self.env[k] for k in ("machine", "node", "device", "cpu", "gpu", "torch", "triton",
                                                "commit", "dirty", "threads")}
        self.common.update(run_id=self.run_id, date=self.env["date"])
        if args.smoke:
            self.common["smoke"] = True

    # ------------------------------------------------------------------------------ output
    def left(self) -> float:
        return self.deadline - self.clock()

    def emit(self, row: Dict[str, Any]) -> None:
        row = {**self.common, **row}
        self.rows.append(row)
        if self.out is not None:
            with open(self.out, "a") as fh:  # appended as we go: a killed run loses nothing measured
                fh.write(json.dumps(_rounded(row), default=_jsonable) + "\n")

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    # ------------------------------------------------------------------------------ ceilings
    def _time_one(self, fn) -> Dict[str, float]:
        if self.device == "cuda":
            return _timing.time_cuda(fn, self.profile["rep_ms"])
        inner = _timing.warm_up(fn, self.profile["sample_s"], warmup_s=self.profile["warmup_s"])
        return _timing.time_interleaved({"f": fn}, {"f": inner}, self.profile["repeats"])["f"]

    def _ceiling_specs(self):
        """(name, unit, how, make, work per call in the unit's numerator)."""
        specs = []
        if self.device == "cuda":
            n = 8192
            for name, dtype in (("mm_bf16_tflops", torch.bfloat16), ("mm_fp32_tflops", torch.float32)):
                specs.append((name, "TFLOP/s", f"torch.mm {n}^3 {str(dtype).split('.')[-1]}",
                              lambda dtype=dtype: _mm_fn(n, dtype, "cuda"), 2.0 * n**3 / 1e12))
            nbytes = 2**30
            specs.append(("copy_gbps", "GB/s", "device-to-device copy of 1 GiB (read + write)",
                          lambda: _copy_fn(nbytes, "cuda"), 2.0 * nbytes / 1e9))
        else:
            n = self.sgemm_n
            threads = torch.get_num_threads()
            specs.append(("sgemm_gflops", "GFLOP/s", f"torch.mm {n}^3 float32, {threads} thread(s)",
                          lambda: _mm_fn(n, torch.float32, "cpu"), 2.0 * n**3 / 1e9))
            # the matrix engine's rates (AMX / AVX512-BF16 / VNNI where the CPU has them)
            specs.append(("mm_bf16_gflops", "GFLOP/s", f"torch.mm {n}^3 bfloat16, {threads} thread(s)",
                          lambda: _mm_fn(n, torch.bfloat16, "cpu"), 2.0 * n**3 / 1e9))
            specs.append(("mm_int8_gops", "GOP/s", f"torch._int_mm {n}^3 int8 -> int32, {threads} thread(s)",
                          lambda: _int_mm_fn(n), 2.0 * n**3 / 1e9))
            nbytes = 2**16 if self.args.smoke else 2**26
            specs.append(("copy_gbps", "GB/s", f"copy of {nbytes / 2**20:g} MiB float32 (read + write)",
                          lambda: _copy_fn(nbytes, "cpu"), 2.0 * nbytes / 1e9))
        return specs

    @property
    def sgemm_n(self) -> int:
        return 128 if self.args.smoke else 1024

    def measure_ceilings(self, when: str) -> None:
        """The machine's ceilings, at the start of the run (used by the rows' ``*_run`` fractions)
        and again at its end (``when``), so a reader sees how much the load moved them."""
        for name, unit, how, make, work in self._ceiling_specs():
            try:
                r = self._time_one(make())
                value = work / r["median_s"]
                self.ceilings.setdefault(name, value)
                self.emit({"kind": "ceiling", "name": name, "when": when, "value": value, "unit": unit, "how": how,
                           "median_ms": r["median_s"] * 1e3, "p20_ms": r["p20_s"] * 1e3, "p80_ms": r["p80_s"] * 1e3,
                           "timer": r.get("timer"), "load_avg": _machine.load_average()})
                self.say(f"ceiling {name:16s} {value:10.1f} {unit}   ({how}; {when})")
            except Exception as exc:  # a ceiling that fails leaves fractions empty, not the run dead
                self.emit({"kind": "ceiling", "name": name, "when": when, "error": _err(exc), "how": how})
                self.say(f"ceiling {name}: failed: {_err(exc)}")
            finally:
                if self.device == "cuda":
                    torch.cuda.empty_cache()

    def compute_ceiling(self, dtype: str) -> Optional[tuple]:
        """(name, GFLOP/s) of the run-wide matmul ceiling for a row of this dtype."""
        if self.device == "cuda":
            name = "mm_fp32_tflops" if dtype == "float32" else "mm_bf16_tflops"
            return (name, self.ceilings[name] * 1e3) if name in self.ceilings else None
        name = "mm_bf16_gflops" if dtype == "bfloat16" else "sgemm_gflops"
        return (name, self.ceilings[name]) if name in self.ceilings else None

    # ------------------------------------------------------------------------------ cases
    def _mkey(self, case: Case) -> tuple:
        return (*case.key, self.round)

    def estimate(self, case: Case, impl: Impl) -> float:
        """Seconds ``impl`` of ``case`` should take: what the same implementation of the same
        workload took last in this run (its first, cold compile included), else its ``est_s``."""
        return self.observed.get((case.workload, impl.name), impl.est_s)

    def select(self, case: Case, impls: List[Impl]) -> List[Impl]:
        """The implementations that still fit the budget together (the others are recorded as
        skipped for time)."""
        fits, need = [], 0.0
        for impl in impls:
            if self.left() < need + self.estimate(case, impl):
                self.skipped.append(f"{impl.name} {_label(case)}")
                continue
            need += self.estimate(case, impl)
            fits.append(impl)
        return fits

    def measure(self, case: Case, impls: List[Impl], settings: Settings) -> None:
        fits = self.select(case, impls)
        if not fits:
            return
        if any(i.name.startswith("compile") for i in fits):
            torch._dynamo.reset()  # a fresh cache per case: the recompile limit never falls back to eager
        t_case = time.monotonic()
        results: Dict[str, Dict[str, Any]] = {}
        with torch.set_grad_enabled(case.grad):
            if case.measure is not None:
                try:
                    results = case.measure(case, fits, settings, lambda fn: _timing.peak_memory(fn, self.device))
                except Exception as exc:  # e.g. the data set cannot be read: the other cases still run
                    results = {impl.name: {"error": _err(exc)} for impl in fits}
            else:
                results = self._time_impls(fits, case)
        case.cache.clear()
        for impl in fits:  # every median first: the ratios of this case-phase are formed between them
            r = results.get(impl.name, {})
            if "median_s" in r:
                self.medians.setdefault(self._mkey(case), {})[impl.name] = r["median_s"]
        for impl in fits:
            self._emit_result(case, impl, results.get(impl.name, {"error": "not measured"}))
        if self.device == "cuda":
            torch.cuda.empty_cache()
        self.say(self._line(case, fits, time.monotonic() - t_case))

    def _time_impls(self, impls: List[Impl], case: Case) -> Dict[str, Dict[str, Any]]:
        fns, inner, results, spent = {}, {}, {}, {}
        dtype = case.dtype
        for impl in impls:
            t0 = time.monotonic()
            try:
                fn = impl.make()
                if self.device == "cuda":
                    fns[impl.name] = fn
                else:
                    inner[impl.name] = _timing.warm_up(fn, self.profile["sample_s"], warmup_s=self.profile["warmup_s"])
                    fns[impl.name] = fn
            except Exception as exc:  # one broken implementation must not lose the others
                results[impl.name] = {"error": _err(exc)}
            spent[impl.name] = time.monotonic() - t0
        if self.device == "cuda":
            for name, fn in fns.items():
                t0 = time.monotonic()
                try:
                    results[name] = _timing.time_cuda(fn, self.profile["rep_ms"])
                except Exception as exc:
                    results[name] = {"error": _err(exc)}
                spent[name] += time.monotonic() - t0
            # the GPU budget estimates from now on (compile times are guesses until measured)
            self.observed.update({(case.workload, name): secs for name, secs in spent.items()})
        elif fns:
            # the matmul ceiling of the case's dtype (float32 sgemm, or bfloat16 on the matrix
            # engine) takes its turn in the alternation too: the fraction of the ceiling is then
            # formed under the same load as the case (this machine is shared)
            mm_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
            if mm_dtype not in self._sgemm_by_dtype:
                f = _mm_fn(self.sgemm_n, mm_dtype, "cpu")
                self._sgemm_by_dtype[mm_dtype] = (
                    f, _timing.warm_up(f, self.profile["sample_s"], warmup_s=self.profile["warmup_s"]))
            mm = self._sgemm_by_dtype[mm_dtype]
            timed = {**fns, SGEMM: mm[0]}
            try:
                results.update(_timing.time_interleaved(timed, {**inner, SGEMM: mm[1]},
                                                        self.profile["repeats"]))
            except Exception as exc:
                for name in fns:
                    results[name] = {"error": _err(exc)}
        sgemm = results.pop(SGEMM, None)
        if sgemm:
            for name in fns:
                if "error" not in results.get(name, {}):
                    results[name]["case_sgemm_gflops"] = 2.0 * self.sgemm_n**3 / sgemm["median_s"] / 1e9
        for name, fn in fns.items():
            if "error" in results.get(name, {}):
                continue
            try:
                results[name].update(_timing.peak_memory(fn, self.device))
            except Exception as exc:
                results[name].update(peak_mem_bytes=None, mem_method=f"failed: {_err(exc)}")
        return results

    def _emit_result(self, case: Case, impl: Impl, r: Dict[str, Any]) -> None:
        row: Dict[str, Any] = {
            "kind": "result", "group": case.group, "workload": case.workload, "mode": case.mode,
            "shape": case.shape, "batch": case.batch, "dtype": case.dtype, "impl": impl.name, "role": impl.role,
            "backend": impl.backend, "note": impl.note or None, "params": case.params,
        }
        if "error" in r:
            row["error"] = r["error"]
            self.emit(row)
            return
        med = r["median_s"]
        row.update(median_ms=med * 1e3, p20_ms=r["p20_s"] * 1e3, p80_ms=r["p80_s"] * 1e3,
                   samples=r.get("samples"), inner=r.get("inner"), timer=r.get("timer"))
        row["round"] = self.round
        key = self._mkey(case)
        for base in ("eager", "compile"):
            bmed = self.medians[key].get(base)
            row[f"ratio_vs_{base}"] = (bmed / med) if bmed else None
        row["flops"] = case.flops
        row["gflops"] = case.flops / med / 1e9
        ceil = self.compute_ceiling(case.dtype)
        row["ceiling"] = ceil[0] if ceil else None
        row["ceiling_gflops_run"] = ceil[1] if ceil else None  # measured at the start of the run
        row["frac_ceiling_run"] = row["gflops"] / ceil[1] if ceil else None
        if r.get("case_sgemm_gflops"):  # CPU: the matmul of the row's dtype sampled in alternation with it
            row["ceiling_gflops"] = r["case_sgemm_gflops"]
            row["ceiling_how"] = (f"torch.mm {'bfloat16' if case.dtype == 'bfloat16' else 'float32'} sampled in "
                                  "alternation with the case")
        else:
            row["ceiling_gflops"] = row["ceiling_gflops_run"]
            row["ceiling_how"] = "run-wide ceiling (start of run)"
        row["frac_ceiling"] = row["gflops"] / row["ceiling_gflops"] if row["ceiling_gflops"] else None
        if case.nbytes:
            row["bytes"] = case.nbytes
            row["gbps"] = case.nbytes / med / 1e9
            bw = self.ceilings.get("copy_gbps")
            row["frac_bw_ceiling"] = row["gbps"] / bw if bw else None
        for k in ("peak_mem_bytes", "mem_method", "final_train_loss", "step_kind"):
            if k in r:
                row[k] = r[k]
        row["load_avg"] = _machine.load_average()
        self.emit(row)

    def _line(self, case: Case, impls: List[Impl], secs: float) -> str:
        meds = self.medians.get(self._mkey(case), {})
        parts = []
        for impl in impls:
            m = meds.get(impl.name)
            parts.append(f"{impl.name}={_fmt_ms(m * 1e3) if m else 'ERR'}")
        eager = meds.get("eager")
        ratios = [f"{n}/eager {eager / m:.2f}x" for n, m in meds.items() if n.startswith("aecomp") and eager and m]
        return f"{_label(case):52s} {' '.join(parts)}  {' '.join(ratios)}  [{secs:.1f}s]"


def _label(case: Case) -> str:
    return f"{case.workload} {case.mode} {case.shape} b{case.batch} {case.dtype}"


def _fmt_ms(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1e3:.1f}us"
    if ms < 1000:
        return f"{ms:.3f}ms"
    return f"{ms / 1e3:.2f}s"


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:400]}"


def _rounded(v):
    """Floats to 6 significant digits (the timings are not more precise than that): smaller files."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    return v


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def _mm_fn(n: int, dtype, device: str):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: torch.mm(a, b)


def _int_mm_fn(n: int):
    a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    return lambda: torch._int_mm(a, b)


def _copy_fn(nbytes: int, device: str):
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def run(args: argparse.Namespace) -> int:
    """Run the matrix described by ``args`` (see :func:`add_arguments`); 0 when every row measured."""
    # inference group (issue 15, benchmarks/bench_inference.py): `--only inference` (alone or with
    # other groups) times the packed path vs torch eager and onnxruntime, rows in the same JSONL
    only = _csv(args.only)
    if only and "inference" in only and cfg_device(args) == "cpu" and not args.plan:
        from benchmarks import bench_inference

        rest = [g for g in only if g != "inference"]
        out = None
        if not args.no_save:
            try:
                inference_dir = results_dir(args)  # same rule as every group: a user folder unless --publish
            except RunnerError as exc:
                print(f"benchmarks.run: error: {exc}", file=sys.stderr)
                return 2
            inference_dir.mkdir(parents=True, exist_ok=True)
            out = inference_dir / f"{_machine.machine_tag('cpu', args.machine)}.jsonl"
        fh = open(out, "a") if out else None
        try:
            tag = _machine.machine_tag("cpu", args.machine)
            env = {k: v for k, v in _machine.describe("cpu", tag).items()
                   if k in ("machine", "cpu", "torch", "commit", "date", "matrix_engine")}
            env["load_avg"] = _machine.load_average()
            env["run_id"] = time.strftime("%Y%m%dT%H%M%S") + "-inference-" + uuid.uuid4().hex[:6]
            env["cpu_flags"] = _machine.cpu_flags()
            rows = bench_inference.run(quick=args.quick or args.smoke, emit=(lambda r: fh.write(
                json.dumps({**r, **{k: v for k, v in env.items() if k not in r}}) + "\n")) if fh else None)
        finally:
            if fh:
                fh.close()
        print(bench_inference.table(rows))
        if not rest:
            return 0
        args.only = ",".join(rest)
    try:
        cfg = settings_from_args(args)
        if cfg["device"] == "cpu":
            torch.set_num_threads(args.threads)
        if args.plan:  # nothing runs: the GPU's backends need no GPU here
            backends = _csv(args.backends) or (["triton", "cuda"] if cfg["device"] == "cuda"
                                               else _resolve_backends(None, "cpu"))
        else:
            backends = _resolve_backends(_csv(args.backends), cfg["device"])
        target_dir = results_dir(args)
    except RunnerError as exc:
        print(f"benchmarks.run: error: {exc}", file=sys.stderr)
        return 2
    prof = cfg["profile"]
    settings = Settings(device=cfg["device"], backends=backends, baselines=cfg["baselines"], dtypes=cfg["dtypes"],
                        batches=cfg["batches"], compile_backend=args.compile_backend,
                        latency_batches=(1,) if args.smoke else (1, 256),
                        packed_batches=(8,) if args.smoke else (1, 256, 65536), job_epochs=prof["job_epochs"],
                        job_repeats=prof["job_repeats"], job_samples=128 if args.smoke else None,
                        layers=(0, 5) if args.smoke else None)
    if args.plan:
        return plan_run(args, cfg, settings)
    out = None
    if not args.no_save:
        target_dir.mkdir(parents=True, exist_ok=True)
        out = target_dir / f"{_machine.machine_tag(cfg['device'], args.machine)}.jsonl"
    runner = Runner(args, cfg, out)
    torch.manual_seed(0)
    load_start = _machine.load_average()
    runner.emit({"kind": "run", **runner.env, "argv": _machine.python_argv(), "groups": cfg["groups"],
                 "backends": backends, "baselines": cfg["baselines"], "dtypes": cfg["dtypes"],
                 "batches": cfg["batches"], "train_step_batches": cfg["step_batches"],
                 "profile": prof, "budget_s": cfg["budget_s"], "phased": cfg["phased"], "rounds": args.rounds,
                 "compile_backend": args.compile_backend, "load_avg": load_start,
                 # off: one pinned Triton tile per kernel and shape (the GPU check), not the autotuned best
                 "triton_autotune": os.environ.get("AECOMP_TRITON_AUTOTUNE", "on"),
                 "memory_methods": {"cpu": _timing.CPU_MEMORY_METHOD, "cuda": _timing.GPU_MEMORY_METHOD}})
    where = (runner.env["gpu"] if cfg["device"] == "cuda"
             else f"{runner.env['cpu']}, {torch.get_num_threads()} thread(s)")
    runner.say(f"benchmarks.run {runner.run_id}: {cfg['device']} ({where}); groups {','.join(cfg['groups'])}; "
               f"backends {','.join(backends)}; baselines {','.join(cfg['baselines'])}; load average {load_start}")
    runner.say(f"results -> {out if out else '(not saved)'}")
    runner.measure_ceilings("start")

    cases = build_cases(cfg["groups"], settings, cfg["step_batches"])
    for rnd in range(args.rounds):  # whole passes over the matrix, alternating (see --rounds)
        runner.round = rnd
        if args.rounds > 1:
            runner.say(f"== round {rnd + 1} of {args.rounds}")
        if cfg["phased"]:
            for case, phase in phased_order(cases):
                runner.measure(case, [i for i in case.impls if i.phase == phase], settings)
        else:
            for case in cases:
                runner.measure(case, case.impls, settings)

    if runner.left() > 30:
        runner.measure_ceilings("end")
    errors = [r for r in runner.rows if r.get("kind") == "result" and "error" in r]
    runner.emit({"kind": "run_end", "wall_s": round(time.monotonic() - runner.t0, 1),
                 "load_avg": _machine.load_average(), "skipped_for_time": runner.skipped,
                 "errors": len(errors), "results": sum(1 for r in runner.rows if r.get("kind") == "result")})
    from benchmarks.render import short_table

    print()
    print(short_table(runner.rows))
    if runner.skipped:
        print(f"skipped for the time budget: {len(runner.skipped)} measurements")
    for r in errors:
        print(f"error: {r['impl']} {r['workload']} {r['mode']} {r['shape']} b{r['batch']} {r['dtype']}: {r['error']}")
    print(f"{len(runner.rows)} rows in {time.monotonic() - runner.t0:.0f} s"
          + (f"; appended to {out}" if out else ""))
    return 1 if errors else 0


CEILING_EST_S = 2.0  # one ceiling measurement (make + timing), for --plan


def plan_run(args: argparse.Namespace, cfg: Dict[str, Any], settings: Settings) -> int:
    """``--plan``: the measurements the run would make within its budget, by the same selection
    as a real run (:meth:`Runner.select`) on a fake clock advanced by each estimate; nothing is
    built or timed. Estimates are the implementations' ``est_s`` (guesses until a real run
    replaces them by what it observes, see :meth:`Runner.estimate`) and CEILING_EST_S."""
    runner = Runner(args, cfg, None, env=dict.fromkeys(("machine", "node", "device", "cpu", "gpu", "torch", "triton",
                                                         "commit", "dirty", "threads", "date")))
    now = [0.0]
    runner.clock = lambda: now[0]
    runner.t0 = 0.0
    runner.deadline = cfg["budget_s"] if cfg["budget_s"] > 0 else math.inf
    n_ceilings = len(runner._ceiling_specs())
    steps: List[Dict[str, Any]] = [{"what": "ceilings (start)", "est_s": CEILING_EST_S * n_ceilings}]
    now[0] += steps[0]["est_s"]
    cases = build_cases(cfg["groups"], settings, cfg["step_batches"])
    for _ in range(args.rounds):
        order = phased_order(cases) if cfg["phased"] else [(c, None) for c in cases]
        for case, phase in order:
            impls = [i for i in case.impls if phase is None or i.phase == phase]
            for impl in runner.select(case, impls):
                est = runner.estimate(case, impl)
                steps.append({"what": f"{impl.name} {_label(case)}", "est_s": est, "at_s": round(now[0], 1)})
                now[0] += est
    if runner.left() > 30:  # as run(): the ceilings again at the end
        steps.append({"what": "ceilings (end)", "est_s": CEILING_EST_S * n_ceilings, "at_s": round(now[0], 1)})
        now[0] += steps[-1]["est_s"]
    plan = {"device": cfg["device"], "budget_s": cfg["budget_s"], "planned_s": round(now[0], 1),
            "groups": cfg["groups"], "baselines": cfg["baselines"], "dtypes": cfg["dtypes"],
            "backends": list(settings.backends), "measurements": steps, "skipped_for_time": runner.skipped,
            "note": "estimates, not measurements: each implementation's est_s (a real run replaces it by the "
                    "time the same implementation of the same workload took before)"}
    Path(args.plan).parent.mkdir(parents=True, exist_ok=True)
    Path(args.plan).write_text(json.dumps(plan, indent=1) + "\n")
    for st in steps:
        print(f"{st.get('at_s', 0.0):7.1f}s  +{st['est_s']:5.1f}s  {st['what']}")
    print(f"plan: {len(steps)} steps in {plan['planned_s']:.0f} s of a {cfg['budget_s']:.0f} s budget; "
          f"{len(runner.skipped)} measurements skipped for time -> {args.plan}")
    return 0


def phased_order(cases: Sequence[Case]) -> List[Tuple[Case, int]]:
    """(case, phase) in the order a phased (GPU) run measures them: a case's priority (bfloat16,
    the train step and the chain, large batches first) plus PHASE_WEIGHT per phase, so the
    compile baselines of the important cases come before eager/aecomp of the unimportant ones,
    and phase 0 of a case always comes first."""
    return sorted(((c, ph) for c in cases for ph in sorted({i.phase for i in c.impls})),
                  key=lambda cp: cp[0].priority + PHASE_WEIGHT * cp[1])


def cfg_device(args: argparse.Namespace) -> str:
    """The device ``--device`` resolves to (the inference group is CPU-only)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
