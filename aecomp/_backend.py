"""Backend registry and selection.

A backend is a set of implementations of the ops in ``aecomp.ops`` (``linear_act``,
``mse_loss``, ``mlp``) for some devices. Selection, first match wins:

1. the ``backend=`` argument of the op call;
2. the innermost ``aecomp.use_backend(name)`` context;
3. the ``AECOMP_BACKEND`` environment variable;
4. automatic: CUDA tensor -> ``cuda`` if built, else ``triton``, else ``reference``;
   CPU tensor -> ``cpu`` if built, else ``reference``. Automatic selection also skips a
   backend that does not take the tensor's dtype (the C++ CPU kernels take float32 and
   float64; bfloat16 on the CPU goes to ``reference``).

A backend named in 1-3 is never silently replaced: if it is not available, or cannot run on
the tensors' device, the call raises :class:`BackendUnavailableError` saying how to get it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "AECOMP_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass
class Backend:
    name: str
    # () -> (available, reason). Called lazily and cached: probing may import triton.
    probe: Callable[[], Tuple[bool, str]]
    # device types the backend runs on, e.g. {"cpu"} or {"cuda"}; a callable lets the
    # triton backend add "cpu" only under TRITON_INTERPRET=1.
    devices: Callable[[], frozenset]
    dtypes: Dict[str, frozenset] = field(default_factory=dict)  # device type -> dtypes
    ops: Dict[str, Callable] = field(default_factory=dict)  # op name -> implementation
    how_to_get: str = ""
    describe_mlp: Optional[Callable[[], str]] = None  # how a chain runs here, for `aecomp info`
    # Eager-only entry points with the same signatures as `ops` (e.g. pybind11 functions that
    # skip a Python frame); never used under torch.compile, which needs traceable `ops`.
    fast_ops: Dict[str, Callable] = field(default_factory=dict)
    _status: Optional[Tuple[bool, str]] = None

    def status(self) -> Tuple[bool, str]:
        if self._status is None:
            try:
                self._status = self.probe()
            except Exception as exc:  # a probe must never take the library down
                self._status = (False, f"probe failed: {type(exc).__name__}: {exc}")
        return self._status

    def takes(self, device_type: str, dtype: torch.dtype) -> bool:
        if device_type not in self.devices():
            return False
        allowed = self.dtypes.get(device_type)
        return allowed is None or dtype in allowed


_REGISTRY: Dict[str, Backend] = {}
# The use_backend() state. A plain module-level dict, not a ContextVar, because
# torch.compile (dynamo) can read (and guard on) a global but not a ContextVar; the price is
# that use_backend() applies to the whole process while its block runs, not per thread.
_STATE: Dict[str, Optional[str]] = {"backend": None}
# automatic order per device type
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def register_backend(backend: Backend) -> None:
    if backend.name not in BACKENDS:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKENDS}")
    _REGISTRY[backend.name] = backend
    _FAST.clear()


def get_backend(name: str) -> Backend:
    _load_backends()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}") from None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def available_backends() -> Dict[str, Tuple[bool, str]]:
    """Map each backend name to ``(available, reason)``; the reason says why one is missing."""
    _load_backends()
    out = {}
    for name in BACKENDS:
        b = _REGISTRY.get(name)
        out[name] = b.status() if b is not None else (False, "not registered (import error)")
    return out


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Run the enclosed ops on backend ``name`` (``None`` restores automatic selection)."""
    if name is not None:
        _check_name(name)
    previous = _STATE["backend"]
    _STATE["backend"] = name
    try:
        yield
    finally:
        _STATE["backend"] = previous


def requested_backend(explicit: Optional[str] = None) -> Optional[str]:
    """The backend asked for by argument, context or environment, or None for automatic."""
    if explicit is not None:
        return explicit
    ctx = _STATE["backend"]
    if ctx is not None:
        return ctx
    env = os.environ.get(ENV_VAR)
    return env or None


def _pick(op: str, dev: str, dtype: torch.dtype, name: Optional[str], missing_ok: bool) -> Optional[Backend]:
    """The backend that runs ``op`` (None: it must be composed, with ``missing_ok``)."""
    if name is not None:
        b = get_backend(_check_name(name))
        ok, reason = b.status()
        if not ok:
            raise BackendUnavailableError(
                f"aecomp.ops.{op}: backend {name!r} is not available: {reason}. {b.how_to_get}".rstrip()
            )
        if dev not in b.devices():
            raise BackendUnavailableError(
                f"aecomp.ops.{op}: backend {name!r} does not run on {dev} tensors "
                f"(it runs on: {', '.join(sorted(b.devices())) or 'nothing here'}). {b.how_to_get}".rstrip()
            )
        if op not in b.ops:
            if missing_ok:
                return None
            raise BackendUnavailableError(f"aecomp.ops.{op}: backend {name!r} does not implement {op}")
        return b
    _load_backends()
    for cand in _AUTO_ORDER.get(dev, ("reference",)):
        b = _REGISTRY.get(cand)
        if b is None or not b.status()[0] or not b.takes(dev, dtype):
            continue
        if op in b.ops:
            return b
        if missing_ok:
            return None
    return _REGISTRY["reference"]


def resolve(op: str, device: torch.device, dtype: torch.dtype, explicit: Optional[str] = None,
            missing_ok: bool = False) -> Optional[Callable]:
    """Return the implementation of ``op`` for tensors on ``device`` with ``dtype``.

    This is the path torch.compile traces. With ``missing_ok``, a chosen backend that does
    not implement ``op`` gives ``None`` (the caller composes ``op`` from simpler ops).
    """
    b = _pick(op, device.type, dtype, requested_backend(explicit), missing_ok)
    return None if b is None else b.ops.get(op)


# Eager fast path. Resolution is cached per (op, requested backend, device type, dtype); the
# environment variable is still read on every call, from os.environ's own dict (os.environ.get
# re-encodes the key each time: ~2 us, more than a small layer's whole forward).
_FAST: Dict[tuple, Optional[Callable]] = {}
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
except AttributeError:  # not CPython's os._Environ
    _ENV_DATA = None


def _env_backend() -> Optional[str]:
    if _ENV_DATA is None:
        return os.environ.get(ENV_VAR) or None
    raw = _ENV_DATA.get(_ENV_KEY)
    return os.environ.decodevalue(raw) or None if raw else None  # type: ignore[attr-defined]


def resolve_fast(op: str, t: torch.Tensor, explicit: Optional[str] = None, missing_ok: bool = False):
    """``resolve`` for eager calls: cached, and may return a backend's ``fast_ops`` entry."""
    name = explicit
    if name is None:
        name = _STATE["backend"]
        if name is None:
            name = _env_backend()
    dev = "cuda" if t.is_cuda else ("cpu" if t.is_cpu else t.device.type)
    key = (op, name, dev, t.dtype)
    try:
        return _FAST[key]
    except KeyError:
        pass
    b = _pick(op, dev, t.dtype, name, missing_ok)
    impl = None if b is None else b.fast_ops.get(op, b.ops.get(op))
    _FAST[key] = impl
    return impl


def auto_backend_name(device_type: str, dtype: torch.dtype = torch.float32, op: str = "linear_act") -> str:
    """Name of the backend automatic selection picks for ``device_type`` and ``dtype``."""
    _load_backends()
    for cand in _AUTO_ORDER.get(device_type, ("reference",)):
        b = _REGISTRY.get(cand)
        if b is not None and op in b.ops and b.status()[0] and b.takes(device_type, dtype):
            return cand
    return "reference"


# Registrations that import something heavy (triton) run on first use, not at import.
# ``aecomp.ops`` registers its backends (and adds these) when it is imported; this module
# never imports ``aecomp.ops``: imports go one way, ops -> _backend.
_LAZY: List[Callable[[], None]] = []


def add_lazy_registration(fn: Callable[[], None]) -> None:
    """Run ``fn`` (which calls register_backend) the first time a backend is looked up."""
    _LAZY.append(fn)


def _load_backends() -> None:
    while _LAZY:
        _LAZY.pop(0)()
