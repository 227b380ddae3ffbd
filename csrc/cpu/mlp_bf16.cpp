// The bf16 chain as a differentiable op for a user's own training loop (aecomp.accelerate(model,
// precision="bf16") -> aecomp/ops/_bf16.py): aecomp._C.mlp_bf16_forward / mlp_bf16_backward.
//
// forward   y = chain(x) with every GEMM in bf16 on the matrix engine (bf16_chain.h), float32 in
//           and out; returns y and what the backward needs, as bf16 tensors: the saved outputs
//           H_1 .. H_{L-1} (act' of the layers below), HV_k (h_k in VNNI over the batch) for the
//           weights that get a gradient, WV_k (W_k in VNNI over its rows) for the dgrads.
// backward  from the float32 gradient of y: gz = g act'(y), then the chain backward; float32
//           gradients of x (when asked), of every weight and bias asked for.
// Precision: as the fused bf16 step (error model in bf16_chain.h / train_step_bf16.cpp); the
// parameters stay float32 and their gradients come out float32.
#include <ATen/ATen.h>
#include <torch/extension.h>

#include <vector>

#include "../aecomp.h"
#include "bf16_chain.h"
#include "brgemm.h"
#include "isa.h"
#include "train_step.h"

namespace aecomp {
namespace cpu {
namespace {

using at::Tensor;
using brg::bf16;

const char* kFwd = "aecomp._C.mlp_bf16_forward";

}  // namespace

bf16c::Chain bf16_chain_from(const char* op, int64_t M, const std::vector<Tensor>& weights,
                             const std::vector<std::optional<Tensor>>& biases, const std::string& activations) {
  TORCH_CHECK(brg::bf16_enabled(), op, ": no bf16 matrix engine here (", brg::describe(), ")");
  const size_t L = weights.size();
  TORCH_CHECK_VALUE(L >= 1 && biases.size() == L, op, ": expected as many biases (or None) as weights, got ",
                    biases.size(), " and ", L);
  const std::vector<Act> acts = parse_activations(op, activations, L);
  bf16c::Chain c;
  c.M = M;
  c.dim.push_back(weights[0].size(1));
  for (size_t i = 0; i < L; ++i) {
    const Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.is_cpu() &&
                          w.size(1) == c.dim.back(),
                      op, ": weights[", i, "] must be a contiguous float32 CPU [out, ", c.dim.back(), "] tensor, got ",
                      w.scalar_type(), " ", shape_str(w));
    if (biases[i].has_value())
      TORCH_CHECK_VALUE(biases[i]->scalar_type() == at::kFloat && biases[i]->is_contiguous() &&
                            biases[i]->is_cpu() && biases[i]->dim() == 1 && biases[i]->size(0) == w.size(0),
                        op, ": biases[", i, "] must be a contiguous float32 CPU [", w.size(0), "] tensor, got ",
                        biases[i]->scalar_type(), " ", shape_str(*biases[i]), " on ", biases[i]->device());
    c.dim.push_back(w.size(0));
    c.w.push_back(w.data_ptr<float>());
    c.b.push_back(biases[i].has_value() ? biases[i]->data_ptr<float>() : nullptr);
    c.act.push_back(static_cast<int>(acts[i]));
  }
  c.WT.assign(L, nullptr);
  c.WV.assign(L, nullptr);
  c.H.assign(L, nullptr);
  c.HV.assign(L, nullptr);
  c.GZ.assign(L, nullptr);
  c.GZT.assign(L, nullptr);
  return c;
}

namespace {

Tensor bf16_buffer(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kBFloat16)); }
bf16* ptr(const Tensor& t) { return t.numel() ? t.data_ptr<c10::BFloat16>() : nullptr; }

// [y, H_1..H_{L-1}, HV_0..HV_{L-1}, WV_0..WV_{L-1}] (empty tensors where not needed).
std::vector<Tensor> mlp_bf16_forward(const Tensor& x, const std::vector<Tensor>& weights,
                                     const std::vector<std::optional<Tensor>>& biases, const std::string& activations,
                                     const std::vector<bool>& need_w, const std::vector<bool>& need_b, bool need_x) {
  at::NoGradGuard no_grad;
  TORCH_CHECK_VALUE(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_cpu() && x.stride(1) == 1, kFwd,
                    ": x must be a float32 CPU [batch, features] tensor with unit column stride, got ",
                    x.scalar_type(), " ", shape_str(x));
  const int64_t M = x.size(0);
  TORCH_CHECK_VALUE(M > 0, kFwd, ": empty batch (the float32 op takes it)");
  bf16c::Chain c = bf16_chain_from(kFwd, M, weights, biases, activations);
  const size_t L = weights.size();
  TORCH_CHECK_VALUE(need_w.size() == L && need_b.size() == L, kFwd, ": need_w / need_b: one flag per layer");
  TORCH_CHECK_VALUE(x.size(1) == c.dim[0], kFwd, ": x has ", x.size(1), " features but weights[0] takes ", c.dim[0]);
  bool any = need_x;
  for (size_t i = 0; i < L; ++i) any = any || need_w[i] || need_b[i];
  std::vector<Tensor> out(1 + (L - 1) + 2 * L);
  std::vector<Tensor> wt(L);
  for (size_t i = 0; i < L; ++i) {
    wt[i] = bf16_buffer(c.wt_size(i));
    c.WT[i] = ptr(wt[i]);
  }
  std::vector<Tensor> h(L);
  for (size_t i = 0; i < L; ++i) {
    h[i] = bf16_buffer(c.h_size(i));
    c.H[i] = ptr(h[i]);
  }
  std::vector<Tensor> hv(L), wv(L);
  // gradient of layer k's weight needs HV_k; a gradient anywhere below layer k (k >= 1) needs WV_k
  std::vector<bool> below(L + 1, need_x);
  for (size_t i = 0; i < L; ++i) below[i + 1] = below[i] || need_w[i] || need_b[i];
  for (size_t i = 0; i < L; ++i) {
    hv[i] = any && need_w[i] ? bf16_buffer(c.hv_size(i)) : bf16_buffer(0);
    c.HV[i] = ptr(hv[i]);
    wv[i] = any && below[i] ? bf16_buffer(c.wv_size(i)) : bf16_buffer(0);
    c.WV[i] = ptr(wv[i]);
  }
  isa_count(brg::amx_enabled() ? IsaLevel::Amx : IsaLevel::Avx512);
  bf16c::pack_weights(c);
  bf16c::pack_input(c, x.data_ptr<float>(), x.stride(0));
  bf16c::forward_hidden(c);
  Tensor y = at::empty({M, c.dim[L]}, x.options());
  bf16c::forward_top(c, y.data_ptr<float>());
  out[0] = y;
  for (size_t i = 1; i < L; ++i) out[i] = any ? h[i] : bf16_buffer(0);
  for (size_t i = 0; i < L; ++i) out[L + i] = hv[i];
  for (size_t i = 0; i < L; ++i) out[2 * L + i] = wv[i];
  return out;
}

struct GradSink : bf16c::WgradSink {
  std::vector<Tensor>* gw;
  std::vector<Tensor>* gb;
  bool wants_weight(size_t k) const override { return (*gw)[k].defined(); }
  void weight_tile(size_t k, const float* c, int64_t n0, int64_t j0, int64_t rows, int64_t cols) override {
    float* d = (*gw)[k].data_ptr<float>();
    const int64_t K = (*gw)[k].size(1);
    for (int64_t r = 0; r < rows; ++r) std::copy(c + r * cols, c + (r + 1) * cols, d + (n0 + r) * K + j0);
  }
  void bias(size_t k, const float* db, int64_t n) override {
    if (db && (*gb)[k].defined()) std::copy(db, db + n, (*gb)[k].data_ptr<float>());
  }
};

// [gx, gW_0..gW_{L-1}, gb_0..gb_{L-1}]: undefined (None) where not asked for.
std::vector<std::optional<Tensor>> mlp_bf16_backward(const Tensor& grad, const Tensor& x, const Tensor& y,
                                                     const std::vector<Tensor>& weights,
                                                     const std::vector<std::optional<Tensor>>& biases,
                                                     const std::string& activations, const std::vector<Tensor>& saved,
                                                     const std::vector<bool>& need_w, const std::vector<bool>& need_b,
                                                     bool need_x) {
  const char* op = "aecomp._C.mlp_bf16_backward";
  at::NoGradGuard no_grad;
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be [batch, features], got ", shape_str(x));
  const int64_t M = x.size(0);
  bf16c::Chain c = bf16_chain_from(op, M, weights, biases, activations);
  const size_t L = weights.size();
  TORCH_CHECK_VALUE(saved.size() == (L - 1) + 2 * L && need_w.size() == L && need_b.size() == L, op,
                    ": the saved tensors of mlp_bf16_forward and one need flag per layer, please");
  TORCH_CHECK_VALUE(grad.sizes() == y.sizes() && y.sizes() == at::IntArrayRef({M, c.dim[L]}), op, ": grad ",
                    shape_str(grad), " and y ", shape_str(y), " must both be [", M, ", ", c.dim[L], "]");
  const Tensor g = grad.scalar_type() == at::kFloat ? grad.contiguous() : grad.to(at::kFloat).contiguous();
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat && y.is_cpu() && grad.is_cpu(), op,
                    ": y (float32) and grad must be CPU tensors, got y ", y.scalar_type(), " on ", y.device(),
                    ", grad on ", grad.device());
  // Each saved tensor is empty (not saved) or exactly what mlp_bf16_forward made for this batch
  // and these weights: anything else would be read past its end.
  auto check_saved = [&](const Tensor& t, int64_t want, const char* what, size_t i) {
    if (t.numel() == 0) return;
    TORCH_CHECK_VALUE(t.scalar_type() == at::kBFloat16 && t.is_cpu() && t.is_contiguous() && t.numel() == want, op,
                      ": saved ", what, "[", i, "] must be a contiguous bfloat16 CPU tensor of ", want,
                      " elements (mlp_bf16_forward's, for this batch and these weights), got ", t.scalar_type(), " ",
                      shape_str(t));
  };
  for (size_t i = 1; i < L; ++i) check_saved(saved[i - 1], c.h_size(i), "H", i);
  for (size_t i = 0; i < L; ++i) check_saved(saved[L - 1 + i], c.hv_size(i), "HV", i);
  for (size_t i = 0; i < L; ++i) check_saved(saved[2 * L - 1 + i], c.wv_size(i), "WV", i);
  std::vector<Tensor> keep;
  for (size_t i = 1; i < L; ++i) c.H[i] = ptr(saved[i - 1]);
  for (size_t i = 0; i < L; ++i) c.HV[i] = ptr(saved[L - 1 + i]);
  for (size_t i = 0; i < L; ++i) c.WV[i] = ptr(saved[2 * L - 1 + i]);
  std::vector<bool> below(L + 1, need_x);
  for (size_t i = 0; i < L; ++i) below[i + 1] = below[i] || need_w[i] || need_b[i];
  for (size_t i = 1; i < L; ++i)
    TORCH_CHECK_VALUE(!below[i] || c.H[i], op, ": layer ", i, " has no saved input activation for the gradient below it");
  for (size_t i = 0; i < L; ++i) {
    TORCH_CHECK_VALUE(!need_w[i] || c.HV[i], op, ": layer ", i, " has no saved input for its weight gradient");
    TORCH_CHECK_VALUE(!(i > 0 ? below[i] : need_x) || c.WV[i], op, ": layer ", i, " has no saved weight for its dgrad");
    if (need_w[i]) {
      keep.push_back(bf16_buffer(c.gzt_size(i)));
      c.GZT[i] = ptr(keep.back());
    }
    if ((i > 0 && below[i]) || (i == 0 && need_x)) {
      keep.push_back(bf16_buffer(c.gz_size(i)));
      c.GZ[i] = ptr(keep.back());
    }
  }
  std::vector<Tensor> gw(L), gb(L);
  for (size_t i = 0; i < L; ++i) {
    if (need_w[i]) gw[i] = at::empty({c.dim[i + 1], c.dim[i]}, y.options());
    if (need_b[i] && c.b[i]) gb[i] = at::empty({c.dim[i + 1]}, y.options());
  }
  isa_count(brg::amx_enabled() ? IsaLevel::Amx : IsaLevel::Avx512);
  std::vector<float> db_top(static_cast<size_t>(c.dim[L]));
  bf16c::top_grad(c, g.data_ptr<float>(), y.contiguous().data_ptr<float>(), db_top.data());
  GradSink sink;
  sink.gw = &gw;
  sink.gb = &gb;
  Tensor gx = need_x ? at::empty({M, c.dim[0]}, y.options()) : Tensor();
  bf16c::backward(c, std::move(db_top), below, sink, need_x ? gx.data_ptr<float>() : nullptr);
  std::vector<std::optional<Tensor>> out;
  out.push_back(need_x ? std::optional<Tensor>(gx) : std::nullopt);
  for (auto& t : gw) out.push_back(t.defined() ? std::optional<Tensor>(t) : std::nullopt);
  for (auto& t : gb) out.push_back(t.defined() ? std::optional<Tensor>(t) : std::nullopt);
  return out;
}

}  // namespace

void def_mlp_bf16(pybind11::module& mod) {
  mod.def("mlp_bf16_forward", &mlp_bf16_forward, "the chain forward in bf16 on the matrix engine (float32 in/out)",
          pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"),
          pybind11::arg("need_w"), pybind11::arg("need_b"), pybind11::arg("need_x"));
  mod.def("mlp_bf16_backward", &mlp_bf16_backward, "the chain backward in bf16 on the matrix engine",
          pybind11::arg("grad"), pybind11::arg("x"), pybind11::arg("y"), pybind11::arg("weights"),
          pybind11::arg("biases"), pybind11::arg("activations"), pybind11::arg("saved"), pybind11::arg("need_w"),
          pybind11::arg("need_b"), pybind11::arg("need_x"));
}

}  // namespace cpu
}  // namespace aecomp
