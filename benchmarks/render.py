"""Tables, plots and README's Performance section from the results files.

    python -m benchmarks.render                  # every benchmarks/results/*.jsonl -> tables, PNGs, README
    python -m benchmarks.render --summary FILE   # a short text table of one file (gpu_check.sh's last word)

For each results file (one machine, one device kind) it writes

* ``benchmarks/results/<machine>.md`` -- every measured case: medians, 20th/80th percentiles,
  speedups, fraction of the ceiling, peak memory;
* ``benchmarks/results/<machine>_speedup[_<dtype>].png`` -- speedup over eager against batch size,
  one panel per workload and mode (linear_act: one panel per layer), one line per backend /
  baseline (matplotlib, Agg);

and rewrites README.md between ``<!-- performance:start -->`` and ``<!-- performance:end -->``
(nothing else in README is touched): CPU machines first, then GPUs, each in its own tables
(never mixed), each naming its file and the machine it was measured on.

Which numbers: for each case (workload, mode, shape, batch, dtype) the newest run that measured
it; every ratio is formed between rows of that one run (same process, same data, same load) and
of one round; a run of several rounds (``--rounds``) gives the median over its rounds.
Rows of ``--smoke`` runs are ignored. Speedup = baseline median / aecomp median (> 1: aecomp is
faster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
README = REPO_ROOT / "README.md"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
BASELINES = ("eager", "compile", "compile-max-autotune")
MODE_ORDER = {"fwd": 0, "fwd+bwd": 1, "step": 2, "job": 3, "infer": 4}
WORKLOAD_ORDER = {"train_step": 0, "usual_loop": 1, "train_job": 2, "linear_act": 3, "mse_loss": 4, "mlp": 5,
                  "mlp_mse_loss": 6, "latency": 7, "packed_mlp": 8}

CaseKey = Tuple[str, str, str, int, str]


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def read_rows(path: Path, include_smoke: bool = False) -> List[Dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for n, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"render: {path}:{n + 1}: not JSON, skipped", file=sys.stderr)
                continue
            if isinstance(row, dict) and (include_smoke or not row.get("smoke")):
                row["_order"] = n
                rows.append(row)
    return rows


def case_key(r: Dict[str, Any]) -> CaseKey:
    return (r["workload"], r["mode"], r["shape"], int(r["batch"]), r["dtype"])


class Results:
    """The rows of one results file, reduced to the newest run of each case."""

    def __init__(self, path: Path, rows: Optional[List[Dict[str, Any]]] = None, include_smoke: bool = False) -> None:
        self.path = path
        rows = read_rows(path, include_smoke) if rows is None else rows
        rows = [r for r in rows if include_smoke or not r.get("smoke")]
        self.runs = {r["run_id"]: r for r in rows if r.get("kind") == "run"}
        self.ends = {r["run_id"]: r for r in rows if r.get("kind") == "run_end"}
        run_order = {rid: i for i, rid in enumerate(dict.fromkeys(r.get("run_id") for r in rows))}
        results = [r for r in rows if r.get("kind") == "result"]
        newest: Dict[CaseKey, str] = {}
        for r in results:
            k, rid = case_key(r), r["run_id"]
            if k not in newest or run_order[rid] >= run_order[newest[k]]:
                newest[k] = rid
        # case -> impl -> [row of each round] (from that case's newest run)
        self.rounds: Dict[CaseKey, Dict[str, Dict[int, Dict[str, Any]]]] = {}
        for r in results:
            k = case_key(r)
            if r["run_id"] == newest[k]:
                self.rounds.setdefault(k, OrderedDict()).setdefault(r["impl"], {})[int(r.get("round", 0))] = r
        # case -> impl -> one row: the median over rounds of every timing field
        self.cases: Dict[CaseKey, Dict[str, Dict[str, Any]]] = {
            k: OrderedDict((impl, _merge_rounds(list(by_round.values()))) for impl, by_round in impls.items())
            for k, impls in self.rounds.items()}
        used = set(newest.values())
        self.used_runs = [self.runs.get(rid, {"run_id": rid}) for rid in run_order if rid in used]
        # the ceilings of the newest run that measured any (start and end of that run)
        ceil_rows = [r for r in rows if r.get("kind") == "ceiling" and "value" in r]
        last = ceil_rows[-1]["run_id"] if ceil_rows else None
        self.ceiling_rows = [r for r in ceil_rows if r["run_id"] == last]
        self.ceilings: Dict[str, Dict[str, Any]] = {}
        for r in self.ceiling_rows:  # by name: the start-of-run value
            self.ceilings.setdefault(r["name"], r)
        first = self.used_runs[-1] if self.used_runs else (next(iter(self.runs.values()), {}) if self.runs else {})
        self.info = first
        self.extra_rows = [r for r in rows if r.get("kind") == "inference"]  # benchmarks/bench_inference.py
        self.device = first.get("device") or (results[0].get("device") if results else "cpu")
        self.machine = first.get("machine") or path.stem

    def ratio(self, key: CaseKey, impl: str, base: str) -> Optional[float]:
        """base's median / impl's median, formed within each round, then the median over rounds."""
        rows = self.rounds.get(key, {})
        a, b = rows.get(impl, {}), rows.get(base, {})
        vals = [b[n]["median_ms"] / a[n]["median_ms"] for n in a if n in b
                and "median_ms" in a[n] and "median_ms" in b[n]]
        return statistics.median(vals) if vals else None

    def ratio_spread(self, key: CaseKey, impl: str, base: str) -> List[float]:
        """The per-round ratios (one per round in which both were measured)."""
        rows = self.rounds.get(key, {})
        a, b = rows.get(impl, {}), rows.get(base, {})
        return [b[n]["median_ms"] / a[n]["median_ms"] for n in sorted(a) if n in b
                and "median_ms" in a[n] and "median_ms" in b[n]]

    def fmt_ratio(self, key: CaseKey, impl: str, base: str, spread: bool = False) -> str:
        """``1.23x``, or with ``spread`` and several rounds ``1.23x (1.10-1.31)``: min-max over rounds."""
        text = fmt_x(self.ratio(key, impl, base))
        vals = self.ratio_spread(key, impl, base)
        if spread and len(vals) > 1:
            text += f" ({min(vals):.2f}-{max(vals):.2f})"
        return text

    def impls(self, role: Optional[str] = None) -> List[str]:
        seen = OrderedDict()
        for rows in self.cases.values():
            for name, r in rows.items():
                if role is None or r.get("role") == role:
                    seen[name] = True
        return sorted(seen, key=lambda n: (n not in BASELINES, BASELINES.index(n) if n in BASELINES else 0, n))

    def keys(self, workloads: Iterable[str]) -> List[CaseKey]:
        ws = set(workloads)
        ks = [k for k in self.cases if k[0] in ws]
        return sorted(ks, key=_key_order)


MERGED = ("median_ms", "p20_ms", "p80_ms", "gflops", "gbps", "frac_ceiling", "frac_ceiling_run", "frac_bw_ceiling",
          "ceiling_gflops", "peak_mem_bytes", "final_train_loss")


def _merge_rounds(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row for several rounds of the same case and implementation: the median of each
    numeric field (an error in any round is kept)."""
    if len(rows) == 1:
        return dict(rows[0], rounds=1)
    good = [r for r in rows if "error" not in r]
    out = dict(good[0] if good else rows[0])
    for f in MERGED:
        vals = [r[f] for r in good if isinstance(r.get(f), (int, float))]
        if vals:
            out[f] = statistics.median(vals)
    out["rounds"] = len(rows)
    errors = [r["error"] for r in rows if "error" in r]
    if errors and not good:
        out["error"] = errors[0]
    return out


def _key_order(k: CaseKey):
    workload, mode, shape, batch, dtype = k
    return (WORKLOAD_ORDER.get(workload, 9), dtype != "bfloat16", dtype, MODE_ORDER.get(mode, 9), _layer_index(shape),
            batch)


def _layer_index(shape: str) -> int:
    from benchmarks._layers import REFERENCE_LAYERS

    for i, (k, n, a) in enumerate(REFERENCE_LAYERS):
        if shape == f"{k}x{n} {a}":
            return i
    return -1


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------
def fmt_time(ms: Optional[float]) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.1f} µs"
    if ms < 1000:
        return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms / 1e3:.2f} s"


def fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.0f}%" if v >= 0.1 else f"{100 * v:.1f}%"


def fmt_bytes(v: Optional[float]) -> str:
    if v is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.1f} {unit}"
    return f"{int(v)} B"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _ceiling_name(res: Results, r: Dict[str, Any]) -> str:
    return {"sgemm_gflops": "sgemm", "mm_bf16_gflops": "bf16 mm", "mm_int8_gops": "int8 mm",
            "mm_bf16_tflops": "bf16 mm", "mm_fp32_tflops": "fp32 mm"}.get(
        r.get("ceiling"), r.get("ceiling") or "ceiling")


# ------------------------------------------------------------------------------------------------
# the short text table (end of a run, gpu_check.sh)
# ------------------------------------------------------------------------------------------------
def short_table(rows: List[Dict[str, Any]], path: Optional[Path] = None, brief: bool = False) -> str:
    """One line per case and aecomp implementation: times, speedups, fraction of the ceiling."""
    res = Results(path or Path("run"), rows=rows, include_smoke=True)
    base_cols = [b for b in BASELINES if b in res.impls("baseline")]
    header = ["workload", "mode", "shape", "batch", "dtype", "impl", "median", *base_cols,
              *[f"x {b}" for b in base_cols], "%ceil", "peak mem"]
    out_rows = []
    keys = res.keys(WORKLOAD_ORDER)
    if brief:  # linear_act only at its largest batch per dtype
        big = {}
        for k in keys:
            if k[0] == "linear_act":
                big[k[4]] = max(big.get(k[4], 0), k[3])
        keys = [k for k in keys if k[0] != "linear_act" or k[3] == big[k[4]]]
    for k in keys:
        rows_k = res.cases[k]
        aecomp = [n for n, r in rows_k.items() if r.get("role") == "aecomp"] or [None]
        for name in aecomp:
            r = rows_k.get(name, {}) if name else {}
            cells = [k[0], k[1], k[2], str(k[3]), k[4], name or "-",
                     fmt_time(r.get("median_ms")) if "error" not in r else "ERROR"]
            cells += [fmt_time(rows_k.get(b, {}).get("median_ms")) for b in base_cols]
            cells += [fmt_x(res.ratio(k, name, b)) if name else "-" for b in base_cols]
            cells += [fmt_pct(r.get("frac_ceiling")), fmt_bytes(r.get("peak_mem_bytes"))]
            out_rows.append(cells)
    ceil = ", ".join(f"{c['name']} {c['value']:.1f} {c.get('unit', '')} ({c.get('when', '')})"
                     for c in res.ceiling_rows)
    text = text_table(header, out_rows)
    return (f"ceilings: {ceil}\n" if ceil else "") + text + "\n(x B = B's median / aecomp's median: > 1 is faster)"


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------
def _provenance(res: Results, rel: str) -> str:
    runs = res.used_runs
    info = res.info
    if res.device == "cuda":
        where = f"{info.get('gpu') or 'GPU'} (CUDA {info.get('cuda')}, capability {info.get('capability')})"
    else:
        where = (f"{info.get('cpu', '?')}, {info.get('cpu_count', '?')} vCPUs, "
                 f"{info.get('threads', '?')} thread(s) (`torch.set_num_threads`)")
    parts = []
    for r in runs:
        commit = (r.get("commit") or "?")[:10] + ("+local edits" if r.get("dirty") else "")
        end = res.ends.get(r.get("run_id"), {})
        load = r.get("load_avg")
        load_end = end.get("load_avg")
        parts.append(f"run `{r.get('run_id')}` on {str(r.get('date', '?'))[:16].replace('T', ' ')} UTC, commit "
                     f"`{commit}`, torch {r.get('torch')}, triton {r.get('triton')}, "
                     f"host `{r.get('node', '?')}`, load average (1/5/15 min) {load} at start"
                     + (f" and {load_end} at end" if load_end else "")
                     + (f", {end.get('wall_s')} s" if end.get("wall_s") else "")
                     + (f", {r.get('rounds')} rounds (medians over them)" if (r.get("rounds") or 1) > 1 else ""))
    lines = [f"Measured on **{where}**; data: [`{rel}`]({rel})."]
    if res.device != "cuda" and (info.get("cpu_flags") is not None or info.get("matrix_engine")):
        flags = ", ".join(f"`{f}`" for f in info.get("cpu_flags") or []) or "none of the matrix flags"
        lines.append(f"CPU flags: {flags}; aecomp's matrix engine: {info.get('matrix_engine') or 'not recorded'}"
                     + (f" (ONEDNN_MAX_CPU_ISA={info['onednn_max_cpu_isa']})" if info.get("onednn_max_cpu_isa")
                        else "") + ".")
    lines += [f"- {p}" for p in parts]
    return "\n".join(lines)


def ceilings_md(res: Results) -> str:
    rows = []
    for c in res.ceiling_rows:
        rows.append([c["name"], c.get("when", "-"), f"{c['value']:.1f} {c.get('unit', '')}", c.get("how", ""),
                     f"{fmt_time(c.get('p20_ms'))} / {fmt_time(c.get('median_ms'))} / {fmt_time(c.get('p80_ms'))}",
                     str(c.get("load_avg", "-"))])
    return (f"Ceilings (run `{res.ceiling_rows[0]['run_id']}`):\n\n" if res.ceiling_rows else "") + md_table(
        ["ceiling", "when", "value", "how", "time p20 / median / p80", "load average"], rows, "llrlll")


def _aecomp_impls(res: Results) -> List[str]:
    return res.impls("aecomp")


def _bases(res: Results) -> List[str]:
    return [b for b in BASELINES if b in res.impls("baseline")]


def full_tables_md(res: Results) -> str:
    """Every case: one table per workload and mode, all implementations."""
    out = []
    for workload in WORKLOAD_ORDER:
        keys = res.keys([workload])
        if not keys:
            continue
        modes = list(OrderedDict.fromkeys(k[1] for k in keys))
        for mode in modes:
            mk = [k for k in keys if k[1] == mode]
            impls = [i for i in res.impls() if any(i in res.cases[k] for k in mk)]
            aec = [i for i in impls if not i in BASELINES]
            bases = [b for b in BASELINES if b in impls and b != "eager"]
            header = ["shape", "batch", "dtype"]
            header += [f"{i} median (p20-p80)" for i in impls]
            header += [f"{a} vs {b}" for a in aec for b in ["eager", *bases] if "eager" in impls or b != "eager"]
            has_bw = any("gbps" in res.cases[k].get(a, {}) for k in mk for a in aec)
            header += [f"{a} % of ceiling" for a in aec]
            header += [f"{a} GB/s (% of copy)" for a in aec] if has_bw else []
            header += [f"{a} peak mem" for a in aec] + ["eager peak mem"]
            rows = []
            for k in mk:
                rk = res.cases[k]
                cells = [f"`{k[2]}`", str(k[3]), k[4]]
                for i in impls:
                    r = rk.get(i)
                    if r is None:
                        cells.append("-")
                    elif "error" in r:
                        cells.append("error")
                    else:
                        cells.append(f"{fmt_time(r['median_ms'])} ({fmt_time(r['p20_ms'])}-{fmt_time(r['p80_ms'])})")
                for a in aec:
                    for b in ["eager", *bases]:
                        if "eager" in impls or b != "eager":
                            cells.append(res.fmt_ratio(k, a, b, spread=True))
                cells += [fmt_pct(rk.get(a, {}).get("frac_ceiling")) for a in aec]
                if has_bw:
                    cells += [_bw(rk.get(a, {})) for a in aec]
                cells += [fmt_bytes(rk.get(a, {}).get("peak_mem_bytes")) for a in aec]
                cells.append(fmt_bytes(rk.get("eager", {}).get("peak_mem_bytes")))
                rows.append(cells)
            out.append(f"## {workload} — {mode}\n\n" + md_table(header, rows))
    errors = [(k, i, r["error"]) for k, rk in res.cases.items() for i, r in rk.items() if "error" in r]
    if errors:
        out.append("## errors\n\n" + "\n".join(f"- `{i}` {k[0]} {k[1]} `{k[2]}` b{k[3]} {k[4]}: {e}"
                                                  for k, i, e in errors))
    return "\n\n".join(out)


def _bw(r: Dict[str, Any]) -> str:
    if r.get("gbps") is None:
        return "-"
    return f"{r['gbps']:.1f} ({fmt_pct(r.get('frac_bw_ceiling'))})"


def key_tables_md(res: Results, src: str) -> str:
    """README's tables: the training step and job, linear_act per layer, the chain, mse, latency.
    ``src``: the link to the results file, named under every table."""
    out = []
    data = f" Data: [`{src}`]({src})."
    aec, bases = _aecomp_impls(res), _bases(res)
    vs = [b for b in bases if b != "eager"]

    def speed_cols(k, a, spread=False):
        return [res.fmt_ratio(k, a, b, spread) for b in ["eager", *vs]]

    # training step
    keys = res.keys(["train_step"])
    if keys:
        rows = []
        for k in keys:
            rk = res.cases[k]
            for a in (a for a in aec if a in rk):
                r = rk.get(a, {})
                rows.append([str(k[3]), k[4], a, fmt_time(r.get("median_ms")),
                             fmt_time(rk.get("eager", {}).get("median_ms")),
                             *[fmt_time(rk.get(b, {}).get("median_ms")) for b in vs],
                             *speed_cols(k, a, spread=True), fmt_x(best_peer_ratio(res, k, a)),
                             fmt_pct(r.get("frac_ceiling")), fmt_pct(rk.get("eager", {}).get("frac_ceiling")),
                             fmt_bytes(r.get("peak_mem_bytes")), fmt_bytes(rk.get("eager", {}).get("peak_mem_bytes"))])
        header = ["batch", "dtype", "aecomp", "aecomp time", "eager time", *[f"{b} time" for b in vs],
                  "vs eager", *[f"vs {b}" for b in vs], "vs best peer", "aecomp % of ceiling", "eager % of ceiling",
                  "aecomp peak mem", "eager peak mem"]
        out.append("**Training step** of the reference autoencoder 784-128-64-32-64-128-784 (forward, MSE, "
                   "backward, Adam): aecomp's `FusedStep` + fused Adam against the same step written the usual "
                   "way (eager) and `torch.compile` of that step. bfloat16 rows are mixed precision on the CPU: "
                   "float32 parameters and Adam state everywhere, the peers under `torch.autocast(bfloat16)`, "
                   "aecomp's `FusedStep(precision=\"bf16\")` with its GEMMs on the matrix engine; their % of "
                   "ceiling is of the bf16 matmul rate. \"vs best peer\": the faster of eager and compile at "
                   "the same precision." + data + "\n\n"
                   + md_table(header, rows, "rll" + "r" * (len(header) - 3)))
    # the usual loop
    keys = res.keys(["usual_loop"])
    if keys:
        rows = []
        for k in keys:
            rk = res.cases[k]
            for a in (a for a in aec if a in rk):
                rows.append([str(k[3]), k[4], fmt_time(rk.get("eager", {}).get("median_ms")),
                             fmt_time(rk[a].get("median_ms")), res.fmt_ratio(k, a, "eager", spread=True),
                             fmt_pct(rk[a].get("frac_ceiling"))])
        out.append("**The usual loop**: the seed's model trained by its own loop (`zero_grad`, "
                   "`crit(model(x), x)`, `backward`, `Adam().step()`) as written against the same loop on "
                   "`aecomp.accelerate(model)`; bfloat16: the loop under `torch.autocast(bfloat16)` against "
                   "`aecomp.accelerate(model, precision=\"bf16\")` (float32 parameters, the user's optimizer)."
                   + data + "\n\n" + md_table(["batch", "dtype", "as written", "accelerated", "speedup",
                                                  "accelerated % of ceiling"], rows, "rlrrrr"))
    # training job
    keys = res.keys(["train_job"])
    if keys:
        rows = []
        for k in keys:
            rk = res.cases[k]
            e = rk.get("eager", {})
            for a in (a for a in aec if a in rk):
                r = rk.get(a, {})
                p = r.get("params") or e.get("params") or {}
                rows.append([a, str(p.get("epochs", "?")), str(p.get("steps", "?")), fmt_time(e.get("median_ms")),
                             fmt_time(r.get("median_ms")), res.fmt_ratio(k, a, "eager", spread=True),
                             _loss(e.get("final_train_loss")), _loss(r.get("final_train_loss"))])
        out.append("**Training job**: the usual loop (`DataLoader`, eager model, `loss.item()` per step) against "
                   "`aecomp.train.Trainer`, digits28 train split, batch 64, Adam 1e-3 "
                   "(`benchmarks/bench_train_job.py`)." + data + "\n\n"
                   + md_table(["aecomp", "epochs", "steps", "usual loop", "Trainer", "speedup", "usual final loss",
                               "Trainer final loss"], rows, "lrrrrrrr"))
    # linear_act
    keys = res.keys(["linear_act"])
    if keys:
        shapes = list(OrderedDict.fromkeys((k[2], k[3], k[4]) for k in keys))
        rows = []
        for shape, batch, dtype in shapes:
            for a in aec:
                if not any(a in res.cases.get(("linear_act", m, shape, batch, dtype), {}) for m in ("fwd", "fwd+bwd")):
                    continue
                cells = [f"`{shape}`", str(batch), dtype, a]
                for mode in ("fwd", "fwd+bwd"):
                    k = ("linear_act", mode, shape, batch, dtype)
                    r = res.cases.get(k, {}).get(a, {})
                    cells += [fmt_time(r.get("median_ms")), *speed_cols(k, a), fmt_pct(r.get("frac_ceiling"))]
                rows.append(cells)
        header = ["layer", "batch", "dtype", "aecomp"]
        for mode in ("fwd", "fwd+bwd"):
            header += [f"{mode} time", *[f"{mode} vs {b}" for b in ["eager", *vs]], f"{mode} % ceiling"]
        out.append("**linear_act** (`act(x W^T + b)`) at the six layers of the reference autoencoder; fwd+bwd "
                   "computes the gradients of x, W and b." + data + "\n\n"
                   + md_table(header, rows, "lrll" + "r" * (len(header) - 4)))
    # chain + mse + latency: one compact table
    keys = res.keys(["mlp", "mlp_mse_loss", "mse_loss", "latency", "packed_mlp"])
    if keys:
        rows = []
        for k in keys:
            rk = res.cases[k]
            for a in (a for a in aec if a in rk):
                r = rk.get(a, {})
                frac = r.get("frac_bw_ceiling") if k[0] == "mse_loss" else r.get("frac_ceiling")
                rows.append([k[0], k[1], f"`{k[2]}`", str(k[3]), k[4], a, fmt_time(r.get("median_ms")),
                             fmt_time(rk.get("eager", {}).get("median_ms")), *speed_cols(k, a),
                             fmt_pct(frac) + (" (copy)" if k[0] == "mse_loss" and frac is not None else "")])
        header = ["workload", "mode", "shape", "batch", "dtype", "aecomp", "aecomp time", "eager time",
                  "vs eager", *[f"vs {b}" for b in vs], "% of ceiling"]
        out.append("**Chain, loss and inference latency**: `mlp` / `mlp_mse_loss` over the whole autoencoder, "
                   "`mse_loss` on `[batch, 784]` (memory-bound: its fraction is of the copy ceiling), and the "
                   "inference latency of a `CompressedNet` (encoder 784-128-64-32 + head 32 -> 10; `packed_mlp`: "
                   "its packed int8 / 4-bit shared weights on the GPU, against the dequantized float net)." + data
                   + "\n\n"
                   + md_table(header, rows, "lllrll" + "r" * (len(header) - 6)))
    return "\n\n".join(out)


def best_peer_ratio(res: Results, key: CaseKey, impl: str) -> Optional[float]:
    """The best baseline's median over aecomp's (per round, median over rounds)."""
    ratios = [res.ratio(key, impl, b) for b in BASELINES if b in res.cases.get(key, {})]
    ratios = [r for r in ratios if r is not None]
    return min(ratios) if ratios else None


def inference_md(rows: List[Dict[str, Any]], src: str) -> str:
    """Packed inference (``kind: inference`` rows of ``benchmarks/bench_inference.py``), newest run."""
    rows = [r for r in rows if r.get("kind") == "inference" and r.get("part") == "model"]
    if not rows:
        return ""
    last = rows[-1].get("run_id") or rows[-1].get("date")
    rows = [r for r in rows if (r.get("run_id") or r.get("date")) == last]
    impls = ["packed", "packed_float", "eager", "ort_f32", "ort_int8"]
    out = []
    for model, batch in sorted({(r["model"], r["batch"]) for r in rows}):
        sel = {r["impl"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        if "packed" not in sel:
            continue
        p = sel["packed"]["median_us"]
        cells = [model, str(batch), f"{sel['packed'].get('file_bytes', 0):,}"]
        cells += [f"{sel[i]['median_us']:.1f}" if i in sel else "-" for i in impls]
        cells += [fmt_x(sel[b]["median_us"] / p) if b in sel else "-" for b in ("ort_f32", "ort_int8")]
        out.append(cells)
    first = rows[0]
    where = f"load average {first.get('load_avg')}" if first.get("load_avg") else ""
    return ("**Packed inference** (`python -m benchmarks.run --only inference`, one thread, interleaved): "
            "the packed model of each compressed file (`load_packed_model`; int8 on u8 x s8 brgemm — AMX-INT8 — "
            "at batch >= 64 where the CPU has AMX, AVX-512 VNNI tiles below; shared-weight codes decoded "
            "into bf16 tiles for the bf16 brgemm at batch >= 16 with AMX, float microkernels otherwise) "
            "against torch eager float32 and onnxruntime float32 / int8 (1 thread), in microseconds"
            + (f" ({where})" if where else "") + f". Data: [`{src}`]({src}).\n\n"
            + md_table(["model", "batch", "file B", *[f"{i} µs" for i in impls], "vs ORT f32", "vs ORT int8"],
                       out, "lrr" + "r" * (len(impls) + 2)))


def _loss(v) -> str:
    return "-" if v is None else f"{v:.5f}"


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------
def plot_speedups(res: Results, out_dir: Path) -> List[Path]:
    """``<machine>_speedup[_<dtype>].png``: speedup over eager against batch size (log2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    paths = []
    dtypes = sorted({k[4] for k in res.cases}, key=lambda d: d != "bfloat16")
    for dtype in dtypes:
        panels: Dict[Tuple[str, str], List[CaseKey]] = OrderedDict()
        for k in sorted(res.cases, key=_key_order):
            if k[4] != dtype or k[0] == "train_job":
                continue
            title = (k[0] if k[0] != "linear_act" else f"linear_act {k[2]}", k[1] if k[0] != "linear_act" else "")
            panels.setdefault(title, []).append(k)
        if not panels:
            continue
        n = len(panels)
        cols = min(4, n)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        impls = [i for i in res.impls() if i != "eager"]
        colors = {name: f"C{i}" for i, name in enumerate(impls)}
        for ax, ((title, mode), keys) in zip(axes.flat, panels.items()):
            for name in impls:
                for m, style in (("fwd", "-"), ("fwd+bwd", "--"), ("step", "-"), ("infer", "-")):
                    pts = sorted((k[3], res.ratio(k, name, "eager")) for k in keys if k[1] == m)
                    pts = [(b, v) for b, v in pts if v is not None]
                    if pts:
                        label = name + (f" {m}" if title.startswith("linear_act") or m == "fwd+bwd" or m == "fwd"
                                        else "")
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colors[name],
                                label=label)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            lo, hi = ax.get_ylim()
            lo, hi = min(lo, 0.8), max(hi, 1.25)
            ax.set_ylim(lo, hi)
            ax.set_yticks([t for t in (0.125, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 32)
                           if lo <= t <= hi])
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            ax.set_title(f"{title} {mode}".strip(), fontsize=9)
            ax.set_xlabel("batch", fontsize=8)
            ax.set_ylabel("speedup over eager", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        where = (res.info.get("gpu") if res.device == "cuda"
                 else f"{res.info.get('cpu')}, {res.info.get('threads')} thread")
        fig.suptitle(f"{where} — {dtype} — speedup over torch eager (from {res.path.name})", fontsize=10)
        fig.tight_layout()
        suffix = "" if len(dtypes) == 1 else f"_{dtype}"
        path = out_dir / f"{res.machine}_speedup{suffix}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------
# README
# ------------------------------------------------------------------------------------------------
def _rel(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root).replace(os.sep, "/")
    except ValueError:
        return str(path)


def machine_section(res: Results, root: Path, md_path: Path, pngs: List[Path]) -> str:
    rel = _rel(res.path, root)
    info = res.info
    kind = "GPU" if res.device == "cuda" else "CPU"
    name = info.get("gpu") if res.device == "cuda" else info.get("cpu")
    parts = [f"#### {kind}: {name} (`{res.machine}`)", _provenance(res, rel), ceilings_md(res), key_tables_md(res, rel)]
    inference = inference_md(res.extra_rows, rel)
    if inference:
        parts.append(inference)
    for p in pngs:
        prel = _rel(p, root)
        parts.append(f"![speedup over eager against batch size, {kind} {name}]({prel})\n\n"
                     f"*Speedup over torch eager against batch size ({kind}: {name}), from [`{rel}`]({rel}); "
                     f"image `{prel}`.*")
    parts.append(f"Every case with percentiles and peak memory: [`{_rel(md_path, root)}`]({_rel(md_path, root)}).")
    return "\n\n".join(parts)


METHOD = """\
How these numbers are made: `python -m benchmarks.run` (or `aecomp bench`) runs the whole matrix
in one process — aecomp and its baselines (torch eager written the usual way, `torch.compile`
of it, and on a GPU `mode="max-autotune"`) on the same random data — after measuring the
machine's ceilings in the same run (CPU: single-thread sgemm of a 1024² `torch.mm`, and a
64 MiB copy; GPU: 8192³ bf16 and fp32 `torch.mm`, a 1 GiB device-to-device copy). CPU: one
thread, `time.perf_counter`, each implementation warmed up, then sampled in alternation
(medians of 31 samples, each sample about 5 ms of calls); GPU: `triton.testing.do_bench`.
"vs X" is X's median over aecomp's (> 1: aecomp is faster). "% of ceiling" is achieved FLOP/s
over the matmul ceiling; on the CPU that sgemm is sampled in alternation with the case itself, so
the fraction is formed under the same load (these machines are shared). Ceilings are measured,
not theoretical peaks: a working set that stays in cache can pass them (mse_loss on 64x784 against
a 64 MiB DRAM copy), and a small GEMM can come out a little above a loaded 1024² one. With `--rounds N` the
whole matrix runs N times in the process and each figure is the median over the rounds (ratios
formed within a round, so a ratio need not equal the quotient of the two median times shown;
"(a-b)" after a ratio is its range over the rounds). Peak memory:
GPU `torch.cuda.max_memory_allocated`; CPU the growth of the process's peak resident set during
one call (`/proc/self/clear_refs` + `VmHWM`; page-granular, so small workloads read as ~0).
`python -m benchmarks.render` regenerates this section from the files in `benchmarks/results/`."""


def readme_section(results: List[Results], root: Path, written: Dict[str, Tuple[Path, List[Path]]]) -> str:
    cpu = [r for r in results if r.device != "cuda"]
    gpu = [r for r in results if r.device == "cuda"]
    parts = [METHOD]
    if cpu:
        parts.append("### CPU\n\n" + "\n\n".join(
            machine_section(r, root, *written[r.machine]) for r in cpu))
    if gpu:
        parts.append("### GPU\n\n" + "\n\n".join(
            machine_section(r, root, *written[r.machine]) for r in gpu))
    else:
        parts.append("### GPU\n\nNone recorded yet: `benchmarks/gpu_check.sh` on a GPU machine writes "
                     "them (copy its `gpu_*.jsonl` into `benchmarks/results/` and re-render).")
    return "\n\n".join(parts)


def replace_section(text: str, body: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README must contain exactly one {START} followed by one {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body.strip()}\n{END}{tail}"


def render(files: List[Path], out_dir: Path, readme: Optional[Path], plots: bool = True,
           root: Path = REPO_ROOT, include_smoke: bool = False) -> Dict[str, Any]:
    results = [Results(f, include_smoke=include_smoke) for f in files]
    results = [r for r in results if r.cases or r.ceilings]
    written: Dict[str, Tuple[Path, List[Path]]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for res in results:
        md = out_dir / f"{res.machine}.md"
        pngs = plot_speedups(res, out_dir) if plots else []
        rel = _rel(res.path, root)
        md.write_text(f"# Benchmarks: {res.machine}\n\nGenerated by `python -m benchmarks.render` from "
                      f"[`{res.path.name}`]({res.path.name}); do not edit.\n\n"
                      + _provenance(res, res.path.name) + "\n\n" + ceilings_md(res) + "\n\n"
                      + full_tables_md(res) + "\n")
        written[res.machine] = (md, pngs)
        print(f"render: {rel} -> {_rel(md, root)}" + "".join(f", {_rel(p, root)}" for p in pngs))
    if readme is not None:  # links relative to the README
        text = readme.read_text()
        readme.write_text(replace_section(text, readme_section(results, readme.resolve().parent, written)))
        print(f"render: {readme} performance section regenerated from {len(results)} file(s)")
    return {"results": results, "written": written}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="results files (default: every *.jsonl in --results-dir)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="where the results files are and outputs go")
    p.add_argument("--readme", default=str(README), help="README to update between the performance markers")
    p.add_argument("--no-readme", action="store_true", help="leave README alone")
    p.add_argument("--no-plots", action="store_true", help="no PNGs")
    p.add_argument("--summary", action="store_true", help="print a short text table of each file; write nothing")
    p.add_argument("--include-smoke", action="store_true", help="also the rows of --smoke runs (tests)")
    args = p.parse_args(argv)
    out_dir = Path(args.results_dir)
    files = [Path(f) for f in args.files] or sorted(out_dir.glob("*.jsonl"))
    if not files:
        print(f"render: no results files in {out_dir}", file=sys.stderr)
        return 1
    if args.summary:
        for f in files:
            rows = read_rows(f, args.include_smoke)
            print(f"== {f}")
            print(short_table(rows, f, brief=True))
        return 0
    render(files, out_dir, None if args.no_readme else Path(args.readme), plots=not args.no_plots,
           include_smoke=args.include_smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
