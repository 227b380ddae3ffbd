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

// cudaSuccess when this build has a kernel image (SASS for the GPU, or PTX the driver can
// compile for it) for the current device; else the error a launch would give
// (cudaErrorNoKernelImageForDevice, cudaErrorInvalidDeviceFunction, cudaErrorUnsupportedPtxVersion...).
// Cheap (no launch); the runtime's last error is left clear.
cudaError_t kernel_image_status();

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

// ---------------------------------------------------------------- mlp (layer chains, mlp.cu)
// A chain of L layers, h_0 = x [M, widths[0]], y_i = h_{i+1} = act_i(h_i W_i^T + b_i) with
// W_i [widths[i + 1], widths[i]] contiguous, b_i [widths[i + 1]] or null, y_i contiguous.

// The fused chain kernel keeps a block's rows of every intermediate activation on chip: it
// takes chains of at most CHAIN_MAX_LAYERS layers whose widths are all >= 1 and whose
// intermediate widths (widths[1 .. L-1]) are at most CHAIN_MAX_WIDTH; the input and output
// widths are not limited (x is streamed, a wide last layer takes several column passes).
constexpr int CHAIN_MAX_LAYERS = 16;
constexpr int CHAIN_MAX_WIDTH = 256;
bool mlp_chain_fusable(int L, const int* widths);

// Runs the whole chain in one launch and writes every y_i to out[i]. x has any strides; widths
// has L + 1 entries. cudaErrorInvalidValue when !mlp_chain_fusable (use linear_act_forward
// per layer then). bf16/fp16 on sm_80+ with every width a multiple of 8, x's rows contiguous
// and 16-byte aligned, and w / out 16-byte aligned run on the tensor-core chain kernel; the
// rest (float32 included, and AECOMP_CUDA_GEMM=simt) on the SIMT chain kernel (fp32 FMAs).
cudaError_t mlp_chain_forward(DType dt, int M, int L, const int* widths, Mat x, const void* const* w,
                              const void* const* bias, const int* acts, void* const* out, cudaStream_t stream);

// Bytes of fp32 workspace mlp_loss_entry needs when db is wanted.
size_t mlp_loss_entry_workspace(int M, int N);

// The fused loss entry of mlp_mse_backward: with y, target [M, N] contiguous,
//   gz[m, n] = scale * g_mn * (y - target)[m, n] * act'(y[m, n])   (g_mn = grad[0] when
//   grad_is_scalar, else grad[m, n], contiguous [M, N]),   db[n] = sum_m gz[m, n] (db may be
// null). gz is contiguous [M, N]. Deterministic (fixed-order sums, no atomics).
cudaError_t mlp_loss_entry(DType dt, int M, int N, const void* y, const void* target, const void* grad,
                           bool grad_is_scalar, float scale, int act, void* gz, void* db, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);

}  // namespace aecomp_cuda
