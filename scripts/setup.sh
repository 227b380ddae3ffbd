#!/usr/bin/env bash
# Sets up ./.venv with aecomp and its C++ extension, on a fresh machine with nothing installed.
#
# torch: a CPU machine gets the pinned CPU build (torch==2.13.0; a looser range would pull
# a multi-GB CUDA build). A machine whose python already has torch (a GPU machine) keeps
# it: create the venv with --system-site-packages there (AECOMP_SYSTEM_SITE=1).
# The extension is built without build isolation, against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv_flags=()
[ "${AECOMP_SYSTEM_SITE:-0}" = 1 ] && venv_flags+=(--system-site-packages)
[ -x .venv/bin/python ] || "$PYTHON" -m venv "${venv_flags[@]}" .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip setuptools wheel
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "torch==2.13.0"
fi
pip install pybind11 ninja numpy
MAX_JOBS=${MAX_JOBS:-2} pip install --no-build-isolation -e ".[test,export,fl]"
.venv/bin/python -c "import aecomp, aecomp._C; print('aecomp', aecomp.__version__, 'installed with its C++ extension')"
# The GPU machine runs triton 3.6 (this venv has a newer one): .venv-triton36 holds triton 3.6
# only and reuses .venv's packages (torch, aecomp) through a .pth, so tests/test_triton_aot.py
# also compiles every kernel configuration under the device's version. AECOMP_NO_TRITON36=1 skips.
if [ "${AECOMP_NO_TRITON36:-0}" != 1 ]; then
  if [ ! -x .venv-triton36/bin/python ]; then
    "$PYTHON" -m venv .venv-triton36
    .venv-triton36/bin/python -m pip --disable-pip-version-check -q install "triton==3.6.0"
  fi
  # (re)pointed every time: a copied checkout must compile its own kernels, not the original's
  main_site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  t36_site=$(.venv-triton36/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "import site; site.addsitedir('$main_site')" > "$t36_site/zz_aecomp_main_venv.pth"
  .venv-triton36/bin/python -c "import triton, torch, aecomp.kernels; print('triton', triton.__version__, 'for the AOT checks')"
fi
