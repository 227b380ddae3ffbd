"""setup.py's build-configuration logic (when to build CUDA, for which architectures)."""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_mod():
    spec = importlib.util.spec_from_file_location("aecomp_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # main() only runs under __main__
    return mod


CU = ["csrc/cuda/linear_act.cu"]


def test_cpu_only_when_torch_has_no_cuda(setup_mod):
    plan = setup_mod.plan_build({}, "/usr/local/cuda/bin/nvcc", None, CU)
    assert plan["cuda"] is False and "CPU-only build" in plan["reason"]


def test_cpu_only_without_nvcc(setup_mod):
    plan = setup_mod.plan_build({}, None, "13.0", CU)
    assert plan["cuda"] is False and "nvcc not found" in plan["reason"]


def test_cpu_only_without_sources(setup_mod):
    plan = setup_mod.plan_build({}, "/x/nvcc", "13.0", [])
    assert plan["cuda"] is False and "no CUDA sources" in plan["reason"]


def test_cuda_build_default_arch_is_local_gpu_else_hopper(setup_mod):
    plan = setup_mod.plan_build({}, "/x/nvcc", "13.0", CU)
    assert plan["cuda"] and plan["archs"] == ["9.0a"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in plan["nvcc_flags"]
    plan = setup_mod.plan_build({}, "/x/nvcc", "13.0", CU, local_capability=(8, 0))
    assert plan["archs"] == ["8.0"] and "-gencode=arch=compute_80,code=sm_80" in plan["nvcc_flags"]


def test_arch_list_from_environment(setup_mod):
    plan = setup_mod.plan_build({"TORCH_CUDA_ARCH_LIST": "8.0;9.0a 9.0+PTX"}, "/x/nvcc", "13.0", CU)
    assert plan["archs"] == ["8.0", "9.0a", "9.0+PTX"]
    flags = plan["nvcc_flags"]
    assert "-gencode=arch=compute_80,code=sm_80" in flags
    assert "-gencode=arch=compute_90a,code=sm_90a" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags


def test_bad_arch_list_is_a_clear_error(setup_mod):
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST.*'hopper'"):
        setup_mod.plan_build({"TORCH_CUDA_ARCH_LIST": "hopper"}, "/x/nvcc", "13.0", CU)


def test_switches(setup_mod):
    assert setup_mod.plan_build({"AECOMP_NO_CUDA": "1"}, "/x/nvcc", "13.0", CU)["cuda"] is False
    with pytest.raises(RuntimeError, match="AECOMP_FORCE_CUDA"):
        setup_mod.plan_build({"AECOMP_FORCE_CUDA": "1"}, None, None, CU)


def test_find_nvcc_prefers_cuda_home(setup_mod, tmp_path):
    (tmp_path / "bin").mkdir()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    assert setup_mod.find_nvcc({"CUDA_HOME": str(tmp_path), "PATH": ""}) == str(nvcc)


def test_portable_ptx_is_embedded_with_the_default_and_user_lists(setup_mod):
    # sm_90a SASS only would give "no kernel image" on every other GPU: compute_80 PTX goes along
    plan = setup_mod.plan_build({}, "/x/nvcc", "13.0", CU)
    assert plan["ptx"] == "8.0"
    assert plan["nvcc_flags"][-2:] == ["-gencode=arch=compute_90a,code=sm_90a",
                                        "-gencode=arch=compute_80,code=compute_80"]
    plan = setup_mod.plan_build({"TORCH_CUDA_ARCH_LIST": "8.6"}, "/x/nvcc", "13.0", CU)
    assert plan["ptx"] == "8.0" and "-gencode=arch=compute_80,code=compute_80" in plan["nvcc_flags"]
    assert "-gencode=arch=compute_86,code=sm_86" in plan["nvcc_flags"]
    # the user's own +PTX entry replaces it
    plan = setup_mod.plan_build({"TORCH_CUDA_ARCH_LIST": "9.0a;8.0+PTX"}, "/x/nvcc", "13.0", CU)
    assert plan["ptx"] is None
    assert [f for f in plan["nvcc_flags"] if "code=compute_" in f] == ["-gencode=arch=compute_80,code=compute_80"]
    assert setup_mod.plan_build({}, None, "13.0", CU)["ptx"] is None  # no CUDA build, no PTX
