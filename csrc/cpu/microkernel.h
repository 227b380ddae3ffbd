// The register-blocked GEMM microkernel framework of the CPU backend (float32).
//
// ONE framework, used by the training kernels (dense_gemm.cpp: forward, dgrad, wgrad with the
// optimizer fused) and by the packed-weight inference kernels (int8 weights with per-channel
// scales, b-bit shared-weight codes + codebook). This comment is the contract; extend it,
// don't break it.
//
// ---------------------------------------------------------------------------- the math
//   C[M, N] = epilogue( sum_k A(i, k) * B(k, j) ),   i < M, j < N, k < K
// computed in tiles of MR x NR: one tile of C lives in MR x NV vector registers (NR = NV * L,
// L = lanes of the ISA), the k loop runs over the WHOLE of K in one go (no K blocking), so
// an epilogue always sees the finished sum of its tile, exactly once:
//   for k in 0..K-1 (ascending):   acc[i][v] = fma(A(i, k), B(k, v*L .. v*L+L-1), acc[i][v])
// The forward of a layer is A = x [M, K] (batch rows), B = W^T (W is [N, K] like nn.Linear);
// dgrad is A = gz [M, N_out], B = W [N_out, K_in]; wgrad is A = gz^T [N_out, M], B = h [M, K_in].
//
// ---------------------------------------------------------------------------- precision
// - float32 inputs, float32 accumulation with one FMA per (i, j, k) in ascending k: every C
//   element is the same fused-multiply-add chain whatever the tile shape, the tile order or
//   the thread count. Threads split the TILES of C, never K, so results are bit-identical for
//   any thread count (tests/test_microkernel.py checks this). The AVX-512 and AVX2 paths are
//   the same FMA chain (same bits); the portable path may round a*b+c twice (float tolerance).
// - Column sums that epilogues/packers reduce (bias gradients) are accumulated in double, in
//   ascending row order, and rounded to float once.
//
// ---------------------------------------------------------------------------- ISAs
// Three instruction sets are compiled from the same source (GCC `#pragma GCC target` over a
// body included once per ISA, see microkernel_foreach.h), each in its own namespace:
//   mk::avx512  (AVX-512 F/BW/DQ/VL + FMA)  L = 16, float tile MR x NR = 8 x 32
//   mk::avx2    (AVX2 + FMA)                L = 8,  float tile 6 x 16
//   mk::generic (baseline x86-64 / any CPU) L = 8,  float tile 4 x 8 (plain C++ lanes)
// mk::active_isa() is the level of isa.h (the CPU's, capped by AECOMP_CPU_ISA, decided once),
// clamped to avx512 (the amx level runs the avx512 microkernels), so the tests run every path
// on one machine. Dispatch with AECOMP_MK_DISPATCH(isa, fn, args...), which also counts the
// level that ran (isa.h: isa_count). Every ISA-specific function of the CPU backend goes
// through this dispatch: no target_clones / __builtin_cpu_supports elsewhere (a test checks).
//
// ---------------------------------------------------------------------------- the pieces
// In each ISA namespace (mk::avx512 etc.) the body (microkernel_isa.inc) defines:
//
//   struct V          the vector ops: L, vec, zero, set1, load, load_n (masked, zero fill),
//                     store, store_n (masked), add/sub/mul/div/fmadd/min/max/sqrt,
//                     relu_mask (y <= 0 ? 0 : x: a NaN y passes x, as torch's threshold_backward),
//                     pow2i, load_i8/load_u8 (L int8 -> L float
//                     lanes). Also MR, NV, NR: the float tile. (Defined in this header.)
//   Tile<MR, NV>      the accumulators: vec a[MR][NV].
//   exp_clamped, sigmoid, apply_act<ACT>, act_grad<ACT>   vector math for epilogues
//                     (ACT 0 none, 1 relu, 2 sigmoid; NaN propagates).
//
//   A operand ("A source"): any type with   float at(int i, int64_t k) const
//     returning A(i0 + i, k) for i in [0, MR). Rows i >= mr (the edge of M) must still read
//     valid memory (their results are discarded). Given: RowsA<MR> (row pointers into a
//     row-major matrix, edge rows repeat the last row), PackedA<MR> (packed [K][MR]).
//
//   B operand ("panel loader"): any type with   vec load(int64_t k, int v) const
//     returning B(k, j0 + v*L .. j0 + v*L + L - 1) as float lanes, v in [0, NV). Lanes past
//     the edge of N must be finite (zero in the packed layouts) and are discarded. Given:
//     PanelB {p, ld}: float rows at p + k*ld (a packed panel has ld = NR). An int8 loader
//     returns V::load_i8(...) and applies the per-channel scale in its epilogue; a codebook
//     loader decodes codes to floats in registers. Loaders are plain structs written in
//     ISA-generic code (use V::), compiled per ISA like the body (microkernel_foreach.h).
//
//   epilogue: a callable with a TEMPLATE call operator
//       template <int MR, int NV> void operator()(Tile<MR, NV>& t, int64_t i0, int64_t j0, int mr, int nr)
//     (the last row block of M may run a shorter tile, MR' in {1, 2, 4}, so a batch of 1 does
//     not pay for MR rows), called once per tile after the whole K loop; it owns the single store of the tile
//     (use V::store_n for the column edge: columns [nr, NR) of the tile are not in C).
//     Given: BiasActStore<ACT> (C = act(acc + b), act 0 none / 1 relu / 2 sigmoid),
//     ActGradStore<ACT> (C = acc * act'(Y) with act' from the saved output Y: relu Y > 0,
//     sigmoid Y (1 - Y); the dgrad of a chain hands the layer below its g * act'(y) directly).
//     A weight-gradient epilogue may instead apply an optimizer update to the weight tile it
//     just finished (csrc/cpu/dense_gemm.cpp: Adam / AdamW / SGD), so no gradient is stored.
//
//   accumulate<MR, NV>(tile, K, a, b)      the microkernel proper (K loop, registers only)
//   tile_rows<MR, NV>(K, a, b, epi, i0, j0, mr, nr)   one tile (shorter tile for mr < MR)
//   gemm_tiles<MR, NV>(M, N, K, make_a, make_b, epi, t0, t1)
//     runs tiles [t0, t1) of the grid; tile t covers column panel p = t / ceil(M / MR) and
//     row block r = t % ceil(M / MR) (panel-major: consecutive tiles reuse the B panel).
//     make_a(i0, mr) -> A source, make_b(p, j0, nr) -> panel loader.
//   mk::run_tiles(ntiles, flops, f)  (microkernel.cpp) splits [0, ntiles) over threads:
//     ONE thread below kParallelMinFlops (on a 2-vCPU VM a small 2-thread GEMM was 80x
//     slower), at most at::get_num_threads() above; the split never changes the results.
//
// ---------------------------------------------------------------------------- packed layouts
// - B panels ("packed W^T", pack_bt): for a weight W [N, K] (row stride ldw), panel p holds
//   columns j = p*NR .. p*NR+NR-1 of B = W^T as [K][NR] floats, zero-padded past N; panels are
//   consecutive: offset p * K * NR. Size ceil(N / NR) * K * NR floats. NR is the active ISA's.
// - B edge panel (pack_b_edge): columns [j0, j0 + nr) of a row-major B [K, ld] as [K][NR],
//   zero-padded; full panels of a row-major B are read in place (PanelB{B + j0, ld}).
// - A^T panels (pack_at): for G [M, N] (row stride ldg), block r holds A = G^T rows
//   n = r*MR .. r*MR+MR-1 as [M][MR] (zero-padded past N), offset r * M * MR; the column sums
//   of G (the bias gradient) come out of the same pass, in double, ascending rows.
//
// Inference kernels add their own packed layouts (int8 / codes) next to their loader, in
// their own files; they only need V, Tile, accumulate/gemm_tiles, run_tiles and this contract.
//
// ---------------------------------------------------------------------------- adding a kernel
// 1. my_kernel_isa.inc (no includes): loaders / epilogues / drivers written against V, e.g.
//      struct Int8PanelB { const int8_t* p; int64_t ld;
//        AECOMP_MK_INLINE vec load(int64_t k, int v) const { return V::load_i8(p + k * ld + v * V::L); } };
//      inline void my_gemm(const Args& a) {
//        auto make_a = [&](int64_t i0, int mr) { return rows_a<V::MR>(a.x, a.ldx, i0, mr); };
//        auto make_b = [&](int64_t p, int64_t, int) { return Int8PanelB{a.codes + p * a.K * V::NR, V::NR}; };
//        MyScaleBiasActStore epi{...};
//        auto body = [&](int64_t t0, int64_t t1) { gemm_tiles<V::MR, V::NV>(a.M, a.N, a.K, make_a, make_b, epi, t0, t1); };
//        run_tiles(ceil_div(a.M, V::MR) * ceil_div(a.N, V::NR), a.M * a.N * a.K, body);
//      }
// 2. my_kernel.cpp: include microkernel.h (and the Args struct, outside any ISA namespace),
//      #define AECOMP_MK_BODY "my_kernel_isa.inc"
//      #include "microkernel_foreach.h"
//    then call AECOMP_MK_DISPATCH(mk::active_isa(), my_gemm, args). Pack with the active
//    ISA's tile_nr() / tile_mr(). dense_gemm.cpp + dense_gemm_isa.inc are a worked example.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "isa.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AECOMP_MK_X86 1
#else
#define AECOMP_MK_X86 0
#endif

#define AECOMP_MK_INLINE inline __attribute__((always_inline))

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns about _mm512_undefined_ps() inside its own intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace aecomp {
namespace cpu {
namespace mk {

// The microkernels' levels are isa.h's generic, avx2 and avx512.
using Isa = ::aecomp::cpu::IsaLevel;

// The ISA the kernels use on this machine: isa_level() (capped by AECOMP_CPU_ISA) clamped to
// avx512. Throws c10::ValueError for a bad AECOMP_CPU_ISA.
Isa active_isa();
const char* isa_name(Isa isa);
// Records that code of `isa` runs (isa_count) and returns it: the dispatch macro's first step.
inline Isa counted(Isa isa) {
  isa_count(isa);
  return isa;
}
// The float tile (MR, NR) of an ISA: the packed layouts depend on NR.
int tile_mr(Isa isa);
int tile_nr(Isa isa);

// Work (multiply-adds) below which a GEMM runs on one thread. Measured on the shared 2-vCPU
// VM (benchmarks/bench_cpu_direct.py): with 2^25 the batch-1024 training step ran 0.85x as
// fast on 2 threads as on 1 (the second vCPU is busy with other work), so only GEMMs of more
// than 2^28 multiply-adds (e.g. 1024 x 1024 x 256) are split.
constexpr int64_t kParallelMinFlops = int64_t(1) << 28;

// Runs fn(t0, t1) over [0, ntiles) split in contiguous ranges: one thread when
// flops < kParallelMinFlops, else up to at::get_num_threads(). fn must be thread-safe and its
// results must not depend on the split (tiles are computed whole).
using TileFn = void (*)(void* ctx, int64_t t0, int64_t t1);
void run_tiles(int64_t ntiles, int64_t flops, TileFn fn, void* ctx);
template <class F>
void run_tiles(int64_t ntiles, int64_t flops, F& f) {
  run_tiles(ntiles, flops, [](void* c, int64_t t0, int64_t t1) { (*static_cast<F*>(c))(t0, t1); }, &f);
}

// Packing (ISA-independent; see "packed layouts" above). `nr`/`mr` are the ISA's NR / MR.
void pack_bt(const float* w, int64_t n, int64_t k, int64_t ldw, int nr, float* out);
void pack_b_edge(const float* b, int64_t k, int64_t ld, int64_t j0, int64_t ncols, int nr, float* out);
// G [m, n] -> A^T blocks; colsum (length n, may be null) receives the column sums of G.
void pack_at(const float* g, int64_t m, int64_t n, int64_t ldg, int mr, float* out, double* colsum);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp

// ---------------------------------------------------------------------------- per-ISA vectors
// Each struct V is defined under the target of its ISA; the ISA-generic body follows.
#if AECOMP_MK_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2")
namespace aecomp {
namespace cpu {
namespace mk {
namespace avx512 {
struct V {
  static constexpr int L = 16, MR = 8, NV = 2, NR = NV * L;
  using vec = __m512;
  static AECOMP_MK_INLINE __mmask16 mask(int n) {
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
  }
  static AECOMP_MK_INLINE vec zero() { return _mm512_setzero_ps(); }
  static AECOMP_MK_INLINE vec set1(float a) { return _mm512_set1_ps(a); }
  static AECOMP_MK_INLINE vec load(const float* p) { return _mm512_loadu_ps(p); }
  static AECOMP_MK_INLINE vec load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static AECOMP_MK_INLINE void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static AECOMP_MK_INLINE void store_n(float* p, vec v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static AECOMP_MK_INLINE vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static AECOMP_MK_INLINE vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static AECOMP_MK_INLINE vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static AECOMP_MK_INLINE vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
  static AECOMP_MK_INLINE vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  // min/max return the SECOND operand when either is NaN (x86 semantics): pass the data second.
  static AECOMP_MK_INLINE vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
  static AECOMP_MK_INLINE vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  static AECOMP_MK_INLINE vec sqrt(vec a) { return _mm512_sqrt_ps(a); }
  // y <= 0 ? 0 : x (NLE_UQ: true for a NaN y, which passes x like torch's threshold_backward)
  static AECOMP_MK_INLINE vec relu_mask(vec y, vec x) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_NLE_UQ), x);
  }
  // 2^n for integer-valued float n in [-127, 127], and the rounding of t / ln2.
  static AECOMP_MK_INLINE vec pow2i(vec shifted) {
    __m512i n = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x4B400000));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
  }
  static AECOMP_MK_INLINE vec load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static AECOMP_MK_INLINE vec load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};
}  // namespace avx512
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
namespace aecomp {
namespace cpu {
namespace mk {
namespace avx2 {
struct V {
  static constexpr int L = 8, MR = 6, NV = 2, NR = NV * L;
  using vec = __m256;
  static AECOMP_MK_INLINE __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static AECOMP_MK_INLINE vec zero() { return _mm256_setzero_ps(); }
  static AECOMP_MK_INLINE vec set1(float a) { return _mm256_set1_ps(a); }
  static AECOMP_MK_INLINE vec load(const float* p) { return _mm256_loadu_ps(p); }
  static AECOMP_MK_INLINE vec load_n(const float* p, int n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask(n));
  }
  static AECOMP_MK_INLINE void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static AECOMP_MK_INLINE void store_n(float* p, vec v, int n) {
    if (n >= 8)
      _mm256_storeu_ps(p, v);
    else if (n > 0)
      _mm256_maskstore_ps(p, mask(n), v);
  }
  static AECOMP_MK_INLINE vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static AECOMP_MK_INLINE vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static AECOMP_MK_INLINE vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static AECOMP_MK_INLINE vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static AECOMP_MK_INLINE vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static AECOMP_MK_INLINE vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  static AECOMP_MK_INLINE vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static AECOMP_MK_INLINE vec sqrt(vec a) { return _mm256_sqrt_ps(a); }
  static AECOMP_MK_INLINE vec relu_mask(vec y, vec x) {
    return _mm256_and_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_NLE_UQ), x);
  }
  static AECOMP_MK_INLINE vec pow2i(vec shifted) {
    __m256i n = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x4B400000));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
  }
  static AECOMP_MK_INLINE vec load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static AECOMP_MK_INLINE vec load_u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};
}  // namespace avx2
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
#pragma GCC pop_options
#endif  // AECOMP_MK_X86

namespace aecomp {
namespace cpu {
namespace mk {
namespace generic {
// Plain C++ lanes: the compiler vectorises what the baseline ISA allows. No FMA contraction
// is assumed (a*b+c may round twice).
struct V {
  static constexpr int L = 8, MR = 4, NV = 1, NR = NV * L;
  struct vec {
    float x[L];
  };
  template <class F>
  static AECOMP_MK_INLINE vec map(F f) {
    vec r;
    for (int l = 0; l < L; ++l) r.x[l] = f(l);
    return r;
  }
  static AECOMP_MK_INLINE vec zero() { return map([](int) { return 0.0f; }); }
  static AECOMP_MK_INLINE vec set1(float a) { return map([=](int) { return a; }); }
  static AECOMP_MK_INLINE vec load(const float* p) { return map([=](int l) { return p[l]; }); }
  static AECOMP_MK_INLINE vec load_n(const float* p, int n) { return map([=](int l) { return l < n ? p[l] : 0.0f; }); }
  static AECOMP_MK_INLINE void store(float* p, vec v) {
    for (int l = 0; l < L; ++l) p[l] = v.x[l];
  }
  static AECOMP_MK_INLINE void store_n(float* p, vec v, int n) {
    for (int l = 0; l < L && l < n; ++l) p[l] = v.x[l];
  }
  static AECOMP_MK_INLINE vec add(vec a, vec b) { return map([&](int l) { return a.x[l] + b.x[l]; }); }
  static AECOMP_MK_INLINE vec sub(vec a, vec b) { return map([&](int l) { return a.x[l] - b.x[l]; }); }
  static AECOMP_MK_INLINE vec mul(vec a, vec b) { return map([&](int l) { return a.x[l] * b.x[l]; }); }
  static AECOMP_MK_INLINE vec div(vec a, vec b) { return map([&](int l) { return a.x[l] / b.x[l]; }); }
  static AECOMP_MK_INLINE vec fmadd(vec a, vec b, vec c) {
    return map([&](int l) { return a.x[l] * b.x[l] + c.x[l]; });
  }
  static AECOMP_MK_INLINE vec min(vec a, vec b) { return map([&](int l) { return a.x[l] < b.x[l] ? a.x[l] : b.x[l]; }); }
  static AECOMP_MK_INLINE vec max(vec a, vec b) { return map([&](int l) { return a.x[l] > b.x[l] ? a.x[l] : b.x[l]; }); }
  static AECOMP_MK_INLINE vec sqrt(vec a) { return map([&](int l) { return std::sqrt(a.x[l]); }); }
  static AECOMP_MK_INLINE vec relu_mask(vec y, vec x) { return map([&](int l) { return y.x[l] <= 0.0f ? 0.0f : x.x[l]; }); }
  static AECOMP_MK_INLINE vec pow2i(vec shifted) {
    return map([&](int l) {
      int32_t b;
      std::memcpy(&b, &shifted.x[l], sizeof(b));
      b = (b - 0x4B400000 + 127) << 23;
      float f;
      std::memcpy(&f, &b, sizeof(f));
      return f;
    });
  }
  static AECOMP_MK_INLINE vec load_i8(const int8_t* p) { return map([=](int l) { return float(p[l]); }); }
  static AECOMP_MK_INLINE vec load_u8(const uint8_t* p) { return map([=](int l) { return float(p[l]); }); }
};
}  // namespace generic
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp

// The ISA-generic body, once per ISA.
#define AECOMP_MK_BODY "microkernel_isa.inc"
#include "microkernel_foreach.h"

// AECOMP_MK_DISPATCH(mk::active_isa(), fn, args...) calls mk::<isa>::fn(args...) and counts
// the level that ran (isa_count). `isa` is evaluated once.
#if AECOMP_MK_X86
#define AECOMP_MK_DISPATCH(isa, fn, ...)                                                                  \
  ([&](::aecomp::cpu::mk::Isa aecomp_isa_) {                                                              \
    return aecomp_isa_ == ::aecomp::cpu::mk::Isa::Avx512 ? ::aecomp::cpu::mk::avx512::fn(__VA_ARGS__)     \
           : aecomp_isa_ == ::aecomp::cpu::mk::Isa::Avx2 ? ::aecomp::cpu::mk::avx2::fn(__VA_ARGS__)       \
                                                         : ::aecomp::cpu::mk::generic::fn(__VA_ARGS__);   \
  }(::aecomp::cpu::mk::counted(isa)))
#else
#define AECOMP_MK_DISPATCH(isa, fn, ...) \
  (::aecomp::cpu::mk::counted(::aecomp::cpu::mk::Isa::Generic), ::aecomp::cpu::mk::generic::fn(__VA_ARGS__))
#endif
