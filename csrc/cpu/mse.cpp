// CPU kernels of aecomp::mse_loss and aecomp::mse_loss_backward.
//
// Forward (one pass):  s = sum_i (a_i - b_i)^2   -> mean: s / n, sum: s;  none: (a - b)^2
// Backward (one pass): da = 2 (a - b) g / n   (n = numel for mean, 1 for sum; g per element for none)
//                      db = -da
// The sum is accumulated in double over fixed chunks, folded in chunk order: the same bits
// for any thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../aecomp.h"
#include "epilogue.h"

namespace aecomp {
namespace {

using at::Tensor;

constexpr int64_t kChunk = 1 << 15;

Tensor mse_loss_cpu(const Tensor& input, const Tensor& target, c10::string_view reduction) {
  const char* op = "aecomp::mse_loss";
  const Reduction red = parse_reduction(op, reduction);
  check_mse(op, input, target, /*gpu=*/false);
  Tensor a = input.contiguous(), b = target.contiguous();
  const int64_t n = a.numel();
  if (red == Reduction::None) {
    Tensor out = at::empty_like(a);
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "aecomp_mse_none_cpu", [&] {
      const scalar_t *ap = a.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
      scalar_t* op_ = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, kChunk, [&](int64_t i0, int64_t i1) {
        cpu::sq_err(ap + i0, bp + i0, op_ + i0, i1 - i0);
      });
    });
    return out;
  }
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "aecomp_mse_cpu", [&] {
    const scalar_t *ap = a.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
        partial[c] = cpu::sq_err_sum(ap + i0, bp + i0, len);
      }
    });
  });
  double s = 0.0;
  for (double p : partial) s += p;
  if (red == Reduction::Mean) s = n > 0 ? s / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  // Write the value directly: at::scalar_tensor would refuse a sum past float32's range,
  // where the right answer (as in torch) is inf.
  Tensor out = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "aecomp_mse_store", [&] {
    const double lim = static_cast<double>(std::numeric_limits<scalar_t>::max());
    const double v = std::isfinite(s) && std::abs(s) > lim ? std::copysign(std::numeric_limits<double>::infinity(), s) : s;
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(v);
  });
  return out;
}

std::tuple<Tensor, Tensor> mse_loss_backward_cpu(const Tensor& grad, const Tensor& input, const Tensor& target,
                                                 c10::string_view reduction, bool need_input, bool need_target) {
  const char* op = "aecomp::mse_loss_backward";
  const Reduction red = parse_reduction(op, reduction);
  check_mse_backward(op, grad, input, target, red, /*gpu=*/false);
  auto empty = [&] { return at::empty({0}, input.options()); };
  if (!need_input && !need_target) return {empty(), empty()};
  Tensor a = input.contiguous(), b = target.contiguous();
  const int64_t n = a.numel();
  const int64_t g_stride = red == Reduction::None ? 1 : 0;
  const Tensor g = g_stride ? grad.contiguous() : grad.reshape({1}).contiguous();
  const double scale = red == Reduction::Mean ? 2.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 2.0;
  Tensor gi = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "aecomp_mse_backward_cpu", [&] {
    const scalar_t *ap = a.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    scalar_t* out = gi.data_ptr<scalar_t>();
    at::parallel_for(0, n, kChunk, [&](int64_t i0, int64_t i1) {
      const scalar_t* gpi = g_stride ? gp + i0 : gp;
      cpu::sq_err_grad(ap + i0, bp + i0, gpi, g_stride, scale, out + i0, i1 - i0);
    });
  });
  Tensor gt = need_target ? gi.neg() : empty();
  return {need_input ? gi : empty(), gt};
}

}  // namespace
}  // namespace aecomp

TORCH_LIBRARY_IMPL(aecomp, CPU, m) {
  m.impl("mse_loss", &aecomp::mse_loss_cpu);
  m.impl("mse_loss_backward", &aecomp::mse_loss_backward_cpu);
}
