// Torch glue of the CUDA layer chains: the CUDA implementations of aecomp::mlp, mlp_forward,
// mlp_backward, mlp_mse_backward and mlp_mse_loss (schemas and autograd in csrc/ops.cpp; the
// CPU version, with the same contract, in csrc/cpu/mlp.cpp).
//
// Forward: one launch of the fused chain kernel (mlp.cu) when every width is at most
// CHAIN_MAX_WIDTH (256) and there are at most CHAIN_MAX_LAYERS layers; otherwise, or with
// AECOMP_CUDA_MLP=layers in the environment, one linear_act_forward launch per layer. Both write
// every layer's output y_i (2-D, contiguous), which the backward takes back as `outputs`.
//
// Backward, layer k = L-1 .. 0, with G_k the gradient at y_k and h_k the input of layer k
// (h_0 = x, h_k = y_{k-1}):
//   dW_k = (G_k * act_k'(y_k))^T h_k,   db_k = sum_m G_k * act_k'(y_k)   (linear_act_wgrad)
//   G_{k-1} = (G_k * act_k'(y_k)) W_k                                   (linear_act_dgrad)
// the gate act_k'(y_k) applied while the GEMMs load G_k (gz never goes through memory).
// mlp_mse_backward starts with the fused loss entry (mlp_loss_entry): gz_{L-1} =
// s g (y_{L-1} - t) act'(y_{L-1}) and db_{L-1} in one pass, then the loop above with G_{L-1} =
// gz_{L-1} and no gate on the last layer.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "../aecomp.h"
#include "aecomp_cuda.h"

namespace aecomp {
namespace {

using at::Tensor;
using BiasList = c10::List<std::optional<Tensor>>;

aecomp_cuda::DType mlp_kernel_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return aecomp_cuda::DType::BF16;
    case at::kHalf: return aecomp_cuda::DType::F16;
    default: return aecomp_cuda::DType::F32;  // check_mlp admits only float32, bfloat16, float16
  }
}

// As in ops_cuda.cpp: the stride of a size-1 dimension is normalized.
aecomp_cuda::Mat mlp_mat_of(const Tensor& t) {
  const int64_t s0 = t.size(0) <= 1 ? t.size(1) : t.stride(0);
  const int64_t s1 = t.size(1) <= 1 ? 1 : t.stride(1);
  return aecomp_cuda::Mat{t.data_ptr(), s0, s1};
}

// As in ops_cuda.cpp: a 16-bit operand whose rows could be 16-byte aligned but are not is copied
// once, so the per-layer GEMMs take the tensor-core kernel.
Tensor mlp_for_tensor_cores(const Tensor& t) {
  if (t.scalar_type() == at::kFloat || t.numel() == 0 || t.size(1) % 8 != 0) return t;
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return t;
  const aecomp_cuda::Mat m = mlp_mat_of(t);
  if (m.s1 == 1 && m.s0 % 8 == 0 && reinterpret_cast<uintptr_t>(m.ptr) % 16 == 0) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

constexpr int64_t kMlpMaxRows = std::numeric_limits<int>::max() - 1024;
constexpr int64_t kMlpMaxWidth = 65535LL * 64;

void check_chain_sizes(const char* op, const Tensor& x, at::TensorList weights) {
  const int64_t M = x.numel() / std::max<int64_t>(x.size(-1), 1);
  TORCH_CHECK_VALUE(M <= kMlpMaxRows, op, ": ", M, " rows in x (shape ", shape_str(x),
                    ") exceed the CUDA kernels' limit of ", kMlpMaxRows, "; split the batch");
  for (size_t i = 0; i < weights.size(); ++i)
    TORCH_CHECK_VALUE(weights[i].size(0) <= kMlpMaxWidth && weights[i].size(1) <= kMlpMaxWidth, op, ": weights[", i,
                      "] of shape ", shape_str(weights[i]), " is wider than the CUDA kernels' limit of ",
                      kMlpMaxWidth, " features");
}

void check_mlp_launch(const char* op, cudaError_t err, const Tensor& x, size_t layer) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed at layer ", layer, ": ", cudaGetErrorString(err),
              " (x: ", shape_str(x), ")");
}

cudaStream_t mlp_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

bool per_layer_forced() {
  const char* e = std::getenv("AECOMP_CUDA_MLP");
  return e != nullptr && std::strcmp(e, "layers") == 0;
}

Tensor fp32_workspace(size_t bytes, const Tensor& like) {
  if (bytes == 0) return Tensor();
  return at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))},
                   like.options().dtype(at::kFloat));
}

// ---------------------------------------------------------------- forward
std::vector<Tensor> chain_forward_cuda(const char* op, const Tensor& x, at::TensorList weights, const BiasList& biases,
                                       c10::string_view activations) {
  check_mlp(op, x, weights, biases, /*gpu=*/true);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  check_chain_sizes(op, x, weights);
  const c10::cuda::CUDAGuard guard(x.device());
  const size_t L = weights.size();
  const Tensor x2 = flatten_rows(x);
  const int64_t M = x2.size(0);
  const auto dt = mlp_kernel_dtype(x);
  const cudaStream_t stream = mlp_stream();

  std::vector<Tensor> outs(L), w(L), b(L);
  std::vector<int> widths(L + 1), iacts(L);
  widths[0] = static_cast<int>(x2.size(1));
  for (size_t i = 0; i < L; ++i) {
    outs[i] = at::empty({M, weights[i].size(0)}, x.options());
    widths[i + 1] = static_cast<int>(weights[i].size(0));
    iacts[i] = static_cast<int>(acts[i]);
    const std::optional<Tensor> bi = biases.get(i);
    if (bi.has_value() && bi->defined()) b[i] = bi->contiguous();
  }
  if (M == 0) return outs;

  if (!per_layer_forced() && aecomp_cuda::mlp_chain_fusable(static_cast<int>(L), widths.data())) {
    std::vector<const void*> wp(L), bp(L);
    std::vector<void*> op_(L);
    for (size_t i = 0; i < L; ++i) {
      w[i] = weights[i].contiguous();
      wp[i] = w[i].data_ptr();
      bp[i] = b[i].defined() ? b[i].data_ptr() : nullptr;
      op_[i] = outs[i].data_ptr();
    }
    const cudaError_t err = aecomp_cuda::mlp_chain_forward(dt, static_cast<int>(M), static_cast<int>(L),
                                                           widths.data(), mlp_mat_of(x2), wp.data(), bp.data(),
                                                           iacts.data(), op_.data(), stream);
    check_mlp_launch(op, err, x, 0);
    return outs;
  }
  // Per layer: the tensor-core / SIMT linear_act kernels, h_{i+1} = y_i.
  Tensor h = x2;
  for (size_t i = 0; i < L; ++i) {
    const int N = widths[i + 1], K = widths[i];
    if (N > 0 && K > 0) {
      const Tensor hk = mlp_for_tensor_cores(h), wk = mlp_for_tensor_cores(weights[i]);
      const cudaError_t err = aecomp_cuda::linear_act_forward(
          dt, static_cast<int>(M), N, K, mlp_mat_of(hk), mlp_mat_of(wk), b[i].defined() ? b[i].data_ptr() : nullptr,
          iacts[i], outs[i].data_ptr(), stream);
      check_mlp_launch(op, err, x, i);
    } else if (N > 0) {  // K == 0: y = act(b) (an empty reduction)
      const Tensor z = b[i].defined() ? b[i].expand({M, N}) : at::zeros({M, N}, x.options());
      outs[i].copy_(acts[i] == Act::ReLU ? at::relu(z) : acts[i] == Act::Sigmoid ? at::sigmoid(z) : z);
    }
    h = outs[i];
  }
  return outs;
}

std::vector<Tensor> mlp_forward_cuda(const Tensor& x, at::TensorList weights, const BiasList& biases,
                                     c10::string_view activations) {
  return chain_forward_cuda("aecomp::mlp", x, weights, biases, activations);
}

Tensor mlp_cuda(const Tensor& x, at::TensorList weights, const BiasList& biases, c10::string_view activations) {
  std::vector<Tensor> outs = chain_forward_cuda("aecomp::mlp", x, weights, biases, activations);
  return outs.back().view(out_shape(x, weights.back().size(0)));
}

Tensor mlp_mse_loss_cuda(const Tensor& x, at::TensorList weights, const BiasList& biases,
                         c10::string_view activations, const Tensor& target, c10::string_view reduction) {
  static auto mse = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("aecomp::mse_loss", "")
                        .typed<Tensor(const Tensor&, const Tensor&, c10::string_view)>();
  const char* op = "aecomp::mlp_mse_loss";
  parse_reduction(op, reduction);
  check_mlp(op, x, weights, biases, /*gpu=*/true);
  check_mlp_target(op, x, weights, target);  // before the chain runs
  return mse.call(mlp_cuda(x, weights, biases, activations), target, reduction);
}

// ---------------------------------------------------------------- backward
// The loop of the header comment from layer L-1 down, given G_{L-1} and its gate. result[1 + 2L - 1]
// (db_{L-1}) is already set when bias_done.
std::vector<Tensor> chain_backward_cuda(const char* op, Tensor G, Act top_gate, Tensor db_top, const Tensor& x,
                                        at::TensorList weights, at::TensorList outputs, const std::vector<Act>& acts,
                                        bool need_x, at::IntArrayRef need_bias) {
  const size_t L = weights.size();
  const Tensor x2 = flatten_rows(x);
  const int64_t M = x2.size(0);
  const auto dt = mlp_kernel_dtype(x);
  const cudaStream_t stream = mlp_stream();
  std::vector<Tensor> result(1 + 2 * L);
  for (auto& t : result) t = at::empty({0}, x.options());
  const bool bias_done = db_top.defined();
  if (bias_done) result[2 * L] = db_top;
  for (size_t i = 0; i < L; ++i) {
    result[1 + i] = at::empty({weights[i].size(0), weights[i].size(1)}, x.options());
    if (need_bias[i] && !(bias_done && i == L - 1)) result[1 + L + i] = at::empty({weights[i].size(0)}, x.options());
  }
  if (M == 0) {
    for (size_t i = 0; i < L; ++i) {
      result[1 + i].zero_();
      if (need_bias[i]) result[1 + L + i].zero_();
    }
    if (need_x) result[0] = at::empty(x.sizes(), x.options());
    return result;
  }
  Act gate = top_gate;
  for (size_t k = L; k-- > 0;) {
    const int N = static_cast<int>(weights[k].size(0)), K = static_cast<int>(weights[k].size(1));
    const int iact = static_cast<int>(gate);
    const Tensor gk = mlp_for_tensor_cores(G);
    const Tensor yk = gate != Act::None ? mlp_for_tensor_cores(outputs[k].contiguous()) : outputs[k];
    const Tensor hk = mlp_for_tensor_cores(k == 0 ? x2 : outputs[k - 1]);
    const bool want_b = need_bias[k] && !(bias_done && k == L - 1);
    {  // dW_k (and db_k)
      const size_t ws_bytes = aecomp_cuda::linear_act_wgrad_workspace(
          dt, static_cast<int>(M), N, K, mlp_mat_of(gk), mlp_mat_of(yk), mlp_mat_of(hk), iact, true, want_b);
      const Tensor ws = fp32_workspace(ws_bytes, x);
      const cudaError_t err = aecomp_cuda::linear_act_wgrad(
          dt, static_cast<int>(M), N, K, mlp_mat_of(gk), mlp_mat_of(yk), mlp_mat_of(hk), iact,
          N > 0 && K > 0 ? result[1 + k].data_ptr() : nullptr, want_b ? result[1 + L + k].data_ptr() : nullptr,
          ws.defined() ? ws.data_ptr() : nullptr, ws_bytes, stream);
      check_mlp_launch(op, err, x, k);
      if (N == 0 || K == 0) result[1 + k].zero_();
    }
    if (k == 0 && !need_x) break;
    Tensor gin = at::empty({M, K}, x.options());  // G_{k-1}, or gx
    if (K > 0) {
      if (N > 0) {
        const Tensor wk = mlp_for_tensor_cores(weights[k]);
        const cudaError_t err = aecomp_cuda::linear_act_dgrad(dt, static_cast<int>(M), N, K, mlp_mat_of(gk),
                                                              mlp_mat_of(yk), mlp_mat_of(wk), iact, gin.data_ptr(),
                                                              stream);
        check_mlp_launch(op, err, x, k);
      } else {
        gin.zero_();
      }
    }
    if (k == 0) {
      result[0] = gin.view(x.sizes());
      break;
    }
    G = gin;
    gate = acts[k - 1];
  }
  return result;
}

std::vector<Tensor> mlp_backward_cuda(const Tensor& grad, const Tensor& x, at::TensorList weights,
                                      at::TensorList outputs, c10::string_view activations, bool need_x,
                                      at::IntArrayRef need_bias) {
  static constexpr const char* op = "aecomp::mlp_backward";
  check_mlp_backward(op, grad, x, weights, outputs, need_bias, /*gpu=*/true);
  check_chain_sizes(op, x, weights);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  const size_t L = weights.size();
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor g = grad.reshape(outputs[L - 1].sizes());
  return chain_backward_cuda(op, g, acts[L - 1], Tensor(), x, weights, outputs, acts, need_x, need_bias);
}

std::vector<Tensor> mlp_mse_backward_cuda(const Tensor& grad, const Tensor& x, at::TensorList weights,
                                          at::TensorList outputs, c10::string_view activations, const Tensor& target,
                                          c10::string_view reduction, bool need_x, at::IntArrayRef need_bias) {
  static constexpr const char* op = "aecomp::mlp_mse_backward";
  const Reduction red = parse_reduction(op, reduction);
  check_mlp_mse_backward(op, grad, x, weights, outputs, target, red, need_bias, /*gpu=*/true);
  check_chain_sizes(op, x, weights);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  const size_t L = weights.size();
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor& y = outputs[L - 1];
  const int64_t M = y.size(0), N = y.size(1);
  const bool scalar = red != Reduction::None;
  const Tensor yc = y.contiguous(), tc = target.reshape({M, N}).contiguous();
  const Tensor gc = grad.reshape(scalar ? std::vector<int64_t>{1} : std::vector<int64_t>{M, N}).contiguous();
  const double n = static_cast<double>(std::max<int64_t>(y.numel(), 1));
  const float scale = static_cast<float>(red == Reduction::Mean ? 2.0 / n : 2.0);
  Tensor gz = at::empty({M, N}, x.options());
  Tensor db = need_bias[L - 1] ? at::empty({N}, x.options()) : at::empty({0}, x.options());
  const size_t ws_bytes =
      need_bias[L - 1] ? aecomp_cuda::mlp_loss_entry_workspace(static_cast<int>(M), static_cast<int>(N)) : 0;
  const Tensor ws = fp32_workspace(ws_bytes, x);
  const cudaError_t err = aecomp_cuda::mlp_loss_entry(
      mlp_kernel_dtype(x), static_cast<int>(M), static_cast<int>(N), yc.data_ptr(), tc.data_ptr(), gc.data_ptr(),
      scalar, scale, static_cast<int>(acts[L - 1]), gz.data_ptr(), need_bias[L - 1] ? db.data_ptr() : nullptr,
      ws.defined() ? ws.data_ptr() : nullptr, ws_bytes, mlp_stream());
  check_mlp_launch(op, err, x, L - 1);
  return chain_backward_cuda(op, gz, Act::None, need_bias[L - 1] ? db : Tensor(), x, weights, outputs, acts, need_x,
                             need_bias);
}

}  // namespace
}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CUDA, m) {
  m.impl("mlp", &aecomp::mlp_cuda);
  m.impl("mlp_forward", &aecomp::mlp_forward_cuda);
  m.impl("mlp_backward", &aecomp::mlp_backward_cuda);
  m.impl("mlp_mse_backward", &aecomp::mlp_mse_backward_cuda);
  m.impl("mlp_mse_loss", &aecomp::mlp_mse_loss_cuda);
}
