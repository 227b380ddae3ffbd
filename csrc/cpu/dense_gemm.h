// The dense layer GEMMs of the CPU backend on the microkernel framework (microkernel.h),
// float32, raw row-major buffers (no torch here).
//
// Forward   y  = act(x @ W^T + b)                 x [M, K], W [N, K], y [M, N]
//           B = W^T read from packed panels (pack_bt, once per weight version); bias and
//           activation in the epilogue, before the one store.
// Dgrad     out = (gz @ W) * act_below'(y_below)  gz [M, N_out], W [N_out, K_in], out [M, K_in]
//           W is read in place (full panels) or from one packed edge panel; act' of the layer
//           below is applied in the epilogue, so the chain's next gz is stored once.
//           act_below = -1: plain store (the dx of the first layer).
// Wgrad     dW = gz^T @ h,  db = sum_rows gz       gz [M, N_out], h [M, K_in], dW [N_out, K_in]
//           gz^T packed once (pack_at) with db summed in double in the same pass; h read in
//           place. The epilogue stores dW, or applies an optimizer step to W with it (below),
//           so no gradient tensor is written and read back.
// Optimizer (OptimArgs), element-wise on the finished gradient tile, torch.optim's formulas:
//   Adam/AdamW: g += wd p (Adam) | p *= 1 - lr wd (AdamW);  m += (1 - b1)(g - m);
//               v = b2 v + (1 - b2) g^2;  p -= step_size * m / (sqrt(v) * (1 / bc2_sqrt) + eps)
//               with step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t) (computed by the caller)
//   SGD:        g += wd p;  buf = g (first step) | momentum buf + (1 - dampening) g;
//               g = g + momentum buf (nesterov) | buf;  p -= lr g     (momentum 0: p -= lr g)
// Precision: float32 FMA chains in ascending k (microkernel.h); db in double; results do not
// depend on the thread count.
#pragma once

#include <cstdint>

namespace aecomp {
namespace cpu {
namespace mk {

struct OptimArgs {
  enum Kind : int { Adam = 1, Sgd = 2 };
  int kind = Adam;
  float lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  float step_size = 0, bc2_sqrt = 1;  // Adam: lr / (1 - beta1^t), sqrt(1 - beta2^t)
  bool decoupled = false;             // AdamW
  float momentum = 0, dampening = 0;  // SGD
  bool nesterov = false;
  bool first = false;                 // SGD: no momentum buffer yet (it becomes g)
};

// Floats of packed W^T for a weight with n rows and k columns (the active ISA's NR).
int64_t packed_bt_size(int64_t n, int64_t k);
// Packs W [n, k] (row stride ldw) into `out` (packed_bt_size floats) for dense_fwd.
void pack_weight(const float* w, int64_t n, int64_t k, int64_t ldw, float* out);

void dense_fwd(const float* x, int64_t ldx, const float* wt_packed, const float* bias, float* y, int64_t ldy,
               int64_t M, int64_t N, int64_t K, int act);
void dense_dgrad(const float* gz, int64_t ldg, const float* w, int64_t ldw, const float* y_below, int64_t ldy,
                 int act_below, float* out, int64_t ldo, int64_t M, int64_t N_out, int64_t K_in);
// dW into `dw` (row stride lddw) when opt is null, else the optimizer step on p (with its state
// m, s; same [N_out, K_in] contiguous layout as p). db (length N_out, may be null) gets the
// bias gradient in float.
void dense_wgrad(const float* gz, int64_t ldg, const float* h, int64_t ldh, int64_t M, int64_t N_out, int64_t K_in,
                 float* dw, int64_t lddw, double* db, const OptimArgs* opt, float* p, float* m, float* s);
// The optimizer step on a vector (the bias): p, m, s, g of length n.
void optim_update(const OptimArgs& opt, float* p, float* m, float* s, const float* g, int64_t n);

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
