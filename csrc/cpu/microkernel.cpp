// The ISA-independent parts of the microkernel framework: ISA choice, threading, and the
// packing entry points (their per-ISA bodies: packing_isa.inc).
#include "microkernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#define AECOMP_MK_BODY "packing_isa.inc"
#include "microkernel_foreach.h"

namespace aecomp {
namespace cpu {
namespace mk {

Isa active_isa() {
  static const Isa isa = min_level(isa_level(), Isa::Avx512);  // (a refused cap throws every call)
  return isa;
}

const char* isa_name(Isa isa) { return isa_level_name(isa); }

int tile_mr(Isa isa) {
  switch (isa) {
#if AECOMP_MK_X86
    case Isa::Avx512: return avx512::V::MR;
    case Isa::Avx2: return avx2::V::MR;
#endif
    default: return generic::V::MR;
  }
}

int tile_nr(Isa isa) {
  switch (isa) {
#if AECOMP_MK_X86
    case Isa::Avx512: return avx512::V::NR;
    case Isa::Avx2: return avx2::V::NR;
#endif
    default: return generic::V::NR;
  }
}

void run_tiles(int64_t ntiles, int64_t flops, TileFn fn, void* ctx) {
  if (ntiles <= 0) return;
  const int64_t threads = flops < kParallelMinFlops || at::in_parallel_region()
                              ? 1
                              : std::min<int64_t>(at::get_num_threads(), ntiles);
  if (threads <= 1) {
    fn(ctx, 0, ntiles);
    return;
  }
  const int64_t grain = ceil_div(ntiles, threads);
  at::parallel_for(0, ntiles, grain, [&](int64_t t0, int64_t t1) { fn(ctx, t0, t1); });
}

void pack_bt(const float* w, int64_t n, int64_t k, int64_t ldw, int nr, float* out) {
  AECOMP_MK_DISPATCH(active_isa(), pack_bt, w, n, k, ldw, nr, out);
}

void pack_b_edge(const float* b, int64_t k, int64_t ld, int64_t j0, int64_t ncols, int nr, float* out) {
  AECOMP_MK_DISPATCH(active_isa(), pack_b_edge, b, k, ld, j0, ncols, nr, out);
}

void pack_at(const float* g, int64_t m, int64_t n, int64_t ldg, int mr, float* out, double* colsum) {
  AECOMP_MK_DISPATCH(active_isa(), pack_at, g, m, n, ldg, mr, out, colsum);
}

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
