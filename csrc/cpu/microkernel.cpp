// The ISA-independent parts of the microkernel framework: ISA choice, threading, packing.
#include "microkernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if AECOMP_MK_X86
#define AECOMP_MK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AECOMP_MK_CLONES
#endif

namespace aecomp {
namespace cpu {
namespace mk {

static Isa detect_isa() {
  Isa hw = Isa::Generic;
#if AECOMP_MK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) hw = Isa::Avx2;
  if (hw == Isa::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    hw = Isa::Avx512;
#endif
  const char* cap = std::getenv("AECOMP_CPU_ISA");
  if (cap != nullptr) {
    Isa want = hw;
    if (std::strcmp(cap, "generic") == 0) want = Isa::Generic;
    if (std::strcmp(cap, "avx2") == 0) want = Isa::Avx2;
    if (std::strcmp(cap, "avx512") == 0) want = Isa::Avx512;
    if (static_cast<int>(want) < static_cast<int>(hw)) hw = want;
  }
  return hw;
}

Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

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

// Transposes in blocks of kKb k's, so the destination block (kKb x nr floats) stays in L1
// while the nr source rows are read contiguously.
AECOMP_MK_CLONES void pack_bt(const float* __restrict w, int64_t n, int64_t k, int64_t ldw, int nr,
                              float* __restrict out) {
  constexpr int64_t kKb = 16;
  const int64_t panels = ceil_div(n, nr);
  for (int64_t p = 0; p < panels; ++p) {
    float* __restrict dst = out + p * k * nr;
    const int64_t j0 = p * nr;
    const int64_t cols = std::min<int64_t>(nr, n - j0);
    if (cols < nr) std::memset(dst, 0, sizeof(float) * k * nr);
    for (int64_t k0 = 0; k0 < k; k0 += kKb) {
      const int64_t kb = std::min<int64_t>(kKb, k - k0);
      for (int64_t jj = 0; jj < cols; ++jj) {
        const float* __restrict src = w + (j0 + jj) * ldw + k0;
        float* __restrict d = dst + k0 * nr + jj;
        if (kb == kKb) {
          for (int64_t kk = 0; kk < kKb; ++kk) d[kk * nr] = src[kk];
        } else {
          for (int64_t kk = 0; kk < kb; ++kk) d[kk * nr] = src[kk];
        }
      }
    }
  }
}

AECOMP_MK_CLONES void pack_b_edge(const float* __restrict b, int64_t k, int64_t ld, int64_t j0, int64_t ncols,
                                  int nr, float* __restrict out) {
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* __restrict src = b + kk * ld + j0;
    float* __restrict dst = out + kk * nr;
    for (int jj = 0; jj < nr; ++jj) dst[jj] = jj < ncols ? src[jj] : 0.0f;
  }
}

AECOMP_MK_CLONES void pack_at(const float* __restrict g, int64_t m, int64_t n, int64_t ldg, int mr,
                              float* __restrict out, double* __restrict colsum) {
  const int64_t blocks = ceil_div(n, mr);
  if (colsum) std::fill(colsum, colsum + n, 0.0);
  for (int64_t r = 0; r < blocks; ++r) {
    const int64_t n0 = r * mr;
    const int rows = static_cast<int>(std::min<int64_t>(mr, n - n0));
    float* __restrict dst = out + r * m * mr;
    for (int64_t i = 0; i < m; ++i) {
      const float* __restrict src = g + i * ldg + n0;
      for (int jj = 0; jj < mr; ++jj) dst[i * mr + jj] = jj < rows ? src[jj] : 0.0f;
    }
  }
  if (colsum) {
    for (int64_t i = 0; i < m; ++i) {
      const float* __restrict src = g + i * ldg;
      for (int64_t j = 0; j < n; ++j) colsum[j] += static_cast<double>(src[j]);
    }
  }
}

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
