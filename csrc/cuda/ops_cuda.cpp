// Torch glue of the CUDA kernels: the CUDA implementations of aecomp::linear_act,
// linear_act_backward, mse_loss and mse_loss_backward (schemas in csrc/ops.cpp; autograd is
// registered there for every device).
//
// Each function checks its inputs with the shared checks of aecomp.h, flattens leading batch
// dims, hands the kernels operands they can take, allocates outputs and workspaces with the
// caching allocator, and launches on the current stream. What the kernels compute, and which
// kernel runs for which operands, is in the .cu files (see aecomp_cuda.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../aecomp.h"
#include "aecomp_cuda.h"

namespace aecomp {
namespace {

using at::Tensor;

aecomp_cuda::DType kernel_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return aecomp_cuda::DType::BF16;
    case at::kHalf: return aecomp_cuda::DType::F16;
    default: return aecomp_cuda::DType::F32;  // the checks admit only float32, bfloat16, float16
  }
}

// A 2-D tensor as the kernels see it. The stride of a dimension of size 1 is never used to
// step, so it is normalized (torch may report anything there).
aecomp_cuda::Mat mat_of(const Tensor& t) {
  const int64_t s0 = t.size(0) <= 1 ? t.size(1) : t.stride(0);
  const int64_t s1 = t.size(1) <= 1 ? 1 : t.stride(1);
  return aecomp_cuda::Mat{t.data_ptr(), s0, s1};
}

// The tensor-core kernels read 16-byte row chunks (bf16/fp16 on sm_80+). A 16-bit operand whose
// rows could be aligned (width a multiple of 8) but are not (a strided, transposed or offset
// view) is copied once: the copy costs less than the SIMT kernel. Other operands go as they are.
Tensor for_tensor_cores(const Tensor& t) {
  if (t.scalar_type() == at::kFloat || t.numel() == 0 || t.size(1) % 8 != 0) return t;
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return t;
  const aecomp_cuda::Mat m = mat_of(t);
  if (m.s1 == 1 && m.s0 % 8 == 0 && reinterpret_cast<uintptr_t>(m.ptr) % 16 == 0) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

// Sizes are passed to the kernels as int (with room for a tile past the end); the output width
// also sets grid.y (at most 65535 tiles of 64).
constexpr int64_t kMaxRows = std::numeric_limits<int>::max() - 1024;
constexpr int64_t kMaxWidth = 65535LL * 64;
void check_sizes(const char* op, int64_t M, int64_t N, int64_t K, const Tensor& x, const Tensor& weight) {
  TORCH_CHECK_VALUE(M <= kMaxRows, op, ": ", M, " rows in x (shape ", shape_str(x),
                    ") exceed the CUDA kernels' limit of ", kMaxRows, "; split the batch");
  TORCH_CHECK_VALUE(N <= kMaxWidth && K <= kMaxWidth, op, ": weight of shape ", shape_str(weight),
                    " is wider than the CUDA kernels' limit of ", kMaxWidth, " features (x: ", shape_str(x), ")");
}

void check_launch(const char* op, cudaError_t err, const Tensor& a, const Tensor& b) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err), " (",
              shape_str(a), ", ", shape_str(b), ")");
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// ---------------------------------------------------------------- linear_act
Tensor linear_act_cuda(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                       c10::string_view activation) {
  static constexpr const char* op = "aecomp::linear_act";
  check_linear_act(op, x, weight, bias, /*gpu=*/true);
  const Act act = parse_activation(op, activation);
  const c10::cuda::CUDAGuard guard(x.device());

  const Tensor x2 = flatten_rows(x);
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  check_sizes(op, M, N, K, x, weight);
  Tensor y = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) {
    const Tensor xk = for_tensor_cores(x2);
    const Tensor wk = for_tensor_cores(weight);
    Tensor b;
    if (bias.has_value() && bias->defined()) b = bias->contiguous();
    const cudaError_t err = aecomp_cuda::linear_act_forward(
        kernel_dtype(x), static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), mat_of(xk), mat_of(wk),
        b.defined() ? b.data_ptr() : nullptr, static_cast<int>(act), y.data_ptr(), current_stream());
    check_launch(op, err, x, weight);
  }
  return y.view(out_shape(x, N));
}

std::tuple<Tensor, Tensor, Tensor> linear_act_backward_cuda(const Tensor& grad_y, const Tensor& x,
                                                            const Tensor& weight, const Tensor& y,
                                                            c10::string_view activation, bool need_x,
                                                            bool need_weight, bool need_bias) {
  static constexpr const char* op = "aecomp::linear_act_backward";
  const Act act = parse_activation(op, activation);
  check_linear_act_backward(op, grad_y, x, weight, y, /*gpu=*/true);
  const c10::cuda::CUDAGuard guard(x.device());

  const Tensor x2 = flatten_rows(x), g2 = flatten_rows(grad_y), y2 = flatten_rows(y);
  const int64_t M = x2.size(0), K = x2.size(1), N = weight.size(0);
  check_sizes(op, M, N, K, x, weight);
  const auto dt = kernel_dtype(x);
  const int iact = static_cast<int>(act);
  const bool gated = act != Act::None;
  // A gradient that is not needed comes back as an empty [0] tensor (a distinct one each).
  Tensor gx = need_x ? at::empty({M, K}, x.options()) : at::empty({0}, x.options());
  Tensor gw = need_weight ? at::empty({N, K}, x.options()) : at::empty({0}, x.options());
  Tensor gb = at::empty({need_bias ? N : 0}, x.options());
  if (M == 0) {  // nothing to reduce: dW and db are zero, dx is empty
    if (need_weight) gw.zero_();
    if (need_bias) gb.zero_();
    return {need_x ? gx.view(x.sizes()) : gx, gw, gb};
  }
  const Tensor gk = for_tensor_cores(g2);
  const Tensor yk = gated ? for_tensor_cores(y2) : y2;
  const cudaStream_t stream = current_stream();

  if (need_x && K > 0) {
    const Tensor wk = for_tensor_cores(weight);
    const cudaError_t err =
        aecomp_cuda::linear_act_dgrad(dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), mat_of(gk),
                                      mat_of(yk), mat_of(wk), iact, gx.data_ptr(), stream);
    check_launch(op, err, grad_y, weight);
  }
  if (need_weight || need_bias) {
    const Tensor xk = need_weight ? for_tensor_cores(x2) : x2;
    const size_t ws_bytes = aecomp_cuda::linear_act_wgrad_workspace(
        dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), mat_of(gk), mat_of(yk), mat_of(xk), iact,
        need_weight, need_bias);
    Tensor ws;
    if (ws_bytes > 0)
      ws = at::empty({static_cast<int64_t>((ws_bytes + sizeof(float) - 1) / sizeof(float))},
                     x.options().dtype(at::kFloat));
    const cudaError_t err = aecomp_cuda::linear_act_wgrad(
        dt, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), mat_of(gk), mat_of(yk), mat_of(xk), iact,
        need_weight ? gw.data_ptr() : nullptr, need_bias ? gb.data_ptr() : nullptr,
        ws.defined() ? ws.data_ptr() : nullptr, ws_bytes, stream);
    check_launch(op, err, grad_y, x);
  }
  return {need_x ? gx.view(x.sizes()) : gx, gw, gb};
}

// ---------------------------------------------------------------- mse_loss
Tensor mse_loss_cuda(const Tensor& input, const Tensor& target, c10::string_view reduction) {
  static constexpr const char* op = "aecomp::mse_loss";
  check_mse(op, input, target, /*gpu=*/true);
  const Reduction red = parse_reduction(op, reduction);
  const c10::cuda::CUDAGuard guard(input.device());

  const Tensor a = input.contiguous(), b = target.contiguous();
  const int64_t n = a.numel();
  if (red == Reduction::None) {
    Tensor out = at::empty(input.sizes(), input.options());
    if (n > 0) {
      const cudaError_t err = aecomp_cuda::mse_forward(kernel_dtype(input), n, a.data_ptr(), b.data_ptr(),
                                                       static_cast<int>(red), out.data_ptr(), nullptr, 0,
                                                       current_stream());
      check_launch(op, err, input, target);
    }
    return out;
  }
  Tensor out = at::empty({}, input.options());
  if (n == 0) {  // as torch: the mean of nothing is nan, the sum is 0
    out.fill_(red == Reduction::Mean ? std::numeric_limits<double>::quiet_NaN() : 0.0);
    return out;
  }
  const size_t ws_bytes = aecomp_cuda::mse_workspace(n);
  const Tensor ws = at::empty({static_cast<int64_t>((ws_bytes + sizeof(float) - 1) / sizeof(float))},
                              input.options().dtype(at::kFloat));
  const cudaError_t err = aecomp_cuda::mse_forward(kernel_dtype(input), n, a.data_ptr(), b.data_ptr(),
                                                   static_cast<int>(red), out.data_ptr(), ws.data_ptr(), ws_bytes,
                                                   current_stream());
  check_launch(op, err, input, target);
  return out;
}

std::tuple<Tensor, Tensor> mse_loss_backward_cuda(const Tensor& grad, const Tensor& input, const Tensor& target,
                                                  c10::string_view reduction, bool need_input, bool need_target) {
  static constexpr const char* op = "aecomp::mse_loss_backward";
  const Reduction red = parse_reduction(op, reduction);
  check_mse_backward(op, grad, input, target, red, /*gpu=*/true);
  const c10::cuda::CUDAGuard guard(input.device());

  Tensor ga = need_input ? at::empty(input.sizes(), input.options()) : at::empty({0}, input.options());
  Tensor gt = need_target ? at::empty(input.sizes(), input.options()) : at::empty({0}, input.options());
  const int64_t n = input.numel();
  if (n > 0 && (need_input || need_target)) {
    const Tensor a = input.contiguous(), b = target.contiguous(), g = grad.contiguous();
    const cudaError_t err = aecomp_cuda::mse_backward(
        kernel_dtype(input), n, g.data_ptr(), red != Reduction::None, a.data_ptr(), b.data_ptr(),
        static_cast<int>(red), need_input ? ga.data_ptr() : nullptr, need_target ? gt.data_ptr() : nullptr,
        current_stream());
    check_launch(op, err, input, target);
  }
  return {ga, gt};
}

}  // namespace

// "" when the CUDA kernels of this build have an image for the current GPU, else why not (the
// cuda backend's probe; automatic selection then falls back to triton).
std::string cuda_kernel_image_error() {
  const cudaError_t e = aecomp_cuda::kernel_image_status();
  if (e == cudaSuccess) return "";
  return std::string(cudaGetErrorString(e)) + " (cudaError " + std::to_string(static_cast<int>(e)) + ")";
}

}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CUDA, m) {
  m.impl("linear_act", &aecomp::linear_act_cuda);
  m.impl("linear_act_backward", &aecomp::linear_act_backward_cuda);
  m.impl("mse_loss", &aecomp::mse_loss_cuda);
  m.impl("mse_loss_backward", &aecomp::mse_loss_backward_cuda);
}
