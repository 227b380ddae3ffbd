// A chain of linear+activation layers in bfloat16 on the CPU's matrix engine (brgemm.h): the
// forward, the fused MSE loss entry, and the backward with a pluggable weight-gradient sink.
// Shared by the fused training step (train_step_bf16.cpp: the sink is the optimizer, applied to
// float32 master weights in the wgrad epilogue) and the bf16 chain ops of a user's own loop
// (mlp_bf16.cpp: the sink writes float32 gradients).
//
// ---------------------------------------------------------------------------- the math
// Layer i: h_{i+1} = act_i(h_i W_i^T + b_i), i < L, h_0 = x; act' from the saved output y = h_{i+1}
// (relu: !(y <= 0), NaN passes like torch's threshold_backward; sigmoid: y (1 - y); none: 1).
//   forward   C = bf16(h_i) bf16(W_i)^T in float32 (brgemm), epilogue act(C + b) in float32,
//             stored as bf16 (the next GEMM's operand and the saved output) - the top layer's
//             output stays float32 (returned, or consumed by the loss in its epilogue)
//   loss      gz_{L-1} = s (y - t) act'(y), L = sum (y - t)^2 (s = 2/n, n = numel for 'mean')
//   backward  dgrad  C = bf16(gz_k) bf16(W_k), gz_{k-1} = C * act_{k-1}'(h_k), db_{k-1} = sum_rows
//             wgrad  dW_k = bf16(gz_k)^T bf16(h_k) in float32 tiles, handed to the sink
// Error model: every GEMM operand rounded to bf16 once (u = 2^-8), products exact, float32 sums:
//   |C - C_exact| <= (2u + u^2) sum_k |a_k b_k| per GEMM (see train_step_bf16.cpp).
//
// ---------------------------------------------------------------------------- buffers
// Layer i, K = in, N = out, M = batch; Mp, Kp, Np rounded up to even (zero padding):
//   WT_i  [Kp/2][N][2]   W_i^T in VNNI over K            the forward's B
//   WV_i  [Np/2][K][2]   W_i in VNNI over N              the dgrad's B (layers 1..L-1)
//   H_i   [M][Kp]        h_i row-major bf16               the forward's A; act' of layer i-1
//   HV_i  [Mp/2][K][2]   h_i in VNNI over the batch       the wgrad's B
//   GZ_i  [M][Np]        gz_i row-major bf16              the dgrad's A
//   GZT_i [N][Mp]        gz_i^T                           the wgrad's A
// The caller owns them (sizes from the functions below); null where not needed.
#pragma once

#include <cstdint>
#include <vector>

#include "brgemm.h"

namespace aecomp {
namespace cpu {
namespace bf16c {

using brg::bf16;

inline int64_t even(int64_t n) { return n + (n & 1); }

struct Chain {
  int64_t M = 0;
  std::vector<int64_t> dim;          // dim[0] = in features, dim[i + 1] = out features of layer i
  std::vector<const float*> w, b;    // float32 weights [N, K] (contiguous), biases [N] or null
  std::vector<int> act;              // 0 none, 1 relu, 2 sigmoid
  std::vector<bf16*> WT, WV, H, HV, GZ, GZT;
  size_t layers() const { return w.size(); }
  int64_t wt_size(size_t i) const { return even(dim[i]) * dim[i + 1]; }
  int64_t wv_size(size_t i) const { return even(dim[i + 1]) * dim[i]; }
  int64_t h_size(size_t i) const { return M * even(dim[i]); }
  int64_t hv_size(size_t i) const { return even(M) * dim[i]; }
  int64_t gz_size(size_t i) const { return M * even(dim[i + 1]); }
  int64_t gzt_size(size_t i) const { return dim[i + 1] * even(M); }
};

// WT_i for every layer, WV_i where non-null, from the float32 weights.
void pack_weights(const Chain& c);
// H_0 (and HV_0 if non-null) from x [M, K0] (row stride ldx), one pass.
void pack_input(const Chain& c, const float* x, int64_t ldx);
// Layers 0 .. L-2: H_{i+1} (and HV_{i+1} where non-null).
void forward_hidden(const Chain& c);
// The top layer into y [M, N] float32 (act applied).
void forward_top(const Chain& c, float* y);
// The top layer fused with the MSE loss against t [M, N]: returns sum (y - t)^2 (double);
// writes GZ_{L-1} / GZT_{L-1} where non-null and db (length N, the top bias gradient).
double forward_top_mse(const Chain& c, const float* t, float scale, float* db);
// gz_{L-1} = g * act'(y) from the incoming gradient g and the top output y (both [M, N]
// float32): GZ/GZT of the top layer and db. For the ops' backward.
void top_grad(const Chain& c, const float* g, const float* y, float* db);

// What the backward does with the weight gradient of each layer.
struct WgradSink {
  virtual ~WgradSink() = default;
  virtual bool wants_weight(size_t k) const = 0;
  // dW_k[n0 .. n0 + rows, j0 .. j0 + cols] = c [rows][cols] (contiguous).
  virtual void weight_tile(size_t k, const float* c, int64_t n0, int64_t j0, int64_t rows, int64_t cols) = 0;
  virtual void bias(size_t k, const float* db, int64_t n) = 0;  // db null: layer k has no bias to update
};

// Layers L-1 .. 0 (db_top: the top layer's bias gradient): dgrad where layer k-1 or below needs a
// gradient (need_below[k]), the sink's wgrad and bias. gx (if non-null, [M, K0] float32) gets
// the input gradient (needs WV_0).
void backward(const Chain& c, std::vector<float> db_top, const std::vector<bool>& need_below, WgradSink& sink,
              float* gx = nullptr);

}  // namespace bf16c
}  // namespace cpu
}  // namespace aecomp
