"""Bytes of the entropy-coded streams under each coder: ours (fixed, Huffman, lzma, deflate) vs
registry coders (zstd, brotli, constriction's ANS), on the .aecc files of a compression run.

    python -m benchmarks.bench_coding RUN_DIR/models [--json OUT.json]

For every layer of every coded file: the kept weights' code stream and the gap-coded positions
(for each coder, the escape width g that suits it best). Registry coders are optional here
(``pip install zstandard brotli constriction``); a missing one is skipped. ANS cost = its
compressed 32-bit words + a model table of 12 bits per alphabet symbol (quantized counts).
The order-0 entropy ``n H0 / 8`` is the floor no symbol-by-symbol coder beats.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from aecomp.compress import coding, entropy
from aecomp.compress.share import SharedLinear


def _registry():
    out = {}
    try:
        import zstandard

        def zstd(sym, a):
            c = zstandard.ZstdCompressor(level=22, write_content_size=False, write_checksum=False,
                                         write_dict_id=False)
            return len(c.compress(sym.astype(np.uint8).tobytes())) if a <= 256 else None
        out["zstd-22"] = zstd
    except ImportError:
        pass
    try:
        import brotli

        out["brotli-11"] = lambda sym, a: len(brotli.compress(sym.astype(np.uint8).tobytes(), quality=11)) \
            if a <= 256 else None
    except ImportError:
        pass
    try:
        import constriction

        def ans(sym, a):
            if sym.size == 0:
                return 0
            counts = np.bincount(sym, minlength=a).astype(np.float64)
            model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
            enc = constriction.stream.stack.AnsCoder()
            enc.encode_reverse(sym.astype(np.int32), model)
            return 4 * enc.get_compressed().size + math.ceil(12 * a / 8)
        out["ans(constriction)"] = ans
    except ImportError:
        pass
    return out


def _ours():
    return {name: (lambda n: (lambda sym, a: len(entropy.CODECS[n][0](sym, a)) if n in ("fixed", "huffman")
                              or a <= 256 else None))(name) for name in entropy.CODECS}


def _entropy_bytes(sym, a):
    if sym.size == 0:
        return 0.0
    p = np.bincount(sym, minlength=a) / sym.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * sym.size / 8)


def streams(layer):
    """[(kind, alphabet or None, symbols or positions)] of one packed layer."""
    if isinstance(layer, SharedLinear):
        values, alphabet = layer.codes.reshape(-1).long().numpy(), 1 << layer.bits
    else:
        values, alphabet = layer.q.reshape(-1).long().numpy() + 127, 255
    out = []
    if layer.mask is not None and not bool(layer.mask.all()):
        pos = np.flatnonzero(layer.mask.reshape(-1).numpy())
        out.append(("pos", None, pos))
        values = values[pos]
    out.append(("symbols", alphabet, values))
    return out


def measure(folder: Path):
    coders = {**_ours(), **_registry()}
    totals = {c: {"pos": 0, "symbols": 0} for c in coders}
    totals["entropy"] = {"pos": 0.0, "symbols": 0.0}
    files = sorted(folder.glob("*.aecc"))
    for f in files:
        net = coding.load_coded(f)
        for layer in net.layers:
            for kind, alphabet, data in streams(layer):
                if kind == "pos":
                    for c, fn in coders.items():
                        sizes = [fn(entropy.gaps_encode(data, g), 1 << g) for g in range(1, 9)]
                        totals[c]["pos"] += min(s for s in sizes if s is not None)
                    totals["entropy"]["pos"] += min(_entropy_bytes(entropy.gaps_encode(data, g), 1 << g)
                                                    for g in range(1, 9))
                else:
                    for c, fn in coders.items():
                        s = fn(data, alphabet)
                        totals[c]["symbols"] += s if s is not None else len(entropy.CODECS["fixed"][0](data, alphabet))
                    totals["entropy"]["symbols"] += _entropy_bytes(data, alphabet)
    return {"files": len(files), "totals": totals}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = measure(args.folder)
    print(f"{res['files']} coded files; stream bytes summed over all their layers")
    print("| coder | positions | weight codes | total |")
    print("| --- | ---: | ---: | ---: |")
    for c, t in sorted(res["totals"].items(), key=lambda kv: kv[1]["pos"] + kv[1]["symbols"]):
        print(f"| {c} | {t['pos']:,.0f} | {t['symbols']:,.0f} | {t['pos'] + t['symbols']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
