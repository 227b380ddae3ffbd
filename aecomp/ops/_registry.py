"""Registers every backend with aecomp._backend; imported by ``aecomp.ops`` (so by ``import aecomp``).

The C++ ops (``torch.ops.aecomp.*``) are registered with torch here, at import: loading
``aecomp._C`` runs its TORCH_LIBRARY block, then their fake (compile) and ONNX translations
are added, so direct calls, ``opcheck``, ``torch.jit.load`` of a traced model and
``torch.onnx.export`` work right after ``import aecomp``. The triton backend is registered on
first use (importing triton takes a while).
"""
from __future__ import annotations

from .. import _ext
from .._backend import Backend, add_lazy_registration, register_backend
from . import _cpp, _reference

register_backend(
    Backend(
        name="reference",
        probe=lambda: (True, "plain PyTorch"),
        devices=lambda: frozenset({"cpu", "cuda", "mps", "xpu", "meta"}),
        ops={
            "linear_act": _reference.linear_act,
            "mse_loss": _reference.mse_loss,
            "mlp": _reference.mlp,
            "mlp_mse_loss": _reference.mlp_mse_loss,
        },
        describe_mlp=lambda: "one F.linear + activation per layer (plain PyTorch)",
    )
)

register_backend(_cpp.CPU)
register_backend(_cpp.CUDA)

if _ext.load()[0] is not None:
    from . import _fake, _onnx

    _fake.register()
    _onnx.register()


def _register_triton() -> None:
    try:
        from . import _triton
    except Exception as exc:  # triton missing or broken: say why in `aecomp info`
        reason = f"{type(exc).__name__}: {exc}"
        register_backend(
            Backend(
                name="triton",
                probe=lambda: (False, f"the triton backend could not be loaded ({reason}); `pip install triton`"),
                devices=lambda: frozenset(),
                how_to_get="Install triton (`pip install triton`, Linux only).",
            )
        )
    else:
        register_backend(_triton.BACKEND)


add_lazy_registration(_register_triton)
