// CPU kernels of the chain ops: aecomp::mlp, mlp_forward, mlp_backward, mlp_mse_backward.
//
// A chain of L layers, h_0 = x, h_{i+1} = y_i = act_i(h_i @ W_i^T + b_i), runs in ONE C++ call
// (no Python between layers). What is saved for the backward is the output y_i of every
// layer, nothing else: act_i'(.) is a function of y_i, and y_i is the input of layer i+1.
//
// Backward, from gz_{L-1} (see below) down:
//   dW_i = gz_i^T @ h_i,  db_i = sum_rows gz_i            (db in the pass that formed gz_i)
//   g_i  = gz_i @ W_i,    gz_{i-1} = g_i * act_{i-1}'(y_{i-1})   (one in-place pass on g_i)
// Entry: mlp_backward takes gz_{L-1} = g * act'(y_{L-1}); mlp_mse_backward forms
//   gz_{L-1} = (2/n) g (y_{L-1} - t) act'(y_{L-1})      (n = numel for mean, 1 for sum)
// in one pass: the MSE backward and the output activation's backward are never written out.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "../aecomp.h"
#include "dense.h"

namespace aecomp {
namespace {

using at::Tensor;

std::vector<Tensor> chain_forward(const char* op, const Tensor& x, at::TensorList weights,
                                  const c10::List<std::optional<Tensor>>& biases, c10::string_view activations) {
  check_mlp(op, x, weights, biases, /*gpu=*/false);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  std::vector<Tensor> outs;
  outs.reserve(weights.size());
  Tensor h = flatten_rows(x);
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::optional<Tensor> b = biases.get(i);
    h = cpu::dense_forward(h, weights[i], b.has_value() ? *b : Tensor(), acts[i]);
    outs.push_back(h);
  }
  return outs;
}

std::vector<Tensor> mlp_forward_cpu(const Tensor& x, at::TensorList weights,
                                    const c10::List<std::optional<Tensor>>& biases, c10::string_view activations) {
  return chain_forward("aecomp::mlp", x, weights, biases, activations);
}

Tensor mlp_cpu(const Tensor& x, at::TensorList weights, const c10::List<std::optional<Tensor>>& biases,
               c10::string_view activations) {
  std::vector<Tensor> outs = chain_forward("aecomp::mlp", x, weights, biases, activations);
  return outs.back().view(out_shape(x, weights.back().size(0)));
}

// Given gz of the last layer (and its bias gradient), runs the rest of the chain backward.
// Returns [gx, gW_0..gW_{L-1}, gb_0..gb_{L-1}]; unneeded entries are empty tensors.
// float32 layers below the crossover (cpu::use_microkernel) run on the microkernels: the dgrad
// applies act' of the layer below in its epilogue (gz of that layer is stored once) and the
// bias gradient comes out of the next wgrad's packing pass. Other layers: ATen's GEMMs and
// one in-place activation pass that also reduces the bias gradient.
std::vector<Tensor> chain_backward(Tensor gz, Tensor gb_last, const Tensor& x, at::TensorList weights,
                                   at::TensorList outputs, const std::vector<Act>& acts, bool need_x,
                                   at::IntArrayRef need_bias) {
  const size_t L = weights.size();
  const Tensor x2d = flatten_rows(x);
  const int64_t M = x2d.size(0);
  auto empty = [&] { return at::empty({0}, weights[0].options()); };
  std::vector<Tensor> result(1 + 2 * L);
  for (auto& t : result) t = empty();
  result[1 + 2 * L - 1] = gb_last;
  std::vector<char> have_gb(L, 0);
  have_gb[L - 1] = 1;
  for (size_t k = L; k-- > 0;) {
    const Tensor& h = k == 0 ? x2d : outputs[k - 1];
    const bool mk = gz.scalar_type() == at::kFloat && M > 0 &&
                    cpu::use_microkernel(M, weights[k].size(0), weights[k].size(1));
    const bool want_gb = need_bias[k] && !have_gb[k];
    Tensor gbk;
    if (mk) {
      result[1 + k] = cpu::mk_wgrad(gz, h, want_gb ? &gbk : nullptr);
    } else {
      result[1 + k] = at::mm(gz.t(), h);
      if (want_gb) cpu::act_grad_pass(gz, gz, Act::None, &gbk, /*in_place=*/true);  // column sums only
    }
    if (want_gb) result[1 + L + k] = gbk;
    if (k == 0) {
      if (need_x)
        result[0] = (mk ? cpu::mk_dgrad(gz, weights[0], Tensor(), Act::None) : at::mm(gz, weights[0])).view(x.sizes());
      break;
    }
    if (mk) {
      gz = cpu::mk_dgrad(gz, weights[k], outputs[k - 1], acts[k - 1]);
      continue;
    }
    Tensor g = at::mm(gz, weights[k]);  // a fresh buffer: the activation pass runs in place
    Tensor gb;
    gz = cpu::act_grad_pass(g, outputs[k - 1], acts[k - 1], need_bias[k - 1] ? &gb : nullptr, /*in_place=*/true);
    if (need_bias[k - 1]) {
      result[1 + L + k - 1] = gb;
      have_gb[k - 1] = 1;
    }
  }
  return result;
}

std::vector<Tensor> mlp_backward_cpu(const Tensor& grad, const Tensor& x, at::TensorList weights,
                                     at::TensorList outputs, c10::string_view activations, bool need_x,
                                     at::IntArrayRef need_bias) {
  const char* op = "aecomp::mlp_backward";
  check_mlp_backward(op, grad, x, weights, outputs, need_bias, /*gpu=*/false);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  const size_t L = weights.size();
  Tensor gb;
  Tensor gz = cpu::act_grad_pass(grad, outputs[L - 1], acts[L - 1], need_bias[L - 1] ? &gb : nullptr,
                                 /*in_place=*/false);
  return chain_backward(gz, need_bias[L - 1] ? gb : at::empty({0}, x.options()), x, weights, outputs, acts, need_x,
                        need_bias);
}

std::vector<Tensor> mlp_mse_backward_cpu(const Tensor& grad, const Tensor& x, at::TensorList weights,
                                         at::TensorList outputs, c10::string_view activations, const Tensor& target,
                                         c10::string_view reduction, bool need_x, at::IntArrayRef need_bias) {
  const char* op = "aecomp::mlp_mse_backward";
  const Reduction red = parse_reduction(op, reduction);
  check_mlp_mse_backward(op, grad, x, weights, outputs, target, red, need_bias, /*gpu=*/false);
  const std::vector<Act> acts = parse_activations(op, activations, weights.size());
  const size_t L = weights.size();
  const Tensor& y = outputs[L - 1];
  const double n = static_cast<double>(std::max<int64_t>(y.numel(), 1));
  const double scale = red == Reduction::Mean ? 2.0 / n : 2.0;
  Tensor gb;
  Tensor gz = cpu::loss_act_grad_pass(y, target, grad, scale, acts[L - 1], need_bias[L - 1] ? &gb : nullptr);
  return chain_backward(gz, need_bias[L - 1] ? gb : at::empty({0}, x.options()), x, weights, outputs, acts, need_x,
                        need_bias);
}

// Without autograd (inference mode): the chain, then the loss.
Tensor mlp_mse_loss_cpu(const Tensor& x, at::TensorList weights, const c10::List<std::optional<Tensor>>& biases,
                        c10::string_view activations, const Tensor& target, c10::string_view reduction) {
  static auto mse = c10::Dispatcher::singleton()
                        .findSchemaOrThrow("aecomp::mse_loss", "")
                        .typed<Tensor(const Tensor&, const Tensor&, c10::string_view)>();
  const char* op = "aecomp::mlp_mse_loss";
  parse_reduction(op, reduction);
  check_mlp(op, x, weights, biases, /*gpu=*/false);
  check_mlp_target(op, x, weights, target);  // before the chain runs
  return mse.call(mlp_cpu(x, weights, biases, activations), target, reduction);
}

}  // namespace
}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CPU, m) {
  m.impl("mlp", &aecomp::mlp_cpu);
  m.impl("mlp_forward", &aecomp::mlp_forward_cpu);
  m.impl("mlp_backward", &aecomp::mlp_backward_cpu);
  m.impl("mlp_mse_backward", &aecomp::mlp_mse_backward_cpu);
  m.impl("mlp_mse_loss", &aecomp::mlp_mse_loss_cpu);
}
