// The torch glue ops_cuda.cpp, built against a CPU-only torch and run on CPU tensors: its
// TORCH_LIBRARY_IMPL(aecomp, CUDA, ...) registers for the CPU key here, the launchers run the
// kernels on the CPU emulator (harness/emulator.h), and fake_cuda_torch/ stands in for the two
// CUDA headers of torch (current stream, device properties, device guard). Built together with
// csrc/ops.cpp (schemas and autograd) into a test extension by tests/test_cuda_ops.py, in a
// process that does not load aecomp._C, so the whole path torch.ops.aecomp.* -> autograd ->
// glue -> launchers -> kernels is checked without a GPU.
//
// The headers of ops_cuda.cpp come first (with the real torch ones), then the emulated kernels
// (whose emulator defines threadIdx & co. as macros), then the glue itself with the dispatch key
// token CUDA meaning CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "../../aecomp.h"
#include "../aecomp_cuda.h"

#define AECOMP_EMULATE 1
#include "../linear_act.cu"
#include "../mse.cu"
#include "../device_info.cu"

extern "C" const char* cudaGetErrorString(cudaError_t) { return "emulated launch error"; }

#define CUDA CPU
#include "../ops_cuda.cpp"
#undef CUDA
