"""``compress_report``: the table of every model of a compression run, as JSON, Markdown and a plot.

``report.json``::

    {"dataset": ..., "latent": K, "models": [
        {"name", "params", "bytes", "accuracy", "recon_mse", "latency_ms_b1", "latency_ms_b256",
         "ratio", "macs", "float32_bytes", "int8_bytes", "file", "description", ...}, ...],
     "published": [...], ...}

``bytes`` is the size of the file that holds the model (``os.path.getsize``); ``ratio`` is
``bytes(baseline) / bytes(model)`` (the row named ``baseline`` is the uncompressed classifier);
``accuracy`` is top-1 test accuracy in percent; ``recon_mse`` the per-element test
reconstruction MSE; a field that does not apply to a model is ``null``. ``float32_bytes`` /
``int8_bytes`` are the tensor payload of the model stored with float32 / int8 values in its own
layout (dense or sparse), without the file header. ``macs`` = multiply-adds per sample (for a
pruned model, the nonzero weights).

Latency (:func:`measure_latency`): the median wall time of repeated forward passes, after
warm-up, with ``torch.set_num_threads(1)``, at batch 1 and batch 256. For an int8 (or
shared-weight) model they time the packed path (``aecomp.compress.packed``: the file loaded
packed, one ``packed_mlp`` call; ``latency_path`` = ``packed``), and ``resident_bytes`` is what
that packed model holds in memory (packed weights, scales or codebooks, biases, column sums);
float32 models are timed through the fused float ops (``latency_path`` = ``float32``).

``report.md`` holds the same table plus the published Deep Compression row for
LeNet-300-100; ``accuracy_vs_bytes.png`` plots accuracy against file size (log x).
"""
from __future__ import annotations

import io
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

__all__ = ["FIELDS", "compress_report", "format_table", "frontier", "measure_latency", "smallest_within"]

FIELDS = ("name", "params", "bytes", "accuracy", "recon_mse", "latency_ms_b1", "latency_ms_b256", "ratio")
PathLike = Union[str, os.PathLike]


@torch.no_grad()
def measure_latency(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int = 50,
                    warmup: int = 5) -> float:
    """Median milliseconds of ``fn(x)`` over ``repeats`` runs on one thread (after ``warmup`` runs)."""
    if repeats < 1:
        raise ValueError(f"measure_latency: repeats must be >= 1, got {repeats}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(times)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "kb":
        return f"{v / 1024:.1f}"
    if kind == "pct":
        return f"{v:.2f}"
    if kind == "ratio":
        return f"{v:.1f}x"
    if kind == "mse":
        return f"{v:.5f}"
    if kind == "ms":
        return f"{v:.3f}"
    return str(v)


COLUMNS = (
    ("model", "name", "str"),
    ("params", "params", "int"),
    ("MACs/sample", "macs", "int"),
    ("float32 KB", "float32_bytes", "kb"),
    ("int8 KB", "int8_bytes", "kb"),
    ("file bytes", "bytes", "int"),
    ("ratio", "ratio", "ratio"),
    ("accuracy %", "accuracy", "pct"),
    ("recon MSE", "recon_mse", "mse"),
    ("ms @1", "latency_ms_b1", "ms"),
    ("ms @256", "latency_ms_b256", "ms"),
    # packed-weight inference (aecomp.compress.packed): the weights as held in memory by the
    # packed model, beside the file's bytes; "latency from" says which path was timed
    ("resident bytes", "resident_bytes", "int"),
    ("latency from", "latency_path", "str"),
)


def format_table(models: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table of the rows (one line per model)."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "| " + " | ".join("---" if c[2] == "str" else "---:" for c in COLUMNS) + " |"
    lines = [head, rule]
    for m in models:
        lines.append("| " + " | ".join(_fmt(m.get(key), kind) for _, key, kind in COLUMNS) + " |")
    return "\n".join(lines)


def _with_ratios(models: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    base = next((m for m in models if m.get("name") == "baseline"), None)
    base_bytes = base.get("bytes") if base else None
    out = []
    for m in models:
        m = {k: _finite(v) for k, v in m.items()}
        for f in FIELDS:
            m.setdefault(f, None)
        if m.get("bytes") and base_bytes:
            m["ratio"] = base_bytes / m["bytes"]
        out.append(m)
    return out


_VALUE_SUFFIXES = (("-int8-coded", "int8"), ("-int8", "int8"), ("-shared", "shared"))


def _family_variant(name: str):
    """``compressed-frozen-pruned70-int8`` -> (``compressed-frozen``, ``pruned + int8``);
    ``baseline-pruned90-shared4`` -> (``baseline``, ``pruned + shared``); ``-kd`` stays in the family."""
    base, values = name, "float32"
    for suffix, kind in _VALUE_SUFFIXES:
        i = base.rfind(suffix)
        if i > 0 and (base.endswith(suffix) or base[i + len(suffix):].isdigit()):
            base, values = base[:i], kind
            break
    pruned = "-pruned" in base
    family = base.split("-pruned")[0]
    if not pruned:
        return family, values
    return family, "pruned" if values == "float32" else f"pruned + {values}"


def frontier(models: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per family (``_family_variant``), the rows no other row of the family beats: sorted by
    ``bytes``, each more accurate than every smaller one (ties in accuracy: the smaller file)."""
    fams: Dict[str, List[Dict[str, Any]]] = {}
    for m in models:
        if m.get("bytes") and m.get("accuracy") is not None:
            fams.setdefault(_family_variant(m["name"])[0], []).append(m)
    out = {}
    for fam, rows in fams.items():
        best, keep = -math.inf, []
        for m in sorted(rows, key=lambda r: (r["bytes"], -r["accuracy"])):
            if m["accuracy"] > best:
                keep.append(m)
                best = m["accuracy"]
        out[fam] = keep
    return out


def smallest_within(models: Sequence[Dict[str, Any]], points: float = 1.0) -> Optional[Dict[str, Any]]:
    """The smallest file whose accuracy is at most ``points`` below the ``baseline`` row's."""
    base = next((m for m in models if m.get("name") == "baseline"), None)
    if not base or base.get("accuracy") is None:
        return None
    ok = [m for m in models if m.get("bytes") and m.get("accuracy") is not None
          and m["accuracy"] >= base["accuracy"] - points]
    return min(ok, key=lambda m: (m["bytes"], -m["accuracy"])) if ok else None


def _frontier_md(models: Sequence[Dict[str, Any]]) -> List[str]:
    lines = ["", "Frontier: per family, the best accuracy at each size (rows no smaller file of the family beats):",
             "", "| family | model | params | file bytes | ratio | accuracy % |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for fam, rows in frontier(models).items():
        for m in rows:
            lines.append(f"| {fam} | {m['name']} | {_fmt(m.get('params'), 'int')} | {_fmt(m['bytes'], 'int')} | "
                         f"{_fmt(m.get('ratio'), 'ratio')} | {_fmt(m['accuracy'], 'pct')} |")
    best = smallest_within(models)
    if best is not None:
        lines += ["", f"Smallest file within 1 point of the baseline's accuracy: **{best['name']}**, "
                      f"{best['bytes']:,} bytes, {_fmt(best.get('ratio'), 'ratio')} smaller than the baseline's "
                      f"file, accuracy {best['accuracy']:.2f}%."]
    return lines


def _plot(models: Sequence[Dict[str, Any]], path: Path, title: str,
          published: Sequence[Dict[str, Any]] = ()) -> None:
    """One colour per family (baseline, pca, each compressed mode), one marker per variant
    (float32, int8, pruned, pruned + int8); a legend instead of point labels, which would overlap."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pts = [m for m in models if m.get("bytes") and m.get("accuracy") is not None]
    markers = {"float32": "o", "int8": "s", "shared": "P", "pruned": "^", "pruned + int8": "D",
               "pruned + shared": "X"}
    palette = ["tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
    families: List[str] = []
    for m in pts:
        fam = _family_variant(m["name"])[0]
        if fam not in families:
            families.append(fam)
    colors = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    fig = Figure(figsize=(11, 5.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for m in pts:
        fam, var = _family_variant(m["name"])
        ax.scatter([m["bytes"]], [m["accuracy"]], color=colors[fam], marker=markers[var], s=42, alpha=0.85,
                   edgecolors="black", linewidths=0.4, zorder=3)
    for fam, rows in frontier(pts).items():  # each family's frontier as a step line
        ax.step([m["bytes"] for m in rows], [m["accuracy"] for m in rows], where="post", color=colors[fam],
                alpha=0.5, linewidth=1, zorder=2)
    handles = [Line2D([], [], color=colors[f], marker="o", linestyle="", label=f) for f in families]
    for p in published or ():
        acc = 100 - p["error_after_pct"]
        ax.scatter([p["bytes_after"]], [acc], marker="*", s=160, color="gold", edgecolors="black", zorder=4)
        ax.annotate(f"{p.get('source', 'published')}\n{p.get('network', '')} ({p.get('dataset', '')}), "
                    f"{p.get('ratio')}x", (p["bytes_after"], acc), textcoords="offset points", xytext=(6, -18),
                    fontsize=7)
        handles.append(Line2D([], [], color="gold", marker="*", markeredgecolor="black", markersize=11,
                              linestyle="", label=f"published: {p.get('source', '')}"))
    handles += [Line2D([], [], color="black", marker=mk, markerfacecolor="white", linestyle="", label=v)
                for v, mk in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xscale("log")
    ax.set_xlabel("model file size (bytes, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    path.write_bytes(buf.getvalue())


def _ours_beside(models: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Our rows in the published row's terms: baseline -> baseline pruned + int8, and baseline ->
    the most accurate int8 CompressedNet (ties: the smaller file)."""
    base = next((m for m in models if m.get("name") == "baseline"), None)
    if not base or not base.get("bytes") or base.get("accuracy") is None:
        return []
    picks = [m for m in models if m["name"].startswith("baseline-pruned") and m["name"].endswith("-int8")]
    comp = [m for m in models if m["name"].startswith("compressed-") and m["name"].endswith("-int8")
            and "pruned" not in m["name"] and m.get("accuracy") is not None]
    if comp:
        picks.append(max(comp, key=lambda m: (m["accuracy"], -m["bytes"])))
    best = smallest_within(models)
    if best is not None and best not in picks:
        picks.append(best)
    return [{"name": m["name"], "description": m.get("description") or m["name"], "params": base.get("params"),
             "bytes_before": base["bytes"], "bytes_after": m["bytes"], "ratio": base["bytes"] / m["bytes"],
             "error_before_pct": 100 - base["accuracy"], "error_after_pct": 100 - m["accuracy"]}
            for m in picks if m.get("bytes") and m.get("accuracy") is not None]


def _published_md(published: Sequence[Dict[str, Any]], ours: Sequence[Dict[str, Any]], dataset: str) -> str:
    if not published and not ours:
        return ""
    theirs = ", ".join(sorted({p.get("dataset", "?") for p in published})) or "-"
    lines = ["", f"Beside the published row (their data: {theirs}; ours: {dataset}):",
             "", "| network | method | params | before | after | ratio | error before | error after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in published:
        lines.append(f"| {p['network']} ({p['source']}) | {p['method']} | {p['params']:,} | "
                     f"{p['bytes_before'] / 1024:.0f} KB | {p['bytes_after'] / 1024:.0f} KB | {p['ratio']}x | "
                     f"{p['error_before_pct']}% | {p['error_after_pct']}% |")
    for o in ours:
        lines.append(f"| ours: {o['name']} | {o['description']} | {_fmt(o['params'], 'int')} | "
                     f"{o['bytes_before'] / 1024:.1f} KB | {o['bytes_after'] / 1024:.1f} KB | {o['ratio']:.1f}x | "
                     f"{o['error_before_pct']:.2f}% | {o['error_after_pct']:.2f}% |")
    return "\n".join(lines) + "\n"


def compress_report(models: Sequence[Dict[str, Any]], out_dir: PathLike, *, dataset: str, latent: int,
                    published: Sequence[Dict[str, Any]] = (), notes: Sequence[str] = (),
                    extra: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``accuracy_vs_bytes.png`` into ``out_dir``.

    ``models``: one dict per model with at least the :data:`FIELDS` (missing ones become
    ``null``; ``ratio`` is computed from the ``baseline`` row's ``bytes``). Returns the paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _with_ratios(models)
    ours = _ours_beside(rows)
    doc: Dict[str, Any] = {"dataset": dataset, "latent": int(latent), "models": rows,
                           "published": list(published), "ours_beside_published": ours,
                           "frontier": {f: [m["name"] for m in r] for f, r in frontier(rows).items()},
                           "smallest_within_1pt": (smallest_within(rows) or {}).get("name")}
    if extra:
        doc.update({k: v for k, v in extra.items() if k not in doc})
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "accuracy_vs_bytes.png"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    md = [f"# Compression report: {dataset}, latent {latent}", "", format_table(rows), ""]
    md += [f"- {n}" for n in notes]
    md += _frontier_md(rows)
    md.append(_published_md(published, ours, dataset))
    paths["md"].write_text("\n".join(md) + "\n")
    _plot(rows, paths["png"], f"accuracy vs model size ({dataset}, latent {latent})", published)
    return paths
