// The fused training step in bfloat16 on the CPU's matrix engine: aecomp._C.mlp_mse_train_step_bf16.
//
// The same step as mlp_mse_train_step (train_step.cpp), with every GEMM on brgemm's bf16 x
// bf16 -> float32 kernels (brgemm.h: AMX tiles, or AVX512-BF16) and everything else in float32:
//   forward   h_{i+1} = act_i(bf16(h_i) bf16(W_i)^T + b_i)        bias + act on the f32 tile
//   loss      L = mean/sum (y - t)^2 from the f32 output y = h_L, and gz_{L-1} = s (y - t) act'(y),
//             both in the last layer's forward epilogue (y is never stored)
//   layer k from the top:
//     dgrad   gz_{k-1} = (bf16(gz_k) bf16(W_k)) * act_{k-1}'(h_k)   act' in the f32 epilogue
//     wgrad   dW_k = bf16(gz_k)^T bf16(h_k) in f32, db_k = sum_rows gz_k (double, from the f32 gz),
//             and in the epilogue of each dW tile the optimizer step on W_k's float32 master
//             weights and state (Adam / AdamW / SGD: mk::optim_update, torch.optim's formulas).
// The parameters, the optimizer state and the loss stay float32 (the master weights); bf16 are
// only the GEMM operands, made per step: W^T and W packed once per step (before any update),
// activations and gradients rounded where the epilogue stores them.
//
// ---------------------------------------------------------------------------- error model
// Every GEMM operand is rounded to bf16 once (8 significant bits: relative error u = 2^-8,
// round to nearest even); products are exact in f32 and the sums are f32. So a GEMM output is
//   C = sum_k a_k b_k (1 + d_k),  |d_k| <= 2u + u^2    (one rounding of each operand)
// plus the f32 summation error (K eps32 sum |a b|, negligible beside it), and
//   |C - C_exact| <= (2u + u^2) sum_k |a_k b_k|  ~ 2^-7 sum |a b|   (worst case; rounding
// errors of random data add like a random walk, so the typical error is ~ 2^-8 sqrt(K) |a b|).
// Each layer adds its own such error to what it receives; the step's gradients are within a
// few 2^-8 relative (in the sum-of-|terms| sense) of the float64 step, and the update applied
// to the float32 master weights is exact for the gradient it gets. Two exceptions: a ReLU
// whose pre-activation lies within the forward's error of 0 may fall on the other side (its
// mask then keeps or drops a whole term of the gradients below it), and float32 denormals
// (|v| < 2^-126) round to 0. tests/test_train_bf16.py checks the loss, every gradient (through
// SGD lr=1, which writes p - g) and the Adam state against the float64 reference with these
// bounds (the ambiguous ReLUs bounded by interval propagation), and a training curve against
// float32 (bf16 reaches the float32 final loss within 5%; seeds 0-3 gave 0.97-1.03 of it).
//
// The chain itself (tiles, epilogues, buffers) is bf16_chain.{h,cpp}; this file is the step:
// argument checks, the optimizer as the weight-gradient sink, and the buffers, thread_local
// and reused from step to step (no allocation at a steady batch size).
#include <ATen/ATen.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "../aecomp.h"
#include "bf16_chain.h"
#include "brgemm.h"
#include "dense_gemm.h"
#include "isa.h"
#include "train_step.h"

namespace aecomp {
namespace cpu {
namespace {

using at::Tensor;
using brg::bf16;

using brg::grow;  // 64-byte aligned scratch

Tensor rows_2d(const Tensor& t) {
  Tensor f = flatten_rows(t);
  return (f.stride(1) == 1 && f.stride(0) >= f.size(1)) ? f : f.contiguous();
}

// Float32 denormals (|v| < 2^-126) as zero (MXCSR FTZ + DAZ) while the optimizer runs, restored
// after. Adam's exp_avg of a weight whose gradient stays 0 decays into denormals within a few
// hundred steps, and x86 arithmetic on denormals is slow: measured 2x on the whole step at batch
// 64 (819 against 2010 us, one thread). The bf16 conversions flush them already; here an
// exp_avg / exp_avg_sq entry below 1.2e-38 becomes 0 where torch.optim keeps it (a difference
// below 1.2e-38 in the state, and none in practice in the update: m / (sqrt(v) + eps)).
struct DenormalsAreZero {
#if defined(__x86_64__)
  unsigned saved;
  DenormalsAreZero() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
  ~DenormalsAreZero() { _mm_setcsr(saved); }
#endif
};

// The optimizer as the weight-gradient sink: each finished dW tile updates its rows of W
// (and the state) in place; the bias from its gradient vector.
struct OptimSink : bf16c::WgradSink {
  std::vector<ParamUpdate>* up;
  size_t L;
  std::vector<int64_t> K;
  bool wants_weight(size_t k) const override { return (*up)[k].active; }
  void weight_tile(size_t k, const float* c, int64_t n0, int64_t j0, int64_t rows, int64_t cols) override {
    const ParamUpdate& u = (*up)[k];
    const DenormalsAreZero daz;  // this thread may be a worker of run_tiles
    const bool whole = cols == K[k];  // whole rows: one contiguous block of W and its state
    for (int64_t r = 0; r < (whole ? 1 : rows); ++r) {
      const int64_t off = (n0 + r) * K[k] + j0, n = whole ? rows * cols : cols;
      mk::optim_update(u.opt, u.p + off, u.m ? u.m + off : nullptr, u.s ? u.s + off : nullptr, c + r * cols, n);
    }
  }
  void bias(size_t k, const float* db, int64_t n) override {
    const ParamUpdate& u = (*up)[L + k];
    const DenormalsAreZero daz;
    if (db && u.active) mk::optim_update(u.opt, u.p, u.m, u.s, db, n);
  }
};

Tensor mlp_mse_train_step_bf16(const Tensor& x_in, const std::vector<Tensor>& weights,
                               const std::vector<std::optional<Tensor>>& biases, const std::string& activations,
                               const Tensor& target_in, const std::string& reduction,
                               const std::vector<double>& hyper, const std::vector<int64_t>& group_of,
                               const std::vector<std::optional<Tensor>>& state1,
                               const std::vector<std::optional<Tensor>>& state2,
                               const std::vector<std::optional<Tensor>>& steps, const std::vector<bool>& first) {
  const char* op = "aecomp::mlp_mse_train_step_bf16";
  at::NoGradGuard no_grad;
  at::AutoDispatchBelowADInplaceOrView guard;
  TORCH_CHECK(brg::bf16_enabled(), op, ": no bf16 matrix engine here (", brg::describe(),
              "); use the float32 step (aecomp._C.mlp_mse_train_step)");
  const Reduction red = std::get<1>(check_step_args(op, x_in, weights, biases, activations, target_in, reduction,
                                                    group_of, state1, state2, steps, first));
  const size_t L = weights.size();
  const Tensor x = rows_2d(x_in);
  const int64_t M = x.size(0);
  TORCH_CHECK_VALUE(M > 0, op, ": empty batch; the float32 step (mlp_mse_train_step) takes it");
  const Tensor t = flatten_rows(target_in).contiguous();
  const int64_t n_out = weights.back().size(0);
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef({M, n_out}), op, ": target has shape ", shape_str(target_in),
                    " but the chain output is [", M, ", ", n_out, "]");
  bf16c::Chain c = bf16_chain_from(op, M, weights, biases, activations);  // checked before anything changes

  // the updates, in parameter order W_0..W_{L-1}, b_0..b_{L-1}: all checked first, then begun
  std::vector<ParamUpdate> up = plan_updates(op, weights, biases, hyper, group_of, state1, state2, steps, first);
  for (size_t i = 0; i < 2 * L; ++i) begin_update(up[i], hyper, group_of[i]);
  std::vector<bool> below(L + 1, false);  // below[k]: some layer under k updates a parameter
  for (size_t i = 0; i < L; ++i) below[i + 1] = below[i] || up[i].active || up[L + i].active;

  // ---- the chain's buffers
  thread_local std::vector<std::vector<bf16>> wt_buf, wv_buf, h_buf, hv_buf, gz_buf, gzt_buf;
  for (auto* v : {&wt_buf, &wv_buf, &h_buf, &hv_buf, &gz_buf, &gzt_buf})
    if (v->size() < L) v->resize(L);
  for (size_t i = 0; i < L; ++i) {
    c.WT[i] = grow(wt_buf[i], c.wt_size(i));
    if (i > 0 && below[i]) c.WV[i] = grow(wv_buf[i], c.wv_size(i));
    c.H[i] = grow(h_buf[i], c.h_size(i));
    if (up[i].active) c.HV[i] = grow(hv_buf[i], c.hv_size(i));
    if (up[i].active) c.GZT[i] = grow(gzt_buf[i], c.gzt_size(i));
    if (i > 0 && below[i]) c.GZ[i] = grow(gz_buf[i], c.gz_size(i));
  }
  isa_count(brg::amx_enabled() ? IsaLevel::Amx : IsaLevel::Avx512);
  bf16c::pack_weights(c);  // W^T and W in bf16, before any update of this step

  // ---- forward, the loss in the top layer's epilogue, backward with the optimizer as the sink
  bf16c::pack_input(c, x.data_ptr<float>(), x.stride(0));
  bf16c::forward_hidden(c);
  const double denom = red == Reduction::Mean ? static_cast<double>(M * n_out) : 1.0;
  std::vector<float> db_top(static_cast<size_t>(n_out));
  const double total = bf16c::forward_top_mse(c, t.data_ptr<float>(), static_cast<float>(2.0 / denom), db_top.data());
  Tensor loss = at::scalar_tensor(total / denom, x.options());
  OptimSink sink;
  sink.up = &up;
  sink.L = L;
  sink.K.assign(c.dim.begin(), c.dim.end() - 1);
  bf16c::backward(c, std::move(db_top), below, sink);
  return loss;
}

}  // namespace

namespace brg {
void def_brgemm(pybind11::module& mod);  // brgemm.cpp: aecomp._C._brgemm_* (level, packing, one GEMM)
}  // namespace brg
void def_mlp_bf16(pybind11::module& mod);  // mlp_bf16.cpp: the chain ops of a user's own loop

void def_train_step_bf16(pybind11::module& mod) {
  mod.def("mlp_mse_train_step_bf16", &mlp_mse_train_step_bf16,
          "one training step of a chain autoencoder, bf16 GEMMs on the matrix engine (brgemm), float32 master "
          "weights and optimizer state updated in the weight-gradient epilogue",
          pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"),
          pybind11::arg("target"), pybind11::arg("reduction"), pybind11::arg("hyper"), pybind11::arg("group_of"),
          pybind11::arg("state1"), pybind11::arg("state2"), pybind11::arg("steps"), pybind11::arg("first"));
  brg::def_brgemm(mod);
  def_mlp_bf16(mod);
}

}  // namespace cpu
}  // namespace aecomp
