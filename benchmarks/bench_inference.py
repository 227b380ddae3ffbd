"""Inference group: compressed models through the packed path vs what a deployer would otherwise run.

For each compressed model (the reference CompressedNet 784-128-64-32 + 32-10 as int8, as 4-bit
shared weights, pruned 70% / 90% + int8; and the baseline LeNet-300-100 as int8), one thread, the
same inputs, interleaved in the same run (``benchmarks._timing.time_interleaved``):

* ``packed``        ``aecomp.ops.packed_mlp`` through the Python op (``model(x)`` of the packed
                    model loaded from its file; int8 layers on the integer path)
* ``packed_float``  the same packed weights, float compute (no activation quantization)
* ``eager``         torch eager float32 (``nn.Sequential`` of Linear/ReLU, dequantized weights),
                    under ``torch.inference_mode``
* ``ort_f32``       onnxruntime, the float32 ONNX file (``aecomp.compress.export.export_onnx``)
* ``ort_int8``      onnxruntime, the int8 ONNX file (``export_int8_onnx``: DynamicQuantizeLinear +
                    MatMulInteger); onnxruntime with 1 intra-op / 1 inter-op thread, all graph
                    optimisations, numpy input made once

and the float32 LeNet-300-100 in torch eager (the "2x at batch 256" reference). A ``sparse`` part
times one pruned layer (784 -> 300) at 70% and 90% sparsity: torch's CSR float32 kernel
(``torch.sparse.mm``) against the dense packed int8 layer, to decide whether pruned layers run
sparse.

Rows are JSON lines (``kind: "inference"``) appended to the runner's results file; run alone,
from anywhere (``python -m benchmarks.bench_inference`` needs the checkout as the current folder)::

    python <checkout>/benchmarks/bench_inference.py [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

if __package__ in (None, ""):  # `python path/to/benchmarks/bench_inference.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
from torch import nn

from benchmarks import _timing

BATCHES = (1, 256)


def _model(dims_enc, dims_head, seed: int = 0) -> nn.Module:
    from aecomp.compress.net import CompressedNet
    from aecomp.nn import FusedMLP

    torch.manual_seed(seed)
    enc = FusedMLP(list(dims_enc), ["relu"] * (len(dims_enc) - 2) + ["none"])
    head = FusedMLP(list(dims_head), ["relu"] * (len(dims_head) - 2) + ["none"])
    return CompressedNet(enc, head, mode="replace").eval()


def _lenet(seed: int = 0) -> nn.Module:
    from aecomp.compress.baselines import lenet_300_100

    torch.manual_seed(seed)
    return lenet_300_100(784, 10).eval()


def _ort_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_models(tmp: Path) -> Dict[str, Dict[str, Any]]:
    """``{name: {"file", "packed", "eager", "onnx_f32", "onnx_int8"}}`` for each compressed model."""
    from aecomp.compress.coding import save_coded
    from aecomp.compress.export import export_int8_onnx, export_onnx
    from aecomp.compress.packed import load_packed_model
    from aecomp.compress.prune import prune_
    from aecomp.compress.share import finalize, share_model
    from aecomp.compress.storage import load_packed, save_packed

    models: Dict[str, Dict[str, Any]] = {}
    ref = _model([784, 128, 64, 32], [32, 10])
    specs = [("compressednet-int8", ref, "int8", 0.0), ("compressednet-shared4", ref, "shared4", 0.0),
             ("compressednet-pruned70-int8", ref, "int8", 0.7), ("compressednet-pruned90-int8", ref, "int8", 0.9),
             ("lenet-300-100-int8", _lenet(), "int8", 0.0)]
    for name, base, fmt, sparsity in specs:
        import copy

        m = copy.deepcopy(base)
        if sparsity:
            prune_(m, sparsity)
        if fmt == "int8":
            path = tmp / f"{name}.safetensors"
            save_packed(m, path, values="int8", sparse=bool(sparsity))
            floatm = load_packed(path)
            onnx_int8 = export_int8_onnx(path, tmp / f"{name}.int8.onnx")
        else:
            net = finalize(share_model(m, 4))
            path = tmp / f"{name}.aecc"
            save_coded(net, path)
            floatm = net.to_model()
            onnx_int8 = None
        packed = load_packed_model(path)
        models[name] = {"file": path, "file_bytes": path.stat().st_size, "packed": packed,
                        "resident_bytes": packed.resident_bytes,
                        "float32_bytes": sum(p.numel() * 4 for p in floatm.parameters()),
                        "eager": floatm.to_sequential().eval(),
                        "onnx_f32": export_onnx(floatm, tmp / f"{name}.f32.onnx"), "onnx_int8": onnx_int8}
    return models


def _impls(entry: Dict[str, Any], x: torch.Tensor) -> Dict[str, Callable[[], object]]:
    packed = entry["packed"]
    pf = packed.with_compute("float")
    eager = entry["eager"]
    xn = x.numpy()
    fns: Dict[str, Callable[[], object]] = {"packed": lambda: packed(x), "eager": lambda: eager(x)}
    if "int8" in packed.kinds:
        fns["packed_float"] = lambda: pf(x)
    s32 = _ort_session(entry["onnx_f32"])
    fns["ort_f32"] = lambda: s32.run(None, {"x": xn})
    if entry["onnx_int8"] is not None:
        s8 = _ort_session(entry["onnx_int8"])
        fns["ort_int8"] = lambda: s8.run(None, {"x": xn})
    return fns


def _time(fns: Dict[str, Callable[[], object]], sample_s: float, repeats: int) -> Dict[str, Dict[str, float]]:
    with torch.inference_mode():
        inner = {n: _timing.warm_up(f, sample_s) for n, f in fns.items()}
        return _timing.time_interleaved(fns, inner, repeats)


def sparse_rows(sample_s: float, repeats: int) -> List[Dict[str, Any]]:
    """One pruned 784 -> 300 layer: torch CSR float32 (sparse) vs the dense packed int8 kernel."""
    from aecomp.compress.quantize import quantize_per_channel
    from aecomp.ops import PackedChain, int8_layer

    rows = []
    g = torch.Generator().manual_seed(0)
    for sparsity in (0.7, 0.9):
        w = torch.randn(300, 784, generator=g)
        w[torch.rand(300, 784, generator=g) < sparsity] = 0
        q, s = quantize_per_channel(w)
        wq = q.float() * s[:, None]
        b = torch.randn(300, generator=g)
        dense = PackedChain([int8_layer(q, s, b, "relu")])
        csr = wq.to_sparse_csr()
        for batch in BATCHES:
            x = torch.rand(batch, 784, generator=g)
            xt = x.T.contiguous()
            fns = {"dense_packed_int8": lambda: dense(x),
                   "sparse_csr_f32": lambda: torch.relu(torch.sparse.mm(csr, xt).T + b)}
            res = _time(fns, sample_s, repeats)
            for impl, r in res.items():
                rows.append({"kind": "inference", "part": "sparse", "model": f"layer-784-300-pruned{int(sparsity * 100)}",
                             "impl": impl, "batch": batch, "median_us": r["median_s"] * 1e6,
                             "p20_us": r["p20_s"] * 1e6, "p80_us": r["p80_s"] * 1e6})
    return rows


def run(quick: bool = False, emit: Optional[Callable[[Dict[str, Any]], None]] = None,
        say: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Measure every model x impl x batch; returns (and emits) the rows."""
    torch.set_num_threads(1)
    sample_s, repeats = (0.02, 5) if quick else (0.05, 15)
    rows: List[Dict[str, Any]] = []

    def put(row):
        rows.append(row)
        if emit:
            emit(row)

    with tempfile.TemporaryDirectory() as td:
        models = build_models(Path(td))
        lenet32 = _lenet().to_sequential().eval()
        for name, entry in models.items():
            for batch in BATCHES:
                x = torch.rand(batch, 784)
                fns = _impls(entry, x)
                if batch == 256:
                    fns["lenet_f32_eager"] = lambda: lenet32(x)
                res = _time(fns, sample_s, repeats)
                for impl, r in res.items():
                    put({"kind": "inference", "part": "model", "model": name, "impl": impl, "batch": batch,
                         "median_us": r["median_s"] * 1e6, "p20_us": r["p20_s"] * 1e6, "p80_us": r["p80_s"] * 1e6,
                         "file_bytes": entry["file_bytes"], "resident_bytes": entry["resident_bytes"],
                         "float32_bytes": entry["float32_bytes"]})
                say(_line(name, batch, res))
    for row in sparse_rows(sample_s, repeats):
        put(row)
    say(sparse_table(rows))
    return rows


def _line(name: str, batch: int, res: Dict[str, Dict[str, float]]) -> str:
    base = res["packed"]["median_s"]
    parts = [f"{k} {v['median_s'] * 1e6:.1f} us ({v['median_s'] / base:.2f}x)" for k, v in res.items()]
    return f"{name} b{batch}: " + "; ".join(parts)


def table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: per model and batch, the median of each impl (us) and packed's speedup over each."""
    impls = ["packed", "packed_float", "eager", "ort_f32", "ort_int8", "lenet_f32_eager"]
    lines = ["| model | batch | file B | resident B | " + " | ".join(f"{i} us" for i in impls) +
             " | vs best ORT |", "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in impls) + " | ---: |"]
    keys = sorted({(r["model"], r["batch"]) for r in rows if r.get("part") == "model"})
    for model, batch in keys:
        sel = {r["impl"]: r for r in rows if r.get("part") == "model" and r["model"] == model and r["batch"] == batch}
        ort = [sel[k]["median_us"] for k in ("ort_f32", "ort_int8") if k in sel]
        first = next(iter(sel.values()))
        cells = [f"{sel[i]['median_us']:.1f}" if i in sel else "-" for i in impls]
        ratio = f"{min(ort) / sel['packed']['median_us']:.2f}x" if ort else "-"
        lines.append(f"| {model} | {batch} | {first['file_bytes']:,} | {first['resident_bytes']:,} | "
                     + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def sparse_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| pruned layer | batch | dense packed int8 us | sparse CSR f32 us | winner |", "| --- | ---: | ---: | ---: | --- |"]
    keys = sorted({(r["model"], r["batch"]) for r in rows if r.get("part") == "sparse"})
    for model, batch in keys:
        sel = {r["impl"]: r["median_us"] for r in rows if r.get("part") == "sparse" and r["model"] == model
               and r["batch"] == batch}
        d, s = sel["dense_packed_int8"], sel["sparse_csr_f32"]
        lines.append(f"| {model} | {batch} | {d:.1f} | {s:.1f} | {'dense' if d <= s else 'sparse'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    p.add_argument("--out", default=None, help="append the rows as JSON lines to this file")
    args = p.parse_args(argv)
    fh = open(args.out, "a") if args.out else None
    try:
        rows = run(args.quick, emit=(lambda r: fh.write(json.dumps(r) + "\n")) if fh else None)
    finally:
        if fh:
            fh.close()
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
