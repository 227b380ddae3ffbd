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

}  // namespace cpu
}  // namespace aecomp
