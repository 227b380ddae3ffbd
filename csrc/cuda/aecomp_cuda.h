// Host entry points of the CUDA kernels: raw pointers, sizes, element strides and a stream.
//
// Torch-free and CUDA-runtime-only, so it is included both by the kernel files (compiled by
// nvcc) and by the torch glue ops_cuda.cpp (compiled by the host compiler). The glue validates
// the inputs and allocates every output and workspace; these functions pick an implementation
// from the dtype, the operands' alignment and the GPU, launch, and return the first launch
// error (cudaSuccess otherwise). They never synchronize.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace aecomp_cuda {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// A 2-D operand: element (r, c) is at ptr + r * s0 + c * s1 (strides in elements, >= 0).
struct Mat {
  const void* ptr;
  int64_t s0;
  int64_t s1;
};

// ---------------------------------------------------------------- linear_act
// act = 0 none, 1 relu, 2 sigmoid (aecomp::Act). All sizes must be < 2^31.
//
// Implementation choice (made here, next to the kernels whose needs it encodes): bf16/fp16 on
// sm_80+ with every operand "row aligned" (s1 == 1, s0 % 8 == 0, ptr % 16 == 0) run on the
// tensor-core kernel; anything else (float32, strided or misaligned rows, older GPUs) runs on
// the SIMT kernel. Setting the environment variable AECOMP_CUDA_GEMM=simt forces the SIMT
// kernel (the tests use it to check one path against the other).

// y[M, N] (contiguous, row stride N) = act(x[M, K] @ w[N, K]^T + bias[N]); bias may be null.
cudaError_t linear_act_forward(DType dt, int M, int N, int K, Mat x, Mat w, const void* bias, int act, void* y,
                               cudaStream_t stream);

// dx[M, K] (contiguous) = (g * act'(y)) @ w, with g, y [M, N] and w [N, K]; y unused for act 0.
cudaError_t linear_act_dgrad(DType dt, int M, int N, int K, Mat g, Mat y, Mat w, int act, void* dx,
                             cudaStream_t stream);

// Bytes of fp32 workspace linear_act_wgrad needs for these arguments (0: none; pass nullptr).
size_t linear_act_wgrad_workspace(DType dt, int M, int N, int K, Mat g, Mat y, Mat x, int act, bool need_w,
                                  bool need_b);

// dw[N, K] (contiguous) = (g * act'(y))^T @ x and db[N] = sum_m g * act'(y); dw and/or db may be
// null (not needed). With M == 0 both are written as zeros. Deterministic (no atomics).
cudaError_t linear_act_wgrad(DType dt, int M, int N, int K, Mat g, Mat y, Mat x, int act, void* dw, void* db,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---------------------------------------------------------------- mse_loss
// reduction = 0 none, 1 mean, 2 sum (aecomp::Reduction). a, b (and out for none) are
// contiguous arrays of n elements.

// Bytes of fp32 workspace mse_forward needs for a mean/sum of n elements.
size_t mse_workspace(int64_t n);

// none: out[i] = (a[i] - b[i])^2; mean/sum: out[0] = sum_i (a[i] - b[i])^2 (/ n for mean),
// a fixed-order two-pass reduction. n must be > 0 for mean/sum.
cudaError_t mse_forward(DType dt, int64_t n, const void* a, const void* b, int reduction, void* out,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream);

// grad_a[i] = s (a[i] - b[i]) g_i, grad_b = -grad_a, with s = 2/n for mean and 2 otherwise and
// g_i = grad[0] when grad_is_scalar (mean/sum) else grad[i]. grad_a / grad_b may be null.
cudaError_t mse_backward(DType dt, int64_t n, const void* grad, bool grad_is_scalar, const void* a, const void* b,
                         int reduction, void* grad_a, void* grad_b, cudaStream_t stream);

}  // namespace aecomp_cuda
