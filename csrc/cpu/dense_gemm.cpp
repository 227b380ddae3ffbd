// The dense layer GEMMs on the microkernel framework: ISA dispatch and scratch buffers (the
// kernels are in dense_gemm_isa.inc, the math in dense_gemm.h).
#include "dense_gemm.h"

#include <vector>

#include "microkernel.h"

#define AECOMP_MK_BODY "dense_gemm_isa.inc"
#include "microkernel_foreach.h"

namespace aecomp {
namespace cpu {
namespace mk {

int64_t packed_bt_size(int64_t n, int64_t k) {
  const int nr = tile_nr(active_isa());
  return ceil_div(n, nr) * nr * k;
}

void pack_weight(const float* w, int64_t n, int64_t k, int64_t ldw, float* out) {
  pack_bt(w, n, k, ldw, tile_nr(active_isa()), out);
}

void dense_fwd(const float* x, int64_t ldx, const float* wt_packed, const float* bias, float* y, int64_t ldy,
               int64_t M, int64_t N, int64_t K, int act) {
  const Isa isa = active_isa();
  AECOMP_MK_DISPATCH(isa, dense_fwd, x, ldx, wt_packed, bias, y, ldy, M, N, K, act);
}

void dense_dgrad(const float* gz, int64_t ldg, const float* w, int64_t ldw, const float* y_below, int64_t ldy,
                 int act_below, float* out, int64_t ldo, int64_t M, int64_t N_out, int64_t K_in) {
  const Isa isa = active_isa();
  const int nr = tile_nr(isa);
  std::vector<float> edge;
  const int64_t tail = K_in % nr;
  if (tail) {
    edge.resize(static_cast<size_t>(N_out * nr));
    pack_b_edge(w, N_out, ldw, K_in - tail, tail, nr, edge.data());
  }
  AECOMP_MK_DISPATCH(isa, dense_dgrad, gz, ldg, w, ldw, edge.data(), y_below, ldy, act_below, out, ldo, M, K_in,
                     N_out);
}

void dense_wgrad(const float* gz, int64_t ldg, const float* h, int64_t ldh, int64_t M, int64_t N_out, int64_t K_in,
                 float* dw, int64_t lddw, double* db, const OptimArgs* opt, float* p, float* m, float* s) {
  const Isa isa = active_isa();
  const int nr = tile_nr(isa), mr = tile_mr(isa);
  std::vector<float> at(static_cast<size_t>(ceil_div(N_out, mr) * mr * M));
  pack_at(gz, M, N_out, ldg, mr, at.data(), db);
  std::vector<float> edge;
  const int64_t tail = K_in % nr;
  if (tail) {
    edge.resize(static_cast<size_t>(M * nr));
    pack_b_edge(h, M, ldh, K_in - tail, tail, nr, edge.data());
  }
  AECOMP_MK_DISPATCH(isa, dense_wgrad, at.data(), h, ldh, edge.data(), M, N_out, K_in, dw, lddw, opt, p, m, s);
}

void optim_update(const OptimArgs& opt, float* p, float* m, float* s, const float* g, int64_t n) {
  const Isa isa = active_isa();
  AECOMP_MK_DISPATCH(isa, optim_update, opt, p, m, s, g, n);
}

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
