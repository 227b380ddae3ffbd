// CPU kernels of aecomp::linear_act and aecomp::linear_act_backward.
//
// Forward:  acc = x @ W^T                  (ATen's CPU GEMM)
//           y   = act(acc + b)             (ONE pass over acc, in place; epilogue.cpp)
// Backward: gz  = g * act'(y),  db = sum_rows gz     (ONE pass; act' from the saved output y)
//           dx  = gz @ W,  dW = gz^T @ x             (two GEMMs, each only if needed)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../aecomp.h"
#include "epilogue.h"

namespace aecomp {
namespace {

using at::Tensor;

// Rows per chunk of the backward pass. Fixed, so the bias-gradient sums come out in the
// same order, with the same bits, whatever the thread count.
constexpr int64_t kRowChunk = 256;

Tensor linear_act_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                      c10::string_view activation) {
  const char* op = "aecomp::linear_act";
  const Act act = parse_activation(op, activation);
  check_linear_act(op, x, weight, bias, /*gpu=*/false);
  const int64_t N = weight.size(0);
  Tensor y = at::mm(flatten_rows(x), weight.t());
  if (!y.is_contiguous()) y = y.contiguous();
  const int64_t M = y.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  Tensor b = has_bias ? bias->contiguous() : Tensor();
  if (M > 0 && N > 0 && (has_bias || act != Act::None)) {
    const int64_t grain = std::max<int64_t>(1, (1 << 14) / N);
    AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "aecomp_linear_act_cpu", [&] {
      scalar_t* yp = y.data_ptr<scalar_t>();
      const scalar_t* bp = has_bias ? b.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
        cpu::bias_act(yp + r0 * N, bp, r1 - r0, N, static_cast<int>(act));
      });
    });
  }
  return y.view(out_shape(x, N));
}

std::tuple<Tensor, Tensor, Tensor> linear_act_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                                            const Tensor& y, c10::string_view activation, bool need_x,
                                                            bool need_weight, bool need_bias) {
  const char* op = "aecomp::linear_act_backward";
  const Act act = parse_activation(op, activation);
  const int64_t N = weight.size(0);
  TORCH_CHECK_VALUE(grad_y.sizes() == y.sizes(), op, ": grad_y has shape ", shape_str(grad_y),
                    " but the output y has shape ", shape_str(y));
  Tensor g = grad_y.reshape({-1, N}).contiguous();
  if (g.scalar_type() != weight.scalar_type()) g = g.to(weight.scalar_type());
  const int64_t M = g.size(0);
  auto empty = [&] { return at::empty({0}, weight.options()); };

  Tensor gz = g;
  Tensor gb = empty();
  const bool pass_needed = act != Act::None || need_bias;
  if (pass_needed && M > 0 && N > 0) {
    Tensor y2 = y.reshape({-1, N}).contiguous();
    if (act != Act::None) gz = at::empty_like(g);
    const int64_t chunks = (M + kRowChunk - 1) / kRowChunk;
    std::vector<double> partial(need_bias ? chunks * N : 0, 0.0);
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "aecomp_linear_act_backward_cpu", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* yp = y2.data_ptr<scalar_t>();
      scalar_t* zp = gz.data_ptr<scalar_t>();
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t r0 = c * kRowChunk, rows = std::min(kRowChunk, M - r0);
          double* acc = need_bias ? partial.data() + c * N : nullptr;
          cpu::act_grad(gp + r0 * N, yp + r0 * N, zp + r0 * N, acc, rows, N, static_cast<int>(act));
        }
      });
      if (need_bias) {
        gb = at::empty({N}, weight.options());
        scalar_t* bp = gb.data_ptr<scalar_t>();
        for (int64_t j = 0; j < N; ++j) {
          double s = 0.0;
          for (int64_t c = 0; c < chunks; ++c) s += partial[c * N + j];
          bp[j] = static_cast<scalar_t>(s);
        }
      }
    });
  } else if (need_bias) {
    gb = at::zeros({N}, weight.options());
  }
  Tensor gx = need_x ? at::mm(gz, weight).view(x.sizes()) : empty();
  Tensor gw = need_weight ? at::mm(gz.t(), flatten_rows(x)) : empty();
  return {gx, gw, gb};
}

}  // namespace
}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CPU, m) {
  m.impl("linear_act", &aecomp::linear_act_cpu);
  m.impl("linear_act_backward", &aecomp::linear_act_backward_cpu);
}
