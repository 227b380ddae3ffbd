"""Loads the compiled extension ``aecomp._C`` once and remembers why it failed, if it did."""
from __future__ import annotations

from typing import Optional, Tuple

_C = None
_ERROR: Optional[str] = None
_TRIED = False


def load() -> Tuple[Optional[object], Optional[str]]:
    """Return ``(module, None)`` or ``(None, reason)``."""
    global _C, _ERROR, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            import torch  # noqa: F401  (the extension links against libtorch)

            from . import _C as mod

            _C = mod
        except ImportError as exc:
            _ERROR = (
                f"the C++ extension aecomp._C is not built ({exc}); build it with "
                "`pip install --no-build-isolation -e .` (needs a C++ compiler)"
            )
    return _C, _ERROR


def build_info() -> dict:
    mod, err = load()
    if mod is None:
        return {"built": False, "error": err, "cuda": False, "cuda_archs": ""}
    info = dict(mod.build_info())
    info["built"] = True
    return info
