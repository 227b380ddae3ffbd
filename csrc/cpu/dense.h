// Building blocks of the CPU linear_act and mlp kernels, on 2-D row-major tensors.
#pragma once

#include <ATen/ATen.h>

#include "../aecomp.h"

namespace aecomp {
namespace cpu {

// y = act(x @ w^T + b): ATen's GEMM, then ONE in-place pass for bias + activation.
// `b` may be undefined. Returns a contiguous [M, N] tensor.
at::Tensor dense_forward(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& b, Act act);

// gz = g * act'(y) in ONE pass, reducing the bias gradient into *gb in the same pass (when gb
// is non-null). Writes into g itself when `in_place` (g must then be a buffer we own).
at::Tensor act_grad_pass(const at::Tensor& g, const at::Tensor& y, Act act, at::Tensor* gb, bool in_place);

// The fused loss entry: gz = (scale * g) (y - t) act'(y), the bias gradient in the same pass.
// g is a one-element tensor (mean/sum) or has y's shape (reduction none).
at::Tensor loss_act_grad_pass(const at::Tensor& y, const at::Tensor& t, const at::Tensor& g, double scale, Act act,
                              at::Tensor* gb);

// ---- the microkernel path (train_step.cpp; kernels in dense_gemm.h / microkernel.h), float32 only.
// Which GEMM a float32 layer uses: "auto" (the microkernels below the measured crossover,
// ATen's sgemm above), "mk" (always the microkernels), "aten" (never). Process-wide.
enum class GemmPath : int { Auto = 0, Microkernel = 1, Aten = 2 };
void set_gemm_path(GemmPath p);
GemmPath gemm_path();
// True when a float32 GEMM with M rows, N columns and reduction K should use the microkernels.
bool use_microkernel(int64_t M, int64_t N, int64_t K);
// act(x @ w^T + b) (b may be undefined): float32 [M, K] x [N, K] -> [M, N].
at::Tensor mk_forward(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& b, Act act);
// (gz @ w) * act_below'(y_below), or plain gz @ w when y_below is undefined: [M, N_out] x [N_out, K_in].
at::Tensor mk_dgrad(const at::Tensor& gz, const at::Tensor& w, const at::Tensor& y_below, Act act_below);
// gz^T @ h ([N_out, K_in]) and, when gb is non-null, the column sums of gz (the bias gradient).
at::Tensor mk_wgrad(const at::Tensor& gz, const at::Tensor& h, at::Tensor* gb);

}  // namespace cpu
}  // namespace aecomp
