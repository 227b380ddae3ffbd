// CPU kernels of aecomp::linear_act and aecomp::linear_act_backward.
//
// Forward:  acc = x @ W^T                  (float32 below the crossover: the microkernels of
//                                           dense_gemm.h with bias+act in the epilogue, no pass;
//                                           else ATen's CPU GEMM)
//           y   = act(acc + b)             (ONE pass over acc, in place; epilogue.cpp)
// Backward: gz  = g * act'(y),  db = sum_rows gz     (ONE pass; act' from the saved output y)
//           dx  = gz @ W,  dW = gz^T @ x             (two GEMMs, each only if needed)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../aecomp.h"
#include "dense.h"
#include "epilogue.h"

namespace aecomp {
namespace cpu {

using at::Tensor;

// Rows per chunk of the backward passes. Fixed, so the bias-gradient sums come out in the
// same order, with the same bits, whatever the thread count.
constexpr int64_t kRowChunk = 256;

Tensor dense_forward(const Tensor& x2d, const Tensor& w, const Tensor& b, Act act) {
  if (x2d.scalar_type() == at::kFloat && x2d.size(0) > 0 && use_microkernel(x2d.size(0), w.size(0), w.size(1)))
    return mk_forward(x2d, w, b, act);
  // No activation: the bias rides in the GEMM's C operand (addmm), so there is no pass at all.
  if (act == Act::None && b.defined() && x2d.size(0) > 0) return at::addmm(b, x2d, w.t());
  Tensor y = at::mm(x2d, w.t());
  if (!y.is_contiguous()) y = y.contiguous();
  const int64_t M = y.size(0), N = y.size(1);
  const bool has_bias = b.defined();
  if (M == 0 || N == 0 || (!has_bias && act == Act::None)) return y;
  Tensor bc = has_bias ? b.contiguous() : Tensor();
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / N);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "aecomp_dense_forward_cpu", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bc.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
      bias_act(yp + r0 * N, bp, r1 - r0, N, static_cast<int>(act));
    });
  });
  return y;
}

// Runs `row_pass(r0, rows, acc)` over fixed row chunks (in parallel), then folds the
// per-chunk column sums in chunk order into *gb.
template <typename scalar_t, typename F>
static void chunked_rows(int64_t M, int64_t N, Tensor* gb, const at::TensorOptions& opts, F row_pass) {
  const int64_t chunks = (M + kRowChunk - 1) / kRowChunk;
  std::vector<double> partial(gb ? chunks * N : 0, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kRowChunk;
      row_pass(r0, std::min(kRowChunk, M - r0), gb ? partial.data() + c * N : nullptr);
    }
  });
  if (gb) {
    *gb = at::empty({N}, opts);
    scalar_t* bp = gb->data_ptr<scalar_t>();
    for (int64_t j = 0; j < N; ++j) {
      double s = 0.0;
      for (int64_t c = 0; c < chunks; ++c) s += partial[c * N + j];
      bp[j] = static_cast<scalar_t>(s);
    }
  }
}

Tensor act_grad_pass(const Tensor& g_in, const Tensor& y_in, Act act, Tensor* gb, bool in_place) {
  const int64_t N = y_in.size(-1);
  Tensor g = g_in.reshape({leading_rows(y_in), N});
  if (!g.is_contiguous()) {
    g = g.contiguous();
    in_place = true;  // a fresh copy is ours
  }
  const int64_t M = g.size(0);
  if (M == 0 || N == 0) {
    if (gb) *gb = at::zeros({N}, g.options());
    return g;
  }
  if (act == Act::None && !gb) return g;
  Tensor y = y_in.reshape({M, N}).contiguous();
  Tensor gz = (act == Act::None || in_place) ? g : at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "aecomp_act_grad_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* zp = gz.data_ptr<scalar_t>();
    chunked_rows<scalar_t>(M, N, gb, g.options(), [&](int64_t r0, int64_t rows, double* acc) {
      act_grad(gp + r0 * N, yp + r0 * N, zp + r0 * N, acc, rows, N, static_cast<int>(act));
    });
  });
  return gz;
}

Tensor loss_act_grad_pass(const Tensor& y_in, const Tensor& t_in, const Tensor& g_in, double scale, Act act,
                          Tensor* gb) {
  const int64_t N = y_in.size(-1), rows = leading_rows(y_in);
  Tensor y = y_in.reshape({rows, N}).contiguous();
  Tensor t = t_in.reshape({rows, N}).contiguous();
  const bool elementwise = g_in.numel() != 1 || g_in.sizes() == y_in.sizes();
  Tensor g = (elementwise ? g_in.reshape({rows, N}) : g_in.reshape({1})).contiguous().to(y.scalar_type());
  const int64_t M = y.size(0);
  Tensor gz = at::empty_like(y);
  if (M == 0 || N == 0) {
    if (gb) *gb = at::zeros({N}, y.options());
    return gz;
  }
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "aecomp_loss_act_grad_cpu", [&] {
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* zp = gz.data_ptr<scalar_t>();
    const int64_t gs = elementwise ? 1 : 0;
    chunked_rows<scalar_t>(M, N, gb, y.options(), [&](int64_t r0, int64_t rows, double* acc) {
      loss_act_grad(yp + r0 * N, tp + r0 * N, gp + r0 * N * gs, gs, scale, zp + r0 * N, acc, rows, N,
                    static_cast<int>(act));
    });
  });
  return gz;
}

}  // namespace cpu

namespace {

using at::Tensor;

Tensor linear_act_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                      c10::string_view activation) {
  const char* op = "aecomp::linear_act";
  const Act act = parse_activation(op, activation);
  check_linear_act(op, x, weight, bias, /*gpu=*/false);
  Tensor b = bias.has_value() ? *bias : Tensor();
  return cpu::dense_forward(flatten_rows(x), weight, b, act).view(out_shape(x, weight.size(0)));
}

std::tuple<Tensor, Tensor, Tensor> linear_act_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                                            const Tensor& y, c10::string_view activation, bool need_x,
                                                            bool need_weight, bool need_bias) {
  const char* op = "aecomp::linear_act_backward";
  const Act act = parse_activation(op, activation);
  check_linear_act_backward(op, grad_y, x, weight, y, /*gpu=*/false);
  const Tensor x2d = flatten_rows(x);
  const int64_t M = x2d.size(0), N = weight.size(0), K = weight.size(1);
  Tensor gb = at::empty({0}, weight.options());
  // never in place: the incoming gradient may be shared with other consumers
  const Tensor gz = cpu::act_grad_pass(grad_y, y, act, need_bias ? &gb : nullptr, /*in_place=*/false);
  const bool mk = x.scalar_type() == at::kFloat && M > 0 && N > 0 && K > 0 && cpu::use_microkernel(M, N, K);
  Tensor gx = !need_x ? at::empty({0}, weight.options())
              : mk    ? cpu::mk_dgrad(gz, weight, Tensor(), Act::None).view(x.sizes())
                      : at::mm(gz, weight).view(x.sizes());  // out_features = 0: zeros, as torch
  Tensor gw = !need_weight ? at::empty({0}, weight.options())
              : mk         ? cpu::mk_wgrad(gz, x2d, nullptr)
                           : at::mm(gz.t(), x2d);
  return {gx, gw, gb};
}

}  // namespace
}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CPU, m) {
  m.impl("linear_act", &aecomp::linear_act_cpu);
  m.impl("linear_act_backward", &aecomp::linear_act_backward_cpu);
}
