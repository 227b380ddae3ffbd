"""The compression report: every model of a run over its repeats, as JSON, Markdown, a plot and a short answer.

``report.json``::

    {"dataset", "latent", "baseline", "protocol": {"repeats", "compared", "points", ...},
     "recommendation": {"name", "file", "bytes", "ratio", "family", "uses_autoencoder",
                        "val_accuracy", "test_accuracy", "val_gap", "test_gap", "reason"}
                       (or {"name": null, "warning": ...}),
     "frontier": {family: [names]}, "ae_vs_random": [...],
     "models": [{"name", "family", "description", "params", "bytes", "ratio", "val_accuracy",
                 "accuracy", "over_repeats": {...}, "latency_ms_b1", ...}, ...],
     "published": [...], "ours_beside_published": [...], "published_note", ...}

Per model (``models``): ``bytes`` is the size of the shipped file (repeat 0, ``os.path.getsize``)
and ``ratio`` = the baseline's ``bytes`` / the model's; ``val_accuracy`` and ``accuracy`` are
that file's validation and test accuracy (top-1, percent) on the path the file runs
(``runs_on``); ``over_repeats`` holds the protocol's summary (``protocol.RowStats.to_dict``:
mean and spread of bytes and of validation and test accuracy over the repeats, and the paired
gaps to the baseline with their 95% intervals). A field that does not apply is ``null``.
``float32_bytes`` / ``int8_bytes`` are the tensor payload of the model stored with float32 /
int8 values in its own layout (dense or sparse), without the file header; ``macs`` =
multiply-adds per sample (the nonzero weights of a sparse model).

Every choice in the report is made on validation (``aecomp.compress.protocol``): the frontier
(per family, the files no smaller file of the family beats on mean validation accuracy), the
recommendation (the smallest file within ``points`` of the baseline on mean validation
accuracy), the rows beside the published point. Test figures are reported beside them.

Latency (:func:`measure_latency`): the median wall time of repeated forward passes, after
warm-up, with ``torch.set_num_threads(1)``, at batch 1 and batch 256, of what the file runs.
"""
from __future__ import annotations

import io
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["FIELDS", "answer_lines", "compress_report", "format_table", "measure_latency"]

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


def _spread(d: Optional[Dict[str, Any]]) -> str:
    """``mean ± std`` of a ``Spread.to_dict``."""
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:.2f}" if d.get("std") is None else f"{d['mean']:.2f} ± {d['std']:.2f}"


def _gap(d: Optional[Dict[str, Any]]) -> str:
    """``mean [low, high]`` of a ``GapInterval.to_dict``."""
    if not d or d.get("mean") is None:
        return "-"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _rep(m: Dict[str, Any], key: str) -> Optional[Dict[str, Any]]:
    return (m.get("over_repeats") or {}).get(key)


COLUMNS = (
    ("model", lambda m: m["name"]),
    ("params", lambda m: _fmt(m.get("params"), "int")),
    ("file bytes", lambda m: _fmt(m.get("bytes"), "int")),
    ("mean bytes", lambda m: _fmt((_rep(m, "bytes") or {}).get("mean"), "int")),
    ("ratio", lambda m: _fmt(m.get("ratio"), "ratio")),
    ("val acc % (mean ± sd)", lambda m: _spread(_rep(m, "val_accuracy"))),
    ("test acc % (mean ± sd)", lambda m: _spread(_rep(m, "test_accuracy"))),
    ("val gap [95% CI]", lambda m: _gap(_rep(m, "val_gap"))),
    ("test gap [95% CI]", lambda m: _gap(_rep(m, "test_gap"))),
    ("recon MSE", lambda m: _fmt(m.get("recon_mse"), "mse")),
    ("runs on", lambda m: m.get("runs_on") or "-"),
    ("ms @1", lambda m: _fmt(m.get("latency_ms_b1"), "ms")),
    ("ms @256", lambda m: _fmt(m.get("latency_ms_b256"), "ms")),
    ("resident bytes", lambda m: _fmt(m.get("resident_bytes"), "int")),
)


def format_table(models: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table of the rows (one line per model; accuracies over the repeats)."""
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |",
             "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"]
    for m in models:
        lines.append("| " + " | ".join(fn(m) for _, fn in COLUMNS) + " |")
    return "\n".join(lines)


def _with_ratios(models: Sequence[Dict[str, Any]], baseline: str) -> List[Dict[str, Any]]:
    base = next((m for m in models if m.get("name") == baseline), None)
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
        if i > 0 and (base.endswith(suffix) or base[i + len(suffix):] in ("mix",) or base[i + len(suffix):].isdigit()):
            base, values = base[:i], kind
            break
    pruned = "-pruned" in base
    family = base.split("-pruned")[0]
    if not pruned:
        return family, values
    return family, "pruned" if values == "float32" else f"pruned + {values}"


def _size(n: float) -> str:
    return f"{n:,.0f} B" if n < 10_000 else f"{n / 1000:,.1f} kB"


def _recommendation_doc(rec, by_name: Dict[str, Dict[str, Any]], base: Dict[str, Any]) -> Dict[str, Any]:
    if rec is None:
        return {"name": None, "warning": "no recommendation was made"}
    if rec.row is None:
        return {"name": None, "compared": rec.compared, "warning": rec.reason}
    m = by_name[rec.row.name]
    fam = m.get("family") or _family_variant(m["name"])[0]
    return {"name": m["name"], "file": m.get("file"), "bytes": m.get("bytes"), "ratio": m.get("ratio"),
            "bytes_mean": rec.row.bytes.mean, "ratio_mean": _rep(base, "bytes")["mean"] / rec.row.bytes.mean
            if _rep(base, "bytes") else None,
            "family": fam, "uses_autoencoder": fam.startswith("compressed-"), "description": m.get("description"),
            "val_accuracy": rec.row.val.to_dict(), "test_accuracy": rec.row.test.to_dict() if rec.row.test else None,
            "val_gap": rec.row.val_gap.to_dict() if rec.row.val_gap else None,
            "test_gap": rec.row.test_gap.to_dict() if rec.row.test_gap else None,
            "compared": rec.compared, "points": rec.points, "reason": rec.reason}


def _answer_md(doc: Dict[str, Any]) -> List[str]:
    r, p = doc["recommendation"], doc["protocol"]
    base = next(m for m in doc["models"] if m["name"] == doc["baseline"])
    if r.get("name") is None:
        return ["## Answer", "", f"**No recommendation.** {r.get('warning', '')}", ""]
    lines = ["## Answer", "",
             f"Recommended: **{r['name']}** (`{os.path.relpath(r['file'], doc['out']) if r.get('file') else '-'}`), "
             f"{r['bytes']:,} bytes, {r['ratio']:.1f}x smaller than the baseline's {base['bytes']:,}-byte file "
             f"(mean over repeats: {r['bytes_mean']:,.0f} bytes, {r['ratio_mean']:.1f}x).",
             "",
             f"- test accuracy {_spread(r['test_accuracy'])}% over {p['repeats']} repeat(s); gap to the baseline "
             f"{_gap(r['test_gap'])} points (95% interval);",
             f"- validation accuracy {_spread(r['val_accuracy'])}%; gap {_gap(r['val_gap'])} points (what chose it);",
             f"- chosen as {r['reason']} ({p['compared']} models compared);",
             f"- family: {r['family']} ({'an autoencoder' + chr(39) + 's encoder is part of it' if r['uses_autoencoder'] else 'no autoencoder in it'}): "
             f"{r.get('description') or ''}.", ""]
    return lines


def _frontier_md(doc: Dict[str, Any], by_name: Dict[str, Dict[str, Any]]) -> List[str]:
    lines = ["## Frontier", "",
             "Per family, the files no smaller file of the same family beats on mean validation accuracy "
             "(chosen on validation; test reported):", "",
             "| family | model | mean bytes | ratio | val acc % | test acc % | val gap | test gap [95% CI] |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = by_name.get(doc["baseline"], {})
    for fam, names in doc["frontier"].items():
        for n in names:
            m = by_name[n]
            nb = _rep(m, "bytes")["mean"]
            ratio = _rep(base, "bytes")["mean"] / nb if _rep(base, "bytes") else None
            lines.append(f"| {fam} | {n} | {nb:,.0f} | {_fmt(ratio, 'ratio')} | "
                         f"{_spread(_rep(m, 'val_accuracy'))} | {_spread(_rep(m, 'test_accuracy'))} | "
                         f"{_gap(_rep(m, 'val_gap'))} | {_gap(_rep(m, 'test_gap'))} |")
    return lines + [""]


def _ae_md(comparisons: Sequence[Dict[str, Any]]) -> List[str]:
    if not comparisons:
        return []
    lines = ["## Autoencoder against random initialisation", "",
             f"The same architecture (encoder + linear head) through the same steps, the encoder from the "
             f"autoencoder (`{comparisons[0]['autoencoder']}*`) or trained from random initialisation (`scratch*`); "
             f"gap = autoencoder minus random, paired over the same images in each repeat, combined over the "
             f"repeats (points, 95% interval):", "",
             "| step | autoencoder row | bytes (autoencoder) | bytes (random) | validation gap | test gap |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for c in comparisons:
        lines.append(f"| {c['step']} | {c['autoencoder']} | {c['bytes_autoencoder']:,.0f} | "
                     f"{c['bytes_random_init']:,.0f} | {_gap(c['val_gap'])} | {_gap(c['test_gap'])} |")
    lines += ["", ae_sentence(comparisons), ""]
    return lines


def ae_sentence(comparisons: Sequence[Dict[str, Any]]) -> str:
    """One plain sentence: does the autoencoder help at equal bytes (test gaps, with intervals)?"""
    if not comparisons:
        return ""
    gaps = [c["test_gap"] for c in comparisons if c["test_gap"].get("mean") is not None]
    better = sum(g["low"] > 0 for g in gaps)
    worse = sum(g["high"] < 0 for g in gaps)
    mean = sum(g["mean"] for g in gaps) / len(gaps)
    verdict = ("helps" if better and not worse else "hurts" if worse and not better else
               "makes no difference that the repeats can resolve" if not better and not worse else "is mixed")
    return (f"At equal bytes the autoencoder {verdict}: over {len(gaps)} steps the test gap averages {mean:+.2f} "
            f"points (autoencoder minus random initialisation); its interval is above zero in {better} step(s) and "
            f"below zero in {worse}.")


def _published_md(published: Sequence[Dict[str, Any]], ours: Sequence[Dict[str, Any]], dataset: str,
                  note: Optional[str]) -> List[str]:
    if not published:
        return ["## Published point", "", note or "No published point for this data.", ""]
    theirs = ", ".join(sorted({p.get("dataset", "?") for p in published}))
    lines = ["## Published point", "", f"Beside the published row (their data: {theirs}; ours: {dataset}; our rows "
             "chosen on validation, test accuracy of the shipped file):", "",
             "| network | method | params | before | after | ratio | error before | error after |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in published:
        lines.append(f"| {p['network']} ({p['source']}) | {p['method']} | {p['params']:,} | "
                     f"{p['bytes_before'] / 1024:.0f} KB | {p['bytes_after'] / 1024:.0f} KB | {p['ratio']}x | "
                     f"{p['error_before_pct']}% | {p['error_after_pct']}% |")
    for o in ours:
        lines.append(f"| ours: {o['name']} | {o['description']} | {_fmt(o['params'], 'int')} | "
                     f"{o['bytes_before'] / 1024:.1f} KB | {o['bytes_after'] / 1024:.1f} KB | {o['ratio']:.1f}x | "
                     f"{o['error_before_pct']:.2f}% | {o['error_after_pct']:.2f}% |")
    return lines + [""]


def _ours_beside(models: Sequence[Dict[str, Any]], baseline: str, stats, rec_name: Optional[str]) -> List[Dict[str, Any]]:
    """Our rows in the published row's terms, each picked on validation: the baseline's pruned int8
    file, the int8 CompressedNet with the best mean validation accuracy, the recommendation."""
    from . import protocol

    by = {m["name"]: m for m in models}
    base = by.get(baseline)
    if not base or not base.get("bytes") or base.get("accuracy") is None:
        return []
    picks = [m for m in models if m["name"].startswith(f"{baseline}-pruned") and m["name"].endswith("-int8")]
    comp = [stats[m["name"]] for m in models if m["name"].startswith("compressed-") and m["name"].endswith("-int8")
            and "pruned" not in m["name"] and m["name"] in stats]
    if comp:
        picks.append(by[protocol.best_on_validation(comp).name])
    if rec_name is not None and by[rec_name] not in picks:
        picks.append(by[rec_name])
    return [{"name": m["name"], "description": m.get("description") or m["name"], "params": base.get("params"),
             "bytes_before": base["bytes"], "bytes_after": m["bytes"], "ratio": base["bytes"] / m["bytes"],
             "error_before_pct": 100 - base["accuracy"], "error_after_pct": 100 - m["accuracy"]}
            for m in picks if m.get("bytes") and m.get("accuracy") is not None]


def _plot(doc: Dict[str, Any], path: Path, title: str) -> None:
    """Mean test accuracy over the repeats (error bar: spread) against the shipped file's bytes;
    one colour per family, one marker per variant; each family's validation frontier as a step
    line; the published point only where the data is MNIST, else a note saying why not."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    pts = [m for m in doc["models"] if m.get("bytes") and _rep(m, "test_accuracy")]
    markers = {"float32": "o", "int8": "s", "shared": "P", "pruned": "^", "pruned + int8": "D",
               "pruned + shared": "X"}
    palette = ["tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
               "tab:olive", "tab:cyan", "black"]
    families: List[str] = []
    for m in pts:
        if m["family"] not in families:
            families.append(m["family"])
    colors = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    fig = Figure(figsize=(11, 5.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    by = {m["name"]: m for m in pts}
    for m in pts:
        t = _rep(m, "test_accuracy")
        ax.errorbar([m["bytes"]], [t["mean"]], yerr=[t["std"] or 0.0], color=colors[m["family"]],
                    marker=markers[_family_variant(m["name"])[1]], markersize=6, alpha=0.85, markeredgecolor="black",
                    markeredgewidth=0.4, elinewidth=0.6, zorder=3)
    for fam, names in doc["frontier"].items():
        rows = [by[n] for n in names if n in by]
        if fam in colors and rows:
            ax.step([m["bytes"] for m in rows], [_rep(m, "test_accuracy")["mean"] for m in rows], where="post",
                    color=colors[fam], alpha=0.5, linewidth=1, zorder=2)
    handles = [Line2D([], [], color=colors[f], marker="o", linestyle="", label=f) for f in families]
    for p in doc.get("published") or ():
        acc = 100 - p["error_after_pct"]
        ax.scatter([p["bytes_after"]], [acc], marker="*", s=160, color="gold", edgecolors="black", zorder=4)
        ax.annotate(f"{p.get('source', 'published')}\n{p.get('network', '')} ({p.get('dataset', '')}), "
                    f"{p.get('ratio')}x", (p["bytes_after"], acc), textcoords="offset points", xytext=(6, -18),
                    fontsize=7)
        handles.append(Line2D([], [], color="gold", marker="*", markeredgecolor="black", markersize=11,
                              linestyle="", label=f"published: {p.get('source', '')}"))
    if not doc.get("published") and doc.get("published_note"):
        ax.text(0.01, 0.01, "Published Deep Compression point not drawn: the data is not MNIST.",
                transform=ax.transAxes, fontsize=7, alpha=0.8)
    handles += [Line2D([], [], color="black", marker=mk, markerfacecolor="white", linestyle="", label=v)
                for v, mk in markers.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xscale("log")
    ax.set_xlabel("model file size (bytes, log scale)")
    ax.set_ylabel(f"test accuracy (%), mean ± sd over {doc['protocol']['repeats']} repeat(s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    path.write_bytes(buf.getvalue())


def compress_report(models: Sequence[Dict[str, Any]], stats: Dict[str, Any], out_dir: PathLike, *, dataset: str,
                    latent: int, baseline: str = "baseline", recommendation=None,
                    frontier: Optional[Dict[str, Sequence[Any]]] = None, comparisons: Sequence[Dict[str, Any]] = (),
                    published: Sequence[Dict[str, Any]] = (), published_note: Optional[str] = None,
                    notes: Sequence[str] = (), extra: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Path],
                                                                                         Dict[str, Any]]:
    """Write ``report.json``, ``report.md`` and ``accuracy_vs_bytes.png`` into ``out_dir``.

    ``models``: the shipped files' rows (repeat 0) with at least the :data:`FIELDS`, each with its
    ``over_repeats`` summary; ``stats``: ``protocol.RowStats`` by name; ``recommendation``
    (``protocol.Recommendation``) and ``frontier`` (``protocol.frontier``), both chosen on
    validation; ``comparisons``: the autoencoder-vs-random rows. Returns ``(paths, document)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _with_ratios(models, baseline)
    for m in rows:
        m.setdefault("family", _family_variant(m["name"])[0])
    by = {m["name"]: m for m in rows}
    rec_name = recommendation.name if recommendation is not None else None
    doc: Dict[str, Any] = {
        "dataset": dataset, "latent": int(latent), "baseline": baseline, "out": str(out),
        "protocol": {"repeats": max((s.repeats for s in stats.values()), default=1), "compared": len(stats),
                     "points": recommendation.points if recommendation is not None else None,
                     "choices": "validation only; test accuracy reported, never ranked on"},
        "recommendation": _recommendation_doc(recommendation, by, by.get(baseline, {})),
        "smallest_within_1pt": rec_name,
        "frontier": {f: [r.name for r in v] for f, v in (frontier or {}).items()},
        "ae_vs_random": list(comparisons), "ae_vs_random_sentence": ae_sentence(comparisons),
        "models": rows, "published": list(published),
        "ours_beside_published": _ours_beside(rows, baseline, stats, rec_name) if published else [],
        "published_note": published_note}
    if extra:
        doc.update({k: v for k, v in extra.items() if k not in doc})
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "accuracy_vs_bytes.png"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    md = [f"# Compression report: {dataset}, latent {latent}", ""]
    md += _answer_md(doc)
    md += _frontier_md(doc, by)
    md += _ae_md(comparisons)
    md += ["## All models", "", format_table(rows), "", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += _published_md(published, doc["ours_beside_published"], dataset, published_note)
    paths["md"].write_text("\n".join(md) + "\n")
    _plot(doc, paths["png"], f"accuracy vs model size ({dataset}, latent {latent})")
    return paths, doc


def answer_lines(doc: Dict[str, Any]) -> List[str]:
    """The short answer printed after a run: the recommendation, then one frontier line per family."""
    r, p = doc["recommendation"], doc["protocol"]
    lines = []
    if r.get("name") is None:
        lines.append(f"WARNING: no recommendation. {r.get('warning', '')}")
    else:
        lines += [f"recommended: {r['file']}",
                  f"  {r['bytes']:,} bytes, {r['ratio']:.1f}x smaller than the baseline; test accuracy "
                  f"{_spread(r['test_accuracy'])}% over {p['repeats']} repeat(s), gap {_gap(r['test_gap'])} points "
                  f"(95% interval; validation gap {_gap(r['val_gap'])})",
                  f"  chosen on validation among {p['compared']} models; family {r['family']} "
                  f"({'with' if r['uses_autoencoder'] else 'without'} the autoencoder)"]
    by = {m["name"]: m for m in doc["models"]}
    lines.append("frontier (per family, chosen on validation; mean bytes: mean test accuracy %):")
    width = max((len(f) for f in doc["frontier"]), default=0)
    for fam, names in doc["frontier"].items():
        pts = ", ".join(f"{_size(_rep(by[n], 'bytes')['mean'])}: {_rep(by[n], 'test_accuracy')['mean']:.1f}"
                        for n in names)
        lines.append(f"  {fam:<{width}}  {pts}")
    if doc.get("ae_vs_random_sentence"):
        lines.append(doc["ae_vs_random_sentence"])
    return lines
