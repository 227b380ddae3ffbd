// The torch glue of the layer chains (ops_cuda_mlp.cpp), built against a CPU-only torch and run
// on CPU tensors, as glue_on_cpu.cpp does for ops_cuda.cpp: its TORCH_LIBRARY_IMPL(aecomp,
// CUDA, ...) registers for the CPU key here, and the launchers (mlp.cu for the fused chain and
// the loss entry, linear_act.cu for the per-layer fallback and the backward GEMMs) run on the
// CPU emulator. ops_cuda.cpp comes along (its mse_loss is what mlp_mse_loss's autograd calls,
// and the CPU kernels take no bf16/fp16). Built by tests/test_cuda_mlp.py; checks in
// glue_mlp_on_cpu_checks.py.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "../../aecomp.h"
#include "../aecomp_cuda.h"

#define AECOMP_EMULATE 1
#include "../linear_act.cu"
#include "../mlp.cu"
#include "../mse.cu"
#include "../device_info.cu"

extern "C" const char* cudaGetErrorString(cudaError_t) { return "emulated launch error"; }

#define CUDA CPU
#include "../ops_cuda.cpp"
#include "../ops_cuda_mlp.cpp"
#undef CUDA
