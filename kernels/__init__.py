"""Triton kernels, one module per op (shipped as ``aecomp.kernels``).

* :mod:`.linear_act` -- fused ``act(x W^T + b)``: forward GEMM with a bias+activation
  epilogue, a dgrad kernel and a wgrad kernel (with the bias gradient) for the backward.
* :mod:`.mse` -- mean/sum/none of ``(a - b)^2`` in one pass, deterministic two-stage sum,
  fused backward.
* :mod:`.mlp` -- a whole chain of linear_act layers in one forward kernel (intermediates on
  chip) and one backward kernel, with the fused MSE loss entry.
* :mod:`._configs` -- the autotuning lists.

Kernels never check user input; the op layer (``aecomp.ops._triton``) does.

Compiled or interpreted: ``@triton.jit`` decides when a kernel is *defined* (and triton's own
``tl.cdiv``, ``tl.sum``, ... when triton is imported) whether it is compiled for a GPU or run
by Triton's CPU interpreter, from ``TRITON_INTERPRET``. So one process is one or the other:
each kernel module's ``INTERPRETED`` says which, and CPU tensors can run only in an
interpreted process (``TRITON_INTERPRET=1`` set before Python starts).
"""
