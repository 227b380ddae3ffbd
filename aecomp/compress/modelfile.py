"""What every aecomp model file carries besides its weights, and the one door that reads any of them.

Three formats; one module and one reader each:

==================  ===========  ===================================================================
format              module       holds
==================  ===========  ===================================================================
``aecomp-packed``   ``storage``  safetensors: a classifier chain (CompressedNet / FusedMLP), float32
                                 or int8 weights, dense / CSR / bitmask (``storage.read_packed``)
``aecomp-tensors``  ``storage``  safetensors: the float32 tensors of another model (an autoencoder's
                                 state_dict, the PCA baseline's buffers) (``storage.read_tensors``)
``aecomp-coded``    ``coding``   ``.aecc``: shared-weight and int8 layers, entropy-coded
                                 (``coding.read_coded``)
==================  ===========  ===================================================================

Version 2 of every format carries, besides the weights (:class:`FileMeta`):

* **format name and version**;
* **a checksum** the reader verifies before it uses anything: CRC-32 (``zlib.crc32``) -- of every
  byte before it in a ``.aecc`` file; in a safetensors file, of the aecomp header text and of every
  tensor's name, dtype, shape and bytes in name order (stored in the metadata key
  ``aecomp_crc32``), so any changed bit of what the file means is caught (a bit flipped in
  safetensors' own JSON either breaks its parse or changes a name, dtype, shape or offset);
* **the input scaling** ``x' = (x - shift) / scale`` that ``aecomp.data`` fitted on the training
  split (:class:`aecomp.data.Preprocessing`: ``kind`` global / minmax / standard / none, ``shift``
  and ``scale`` one value or one per feature). ``None`` means the writer was not told: the model
  then takes its inputs exactly as it was trained on them;
* **the label map**: ``labels[i]`` is the original label of class ``i`` (``aecomp.data`` maps sparse
  labels such as 0, 100, ..., 900 to 0..k-1); ``None`` when the classes are the labels 0..k-1.

Deployed forms apply both: ``aecomp.compress.packed.load_packed_model(f)(x)`` and the ONNX files of
``aecomp export`` take *raw* inputs (the values the data file holds: uint8 or float pixels, table
values), scale them with the file's own scaling, and ``predict`` gives the original labels.

Files of version 1 (written before this layout) still load, with a :class:`LegacyFormatWarning`
naming their version: they hold no checksum, scaling or label map (so integer inputs are refused:
there is no scaling to turn them into what the model was trained on). A version this aecomp does
not know is refused with one line naming it. Every reader raises a :class:`ModelFileError`
subclass (``storage.StorageError``, ``coding.CodedFileError``) whose message is one line naming
the file and the format it detected.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..data import Preprocessing

__all__ = [
    "FileMeta",
    "LegacyFormatWarning",
    "CodedFileError",
    "ModelFileError",
    "StorageError",
    "as_labels",
    "as_scaling",
    "chain_activations",
    "prepare_input",
    "read_model",
    "scaling_from_header",
    "scaling_header",
    "sniff",
]

PathLike = Union[str, "os.PathLike[str]"]
SCALING_KINDS = ("global", "minmax", "standard", "none")
CODED_MAGIC = b"AECC"  # the first bytes of an aecomp-coded (.aecc) file (coding.MAGIC)


class ModelFileError(ValueError):
    """A model file that cannot be used: unreadable, damaged, of an unknown version, or not ours."""


class StorageError(ModelFileError):
    """A safetensors model file (aecomp-packed / aecomp-tensors) that cannot be used."""


class CodedFileError(ModelFileError):
    """An aecomp-coded (``.aecc``) file that cannot be used: truncated, corrupted, or not ours."""


class LegacyFormatWarning(UserWarning):
    """A model file of an older format version: it loads, but carries no checksum, scaling or labels."""


@dataclass(frozen=True)
class FileMeta:
    """What a model file says about itself besides its weights (see the module docstring)."""

    format: str
    version: int
    scaling: Optional[Preprocessing] = None
    labels: Optional[Tuple[int, ...]] = None

    @property
    def name(self) -> str:
        return f"{self.format} version {self.version}"


# ---------------------------------------------------------------------- scaling and labels
def as_scaling(obj: Any, where: str = "scaling") -> Optional[Preprocessing]:
    """A :class:`Preprocessing` from itself, its ``to_dict()`` form, or None."""
    if obj is None or isinstance(obj, Preprocessing):
        p = obj
    elif isinstance(obj, dict):
        try:
            p = Preprocessing.from_dict(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not an input scaling ({type(exc).__name__}: {exc})") from None
    else:
        raise TypeError(f"{where}: expected an aecomp.data.Preprocessing, its to_dict() or None, got "
                        f"{type(obj).__name__}")
    if p is not None:
        if p.kind not in SCALING_KINDS:
            raise ValueError(f"{where}: kind {p.kind!r} is not one of {', '.join(SCALING_KINDS)}")
        if p.shift.shape != p.scale.shape or p.shift.dim() > 1:
            raise ValueError(f"{where}: shift {list(p.shift.shape)} and scale {list(p.scale.shape)} must be one value "
                             f"each or one per feature")
        if not (bool(torch.isfinite(p.shift).all()) and bool(torch.isfinite(p.scale).all())
                and bool((p.scale != 0).all())):
            raise ValueError(f"{where}: shift and scale must be finite and scale nonzero")
    return p


def as_labels(obj: Any, where: str = "labels") -> Optional[Tuple[int, ...]]:
    """The label map as a tuple of distinct ints (None for None or the identity 0..k-1)."""
    if obj is None:
        return None
    try:
        labels = tuple(int(v) for v in (obj.tolist() if hasattr(obj, "tolist") else obj))
        exact = all(float(a) == float(b) for a, b in zip(labels, obj.tolist() if hasattr(obj, "tolist") else obj))
    except (TypeError, ValueError):
        raise TypeError(f"{where}: expected a sequence of integer labels, got {type(obj).__name__}") from None
    if not exact or len(set(labels)) != len(labels):
        raise ValueError(f"{where}: the label map must hold distinct integers, got {list(labels)[:8]}")
    if labels == tuple(range(len(labels))):
        return None
    return labels


def scaling_header(p: Optional[Preprocessing]) -> Tuple[Optional[Dict[str, Any]], Dict[str, torch.Tensor]]:
    """``(JSON part, per-feature arrays)`` of a scaling: one value each goes into the JSON
    (``{"kind", "shift", "scale"}``; a float32 survives JSON exactly), per-feature ``shift`` and
    ``scale`` are float32 arrays beside it (``{"kind", "features": n}``)."""
    if p is None:
        return None, {}
    if p.shift.dim() == 0:
        return {"kind": p.kind, "shift": float(p.shift), "scale": float(p.scale)}, {}
    n = int(p.shift.numel())
    return ({"kind": p.kind, "features": n},
            {"shift": p.shift.float().contiguous(), "scale": p.scale.float().contiguous()})


def scaling_from_header(d: Any, arrays: Dict[str, torch.Tensor], where: str) -> Optional[Preprocessing]:
    """Inverse of :func:`scaling_header`; ``ModelFileError`` for anything inconsistent."""
    if d is None:
        return None
    try:
        kind = d["kind"]
        if "features" in d:
            shift, scale = arrays["shift"].float(), arrays["scale"].float()
            if shift.shape != (int(d["features"]),) or scale.shape != shift.shape:
                raise ValueError(f"per-feature arrays of shape {list(shift.shape)} / {list(scale.shape)}, "
                                 f"expected [{d['features']}]")
        else:
            shift = torch.tensor(float(d["shift"]), dtype=torch.float32)
            scale = torch.tensor(float(d["scale"]), dtype=torch.float32)
        return as_scaling(Preprocessing(kind, shift, scale, unit=kind in ("global", "minmax")), "input scaling")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: the input scaling is unreadable ({type(exc).__name__}: {exc})") from None


def check_labels_fit(labels: Optional[Tuple[int, ...]], classes: int, where: str) -> None:
    if labels is not None and len(labels) != classes:
        raise ModelFileError(f"{where}: the label map names {len(labels)} labels but the model has {classes} classes")


def chain_activations(config: Dict[str, Any]) -> List[str]:
    """The activation of each linear layer of a classifier config (compressed or classifier)."""
    if config.get("type") == "compressed":
        return list(config["encoder"]["activations"]) + list(config["head"]["activations"])
    if config.get("type") == "classifier":
        return list(config["activations"])
    raise ValueError(f"a classifier config (type compressed or classifier) was expected, got type "
                     f"{config.get('type')!r}")


# ---------------------------------------------------------------------- raw inputs
def prepare_input(x: Any, scaling: Optional[Preprocessing], features: int, where: str) -> torch.Tensor:
    """Raw inputs ``[..., features]`` (any real dtype: uint8 / int pixels, float values) -> the float32
    values the model was trained on: ``(x - shift) / scale`` with the file's own scaling. Without a
    recorded scaling, float inputs pass as they are and integer ones are refused (one line)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{where}: x has complex dtype {x.dtype}; expected real numbers (pixels or features)")
    if x.dim() == 0 or x.shape[-1] != features:
        raise ValueError(f"{where}: x has shape {list(x.shape)}; expected [..., {features}] ({features} features "
                         f"per sample)")
    if scaling is None and not x.is_floating_point():
        raise TypeError(f"{where}: x has dtype {x.dtype}, but this model file records no input scaling (written "
                        f"before format 2, or without one), so integer inputs cannot be turned into what it was "
                        f"trained on; pass float32 inputs scaled as in training")
    # x itself when it is float32 already (what .to gives too, at ~0.8 us of dispatch a call)
    xf = x if x.dtype == torch.float32 else x.to(torch.float32)
    if scaling is None or scaling.kind == "none":
        return xf
    shift, scale = scaling.shift, scaling.scale
    if shift.device != xf.device:
        shift, scale = shift.to(xf.device), scale.to(xf.device)
    return (xf - shift) / scale


# ---------------------------------------------------------------------- reading any model file
def _safetensors_header_length(head: bytes) -> Optional[int]:
    """The header length of a safetensors file starting with ``head`` (8 bytes little-endian, then
    ``{``), or None when it does not look like one."""
    if len(head) < 9:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return n if head[8:9] == b"{" and n < (1 << 32) else None


def sniff(path: PathLike) -> Tuple[str, bytes]:
    """``(format, the file's bytes)``: ``"aecomp-coded"`` (``.aecc`` magic) or ``"safetensors"``.
    Anything else raises one line saying what the file starts with and which format it was taken
    for: by its name (``.aecc`` -> :class:`CodedFileError`, ``.safetensors`` -> :class:`StorageError`)
    or by a magic that differs from ``AECC`` in one byte (a damaged coded file)."""
    p = os.fspath(path)
    suffix = os.path.splitext(p)[1].lower()
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        cls = CodedFileError if suffix == ".aecc" else StorageError if suffix == ".safetensors" else ModelFileError
        raise cls(f"{p}: cannot read ({exc.strerror or exc})") from None
    if data[:4] == CODED_MAGIC:
        return "aecomp-coded", data
    if _safetensors_header_length(data[:9]) is not None:
        return "safetensors", data
    start = f"it starts with {data[:8]!r}" if data else "it is empty"
    near_magic = len(data) >= 4 and sum(a == b for a, b in zip(data[:4], CODED_MAGIC)) == 3
    if suffix == ".aecc" or near_magic:
        raise CodedFileError(f"{p}: not an aecomp coded model file as its {'magic' if near_magic else 'name'} "
                             f"suggests: the header is damaged ({start}; an aecomp-coded file starts with "
                             f"{CODED_MAGIC!r}); not safetensors either")
    if suffix == ".safetensors":
        raise StorageError(f"{p}: not a readable safetensors file ({start}, not an 8-byte header length and '{{'); "
                           f"not an aecomp-coded file either (magic {CODED_MAGIC!r})")
    raise ModelFileError(f"{p}: not a model file aecomp reads ({start}; an aecomp-coded file starts with "
                         f"{CODED_MAGIC!r}, a safetensors file with its 8-byte header length and '{{')")


def read_model(path: PathLike):
    """The model file at ``path``, read by its format's one reader: a ``storage.StoredModel``
    (aecomp-packed), ``storage.StoredTensors`` (aecomp-tensors) or ``coding.CodedModel``. Each has
    ``.meta`` (:class:`FileMeta`), ``.path`` and ``.file_bytes``; the classifier ones also
    ``.config``, ``.to_model()`` and ``.packed_net()``."""
    from . import coding, storage

    kind, data = sniff(path)
    if kind == "aecomp-coded":
        return coding.read_coded_bytes(data, os.fspath(path))
    return storage.read_bytes(data, os.fspath(path))


def warn_legacy(where: str, name: str) -> None:
    warnings.warn(f"{where}: {name} (written before format version 2): no checksum to verify, no input scaling and "
                  f"no label map; give it inputs scaled as in training", LegacyFormatWarning, stacklevel=3)


def labels_list(labels: Optional[Sequence[int]]) -> Optional[List[int]]:
    return None if labels is None else [int(v) for v in labels]
