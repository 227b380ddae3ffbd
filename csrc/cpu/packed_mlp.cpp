// Packed-weight inference on the CPU: aecomp::packed_mlp, a whole chain of layers whose weights
// stay packed (int8 + per-channel scales, or b-bit codes + codebook) and are unpacked in
// registers inside the GEMM; bias and activation fused before the one store; the whole chain in
// ONE call. Inference only (the Autograd kernel refuses).
//
// ---------------------------------------------------------------------------- math
// Layer l: y = act(x @ W^T + b), W [N, K]. W is held in one of two packed forms:
//   int8      W[j, k] = q[j, k] * s[j]             q int8 in [-127, 127], s float32 [N]
//   codebook  W[j, k] = table[code[j, k]]          code < T, table float32 [T] (T = 16, 32, 256)
//             (a pruned shared layer maps its pruned weights to an extra table entry 0.0)
// Two ways to compute a layer (chosen per layer by `compute`):
//   float  y[i, j] = act(s[j] * sum_k x[i, k] q[j, k] + b[j])        (int8)
//          y[i, j] = act(sum_k x[i, k] table[code[j, k]] + b[j])      (codebook)
//          float32 FMAs in ascending k; this is dequantize-then-float-GEMM up to float rounding
//          (the scale moves out of the sum: |error| ~ K * eps * sum |x W|).
//   int8   dynamic activation quantization, exactly ONNX's DynamicQuantizeLinear (per tensor):
//            lo = min(0, min x), hi = max(0, max x), sx = (hi - lo) / 255 (1 when hi == lo),
//            zp = clamp(rne(-lo / sx), 0, 255),  xq = clamp(rne(x / sx) + zp, 0, 255)  (uint8)
//          then the integer GEMM, exact in int32 (|acc| <= K * 255 * 127, so K <= 66000):
//            acc[i, j] = sum_k xq[i, k] q[j, k] - zp * colsum[j],  colsum[j] = sum_k q[j, k]
//          and the epilogue y = act(float(acc) * (sx * s[j]) + b[j]) (what MatMulInteger ->
//          Cast -> Mul -> Add computes in the int8 ONNX file). The error against the float
//          path is the activation rounding, |x - sx (xq - zp)| <= sx / 2 per element.
//          A non-finite input switches that layer to the float path (NaN/inf propagate).
//          Per-tensor means a row's result depends (within sx / 2 per input) on the other rows
//          of the batch, as in onnxruntime; the float path is row-independent.
//
// ---------------------------------------------------------------------------- layouts
// Fixed, ISA-independent (built once by aecomp.ops._packed): columns in groups of 16,
// G = ceil(N / 16) groups, padded columns hold 0 (int8) or code 0 (codebook; discarded).
//   int8   w uint8 [G][K4][16][4], K4 = ceil(K / 4): byte (c * 4 + t) of block (g, q) is
//          q[16 g + c, 4 q + t] (0 past K): one 64-byte block is exactly one VNNI operand
//          (16 int32 lanes x 4 bytes) and, read as 16 dwords, 16 columns x 4 k for the float path
//   codes4 (T = 16): uint8 [G][K2][16], K2 = ceil(K / 2): low nibble code(16g + c, 2p), high
//          nibble code(16g + c, 2p + 1)
//   codes8 (T = 32 or 256): uint8 [G][K][16]
// The integer path quantizes its input into a uint8 scratch buffer padded to K4 * 4 columns
// (padding = zp, met by zero weights); the float path reads x in place for k < K.
//
// ---------------------------------------------------------------------------- ISAs
// Integer path: AVX-512 VNNI hand-written tiles (8 rows x 2 groups, or 1 row x 4 groups for
// the last rows; vpdpbusd, u8 x s8 -> int32, 64 multiply-adds an instruction) when the level of
// isa.h is avx512 or above and the CPU has VNNI; otherwise the portable loops of packed_isa.inc
// (compiled per ISA and dispatched like the microkernels, not hand-written). Float path: the
// microkernel framework of microkernel.h (AVX-512 8x32, AVX2 6x16, portable 4x8 tiles; 1 row x
// 4 vectors for small batches) with the B-panel loaders of packed_isa.inc that decode the
// layouts in registers (int8: shifts of 64-byte blocks; 4-bit codes: vpermps; byte codes:
// vpermt2ps / gather), and a scale + bias + activation epilogue. AECOMP_CPU_ISA caps every
// one of these (isa.h; the tests run each path).
// The integer accumulators are exact on every path, so the int8 path gives the same
// integers everywhere; float results differ by rounding only. One thread (inference batches
// here are small; the caller's threads are not used).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <vector>

#include "brgemm.h"
#include "epilogue.h"
#include "microkernel.h"
#include "packed_brgemm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AECOMP_PK_X86 1
#else
#define AECOMP_PK_X86 0
#endif

// The int8 path's epilogue must round like onnxruntime (a multiply, then an add): no FMA
// contraction in the compiler-vectorised loops (the AVX-512 tiles use explicit intrinsics).
#pragma GCC optimize("fp-contract=off")
// GCC 12 warns about _mm512_undefined_* inside its own intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The types and the row epilogue shared by the integer paths (the portable one in packed_isa.inc,
// compiled per ISA, and the AVX-512 VNNI tiles below).
namespace aecomp {
namespace packed {
namespace {

constexpr int kGroup = 16;

struct Layer {
  int64_t kind, n, k, table;  // table: codebook size T (0 for int8)
  int act;                    // 0 none, 1 relu, 2 sigmoid
  bool integer;               // int8 layer computed on the integer path
  bool bf16;                  // codebook layer: bf16 brgemm at batch (compute 'auto'; AMX)
  const uint8_t* w;
  const float* scale;  // int8: [N]; codebook: the table [T]
  const float* bias;   // [N] or null
  const int32_t* colsum;
};

struct QParams {
  float scale;
  int32_t zp;
  bool finite;
};

// ---------------------------------------------------------------------------- epilogue
// One row of a finished tile: out[j] = act(v[j] * mul[j] + b[j]) for j < nr (mul may be null).
// relu here (keeps NaN); sigmoid by the CPU backend's vectorised sigmoid (epilogue.h) on the
// row just written, while it is in L1.
__attribute__((always_inline)) inline void store_row(float* __restrict out, const float* __restrict v,
                                                     const float* __restrict mul, float mul0,
                                                     const float* __restrict b, int nr, int act) {
  for (int j = 0; j < nr; ++j) {
    float y = mul ? v[j] * (mul[j] * mul0) : v[j];
    if (b) y += b[j];
    out[j] = (act == 1 && y < 0.0f) ? 0.0f : y;
  }
  if (act == 2) cpu::bias_act_f32(out, nullptr, 1, nr, 2);
}

}  // namespace
}  // namespace packed
}  // namespace aecomp

// ---------------------------------------------------------------------------- float path
// The float path runs on the microkernel framework (microkernel.h): B panel loaders that decode
// the packed layouts in registers (packed_isa.inc) and a scale + bias + activation epilogue.
namespace aecomp {
namespace cpu {
namespace mk {

// One packed layer as the float loaders see it (kind 0 int8, 1 4-bit codes, 2 byte codes).
struct PkLayer {
  int kind;
  int64_t n, k;
  int64_t gstride;  // bytes per 16-column group
  int colbytes;     // bytes of one column within a block row: 4 (int8 VNNI blocks) or 1 (codes)
  const uint8_t* w;
  const uint8_t* zeros;  // read for column blocks past the last group (lanes past N)
  const float* table;    // codebook table (kinds 1, 2)
  int tsize;
  const float* scale;  // int8 per-channel scales (kind 0) or null
  const float* bias;
  int act;
  // The packed bytes of columns c0 .. c0 + L - 1 (L <= 16, c0 a multiple of L) at k = 0.
  const uint8_t* base(int64_t c0) const {
    if (c0 >= ((n + 15) / 16) * 16) return zeros;
    return w + (c0 / 16) * gstride + (c0 % 16) * colbytes;
  }
};

#if AECOMP_MK_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2")
namespace avx512 {
// 16 columns x 4 k of int8 in 64 bytes (one dword a column): byte t of each dword -> float.
static AECOMP_MK_INLINE __m512 pk_i8(const uint8_t* p, int t) {
  const __m512i d = _mm512_loadu_si512(p);
  return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_sll_epi32(d, _mm_cvtsi32_si128(24 - 8 * t)), 24));
}
// 16 columns of 4-bit codes (low nibble k even, high nibble k odd) -> table values (vpermps).
static AECOMP_MK_INLINE __m512 pk_nib(const uint8_t* p, int hi, const float* table) {
  __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  d = _mm512_and_si512(_mm512_srl_epi32(d, _mm_cvtsi32_si128(4 * hi)), _mm512_set1_epi32(15));
  return _mm512_permutexvar_ps(d, _mm512_loadu_ps(table));
}
// 16 columns of byte codes -> table values (32 entries: vpermt2ps; 256: a gather from L1).
static AECOMP_MK_INLINE __m512 pk_byte(const uint8_t* p, const float* table, int tsize) {
  const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  if (tsize == 32) return _mm512_permutex2var_ps(_mm512_loadu_ps(table), d, _mm512_loadu_ps(table + 16));
  return _mm512_i32gather_ps(d, table, 4);
}
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
namespace avx2 {
static AECOMP_MK_INLINE __m256 pk_i8(const uint8_t* p, int t) {
  const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_sll_epi32(d, _mm_cvtsi32_si128(24 - 8 * t)), 24));
}
// 8 columns of 4-bit codes: two 8-entry vpermps halves, blended on bit 3 of the code.
static AECOMP_MK_INLINE __m256 pk_nib(const uint8_t* p, int hi, const float* table) {
  __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  d = _mm256_and_si256(_mm256_srl_epi32(d, _mm_cvtsi32_si128(4 * hi)), _mm256_set1_epi32(15));
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), d);
  const __m256 up = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), d);
  return _mm256_blendv_ps(lo, up, _mm256_castsi256_ps(_mm256_slli_epi32(d, 28)));
}
static AECOMP_MK_INLINE __m256 pk_byte(const uint8_t* p, const float* table, int) {
  const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_i32gather_ps(table, d, 4);
}
}  // namespace avx2
#pragma GCC pop_options
#endif  // AECOMP_MK_X86

namespace generic {
static inline V::vec pk_i8(const uint8_t* p, int t) {
  return V::map([=](int l) { return static_cast<float>(static_cast<int8_t>(p[l * 4 + t])); });
}
static inline V::vec pk_nib(const uint8_t* p, int hi, const float* table) {
  return V::map([=](int l) { return table[(p[l] >> (4 * hi)) & 15]; });
}
static inline V::vec pk_byte(const uint8_t* p, const float* table, int) {
  return V::map([=](int l) { return table[p[l]]; });
}
}  // namespace generic

}  // namespace mk
}  // namespace cpu
}  // namespace aecomp

#define AECOMP_MK_BODY "packed_isa.inc"
#include "microkernel_foreach.h"

namespace aecomp {
namespace packed {
namespace {

using at::Tensor;

enum Kind : int64_t { kInt8 = 0, kCodebook = 1 };
enum Compute : int { kFloat = 0, kInteger = 1 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t k_pad(int64_t k) { return ceil_div(k, 4) * 4; }

// Batches from which the matrix engine (AMX) takes a layer: measured crossovers
// (benchmarks/bench_packed_crossover.py, one thread, Intel Xeon with AMX): below them the VNNI
// tiles (int8) and the float microkernels (codebook) are faster. AECOMP_PACKED_BRGEMM_ROWS=n
// (read once) sets both, for that benchmark.
int64_t brgemm_rows(int64_t measured) {
  static const int64_t forced = [] {
    const char* v = std::getenv("AECOMP_PACKED_BRGEMM_ROWS");
    return v ? std::max<int64_t>(1, std::atoll(v)) : int64_t(0);
  }();
  return forced ? forced : measured;
}
// Measured (one thread, the CompressedNet chain 784-128-64-32-10): int8 brgemm at 0.88x the VNNI
// tiles at batch 32, 1.03x at 64, 1.08x at 256 (the activation quantization, the same on both
// paths, is most of the time); codebook bf16 tiles 0.68x at batch 8, 1.19x at 16, 2.8x at 256.
const int64_t kInt8BrgemmRows = brgemm_rows(64);
const int64_t kCodebookBrgemmRows = brgemm_rows(16);

// ---------------------------------------------------------------------------- ISA choice
// The hand-written VNNI integer tiles run at the avx512 level (isa.h) when the CPU has VNNI.
bool use_avx512() {
  static const bool ok = cpu::isa_has(cpu::IsaFeature::Avx512Vnni);
  return ok;
}

#if AECOMP_PK_X86
// ---------------------------------------------------------------------------- AVX-512 kernels
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2")

// The integer path's epilogue for the 16 columns j0.. of a group: y = act(float(acc - zp colsum)
// * (s sx) + b). Shared by the VNNI tiles below and the brgemm path (packed_brgemm.h), so both
// round alike.
struct IntEpi {
  __mmask16 mk;
  int nr;
  __m512i zcs;
  __m512 mul, bias;
};

__attribute__((always_inline)) inline IntEpi int_epi_avx512(const Layer& L, int64_t j0, QParams qp) {
  IntEpi e;
  e.nr = static_cast<int>(std::min<int64_t>(kGroup, L.n - j0));
  e.mk = e.nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << e.nr) - 1u);
  const __m512i cs = _mm512_maskz_loadu_epi32(e.mk, L.colsum + j0);
  e.mul = _mm512_mul_ps(_mm512_maskz_loadu_ps(e.mk, L.scale + j0), _mm512_set1_ps(qp.scale));
  e.bias = L.bias ? _mm512_maskz_loadu_ps(e.mk, L.bias + j0) : _mm512_setzero_ps();
  e.zcs = _mm512_mullo_epi32(_mm512_set1_epi32(qp.zp), cs);
  return e;
}

__attribute__((always_inline)) inline void int_store_avx512(const IntEpi& e, __m512i acc, int act, float* o) {
  __m512 y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, e.zcs));
  y = _mm512_add_ps(_mm512_mul_ps(y, e.mul), e.bias);
  if (act == 1) {
    // max(y, 0) keeping NaN: max returns its second operand when either is NaN
    _mm512_mask_storeu_ps(o, e.mk, _mm512_max_ps(_mm512_setzero_ps(), y));
  } else if (act == 0) {
    _mm512_mask_storeu_ps(o, e.mk, y);
  } else {
    alignas(64) float tmp[kGroup];
    _mm512_store_ps(tmp, y);
    store_row(o, tmp, nullptr, 1.0f, nullptr, e.nr, act);
  }
}

// The brgemm path's tiles (int32 [mr][16] per group) through the same epilogue.
struct IntBrgemmCtx {
  const Layer* L;
  QParams qp;
  float* out;
  int64_t ldo;
};

void int_brgemm_tile(void* ctx, const int32_t* c, int64_t ldc, int64_t i0, int64_t j0, int mr, int) {
  const IntBrgemmCtx& t = *static_cast<const IntBrgemmCtx*>(ctx);
  const IntEpi e = int_epi_avx512(*t.L, j0, t.qp);
  for (int i = 0; i < mr; ++i)
    int_store_avx512(e, _mm512_loadu_si512(c + i * ldc), t.L->act, t.out + (i0 + i) * t.ldo + j0);
}

// Integer tile: rows i0..i0+MR (edge rows repeat the last real row), groups g0..g0+NV.
template <int MR, int NV>
__attribute__((always_inline)) inline void int_tile_avx512(const uint8_t* xq, int64_t kp, int64_t i0, int mr,
                                                           const Layer& L, int64_t g0, QParams qp, float* out,
                                                           int64_t ldo) {
  const int64_t K4 = kp / 4;
  const uint8_t* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = xq + (i0 + (i < mr ? i : mr - 1)) * kp;
  const uint8_t* wg = L.w + g0 * K4 * 64;
  __m512i acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t q = 0; q < K4; ++q) {
    __m512i b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(wg + (v * K4 + q) * 64);
    for (int i = 0; i < MR; ++i) {
      int32_t a4;
      std::memcpy(&a4, xr[i] + 4 * q, 4);
      const __m512i a = _mm512_set1_epi32(a4);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], a, b[v]);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t j0 = (g0 + v) * kGroup;
    const IntEpi e = int_epi_avx512(L, j0, qp);
    for (int i = 0; i < mr; ++i) int_store_avx512(e, acc[i][v], L.act, out + (i0 + i) * ldo + j0);
  }
}

// Runs integer tiles of MR rows over every group: NV groups at a time, then the remaining
// groups one by one. Rows in blocks of MR (the last block repeats its last row).
template <int MR, int NV>
void int_rows_avx512(const uint8_t* xq, int64_t kp, int64_t i0, int64_t i1, const Layer& L, QParams qp, float* out,
                     int64_t ldo) {
  const int64_t G = ceil_div(L.n, kGroup);
  for (int64_t i = i0; i < i1; i += MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, i1 - i));
    int64_t g = 0;
    for (; g + NV <= G; g += NV) int_tile_avx512<MR, NV>(xq, kp, i, mr, L, g, qp, out, ldo);
    for (; g < G; ++g) int_tile_avx512<MR, 1>(xq, kp, i, mr, L, g, qp, out, ldo);
  }
}

// dynamic_qparams / quantize_rows with explicit AVX-512 (the portable versions' libm calls
// cost more than the integer GEMM at batch 256): same results (min/max are exact; the division
// and the round-to-nearest-even are the same IEEE operations).
QParams dynamic_qparams_avx512(const float* x, int64_t m, int64_t k, int64_t ld) {
  // four independent accumulator sets in registers, 64 floats a step (one set was latency-bound:
  // 4 cycles a vector; sets indexed at run time lived on the stack: store-forwarding chains); min,
  // max and the NaN/inf detector do not depend on the order
  __m512 lo0 = _mm512_setzero_ps(), lo1 = lo0, lo2 = lo0, lo3 = lo0;
  __m512 hi0 = lo0, hi1 = lo0, hi2 = lo0, hi3 = lo0;
  __m512 bad0 = lo0, bad1 = lo0, bad2 = lo0, bad3 = lo0;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < m; ++i) {
    const float* r = x + i * ld;
    int64_t j = 0;
    for (; j + 64 <= k; j += 64) {
      const __m512 v0 = _mm512_loadu_ps(r + j), v1 = _mm512_loadu_ps(r + j + 16);
      const __m512 v2 = _mm512_loadu_ps(r + j + 32), v3 = _mm512_loadu_ps(r + j + 48);
      lo0 = _mm512_min_ps(lo0, v0), hi0 = _mm512_max_ps(hi0, v0), bad0 = _mm512_fmadd_ps(v0, zero, bad0);
      lo1 = _mm512_min_ps(lo1, v1), hi1 = _mm512_max_ps(hi1, v1), bad1 = _mm512_fmadd_ps(v1, zero, bad1);
      lo2 = _mm512_min_ps(lo2, v2), hi2 = _mm512_max_ps(hi2, v2), bad2 = _mm512_fmadd_ps(v2, zero, bad2);
      lo3 = _mm512_min_ps(lo3, v3), hi3 = _mm512_max_ps(hi3, v3), bad3 = _mm512_fmadd_ps(v3, zero, bad3);
    }
    for (; j < k; j += 16) {
      const __mmask16 mk = k - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - j)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(mk, r + j);  // masked lanes are 0: neutral (0 is in range)
      lo0 = _mm512_min_ps(lo0, v), hi0 = _mm512_max_ps(hi0, v), bad0 = _mm512_fmadd_ps(v, zero, bad0);
    }
  }
  lo0 = _mm512_min_ps(_mm512_min_ps(lo0, lo1), _mm512_min_ps(lo2, lo3));
  hi0 = _mm512_max_ps(_mm512_max_ps(hi0, hi1), _mm512_max_ps(hi2, hi3));
  bad0 = _mm512_add_ps(_mm512_add_ps(bad0, bad1), _mm512_add_ps(bad2, bad3));  // NaN once any v is NaN or inf
  QParams p;
  p.finite = _mm512_reduce_add_ps(bad0) == 0.0f;
  const float l = std::min(0.0f, _mm512_reduce_min_ps(lo0)), h = std::max(0.0f, _mm512_reduce_max_ps(hi0));
  p.scale = h > l ? (h - l) / 255.0f : 1.0f;
  const float z = std::nearbyint(-l / p.scale);
  p.zp = static_cast<int32_t>(std::min(255.0f, std::max(0.0f, z)));
  return p;
}

void quantize_rows_avx512(const float* x, int64_t m, int64_t k, int64_t ld, QParams p, uint8_t* xq, int64_t kp) {
  // x / scale rounded to nearest even, + zero point, clamped to [0, 255]: the integer of the IEEE
  // division (onnxruntime's). On 512-bit vectors only two ports compute, so the loop is counted
  // in vector operations:
  // * the division is the slowest (one zmm vdivps per 10-16 cycles): the quotient comes from
  //   y = x * (1/scale), and the division runs only for lanes near a half-integer. l <= x <= h and
  //   scale = (h - l) / 255 give |x / scale| <= 255 (1 + 3u), so |y - fl(x / scale)| <= 255 * 3u
  //   (u = 2^-24) < 4.6e-5 < kNearTie: a y farther than kNearTie from every n + 1/2 rounds to the
  //   same integer as the division; the test is |y - round(y)| > 1/2 - kNearTie.
  // * the clamp is the saturating packs' (int32 -> int16 -> uint8: exact on [0, 255], and
  //   |round(y) + zp| < 2^15), which also put 64 values in one vector for one store (four
  //   masked byte-narrowing stores, vpmovdb to memory, were the loop's bottleneck); per 128-bit
  //   lane L they leave the dwords (a, b, c, d)[4L .. 4L+3], put back in order by one vpermd.
  constexpr float kNearTie = 1.0f / 8192.0f;
  const float rcp = 1.0f / p.scale;
  const bool by_rcp = std::isfinite(rcp) && p.scale >= std::numeric_limits<float>::min();
  const __m512 sc = _mm512_set1_ps(p.scale), rc = _mm512_set1_ps(rcp);
  const __m512 far = _mm512_set1_ps(0.5f - kNearTie);
  const __m512i zp = _mm512_set1_epi32(p.zp);
  auto q32 = [&](__m512 v) {  // round(x / scale) + zp as int32, not clamped
    __m512 r;
    if (by_rcp) {
      const __m512 y = _mm512_mul_ps(v, rc);
      r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __mmask16 tie = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y, r)), far, _CMP_GT_OQ);
      if (tie)
        r = _mm512_mask_roundscale_ps(r, tie, _mm512_div_ps(v, sc), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      r = _mm512_roundscale_ps(_mm512_div_ps(v, sc), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    return _mm512_add_epi32(_mm512_cvtps_epi32(r), zp);
  };
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
  for (int64_t i = 0; i < m; ++i) {
    const float* r = x + i * ld;
    uint8_t* o = xq + i * kp;
    int64_t j = 0;
    for (; j + 64 <= k; j += 64) {
      const __m512i ab = _mm512_packs_epi32(q32(_mm512_loadu_ps(r + j)), q32(_mm512_loadu_ps(r + j + 16)));
      const __m512i cd = _mm512_packs_epi32(q32(_mm512_loadu_ps(r + j + 32)), q32(_mm512_loadu_ps(r + j + 48)));
      _mm512_storeu_si512(o + j, _mm512_permutexvar_epi32(order, _mm512_packus_epi16(ab, cd)));
    }
    for (; j < k; j += 16) {
      const __mmask16 mk = k - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - j)) - 1u);
      const __m512i q = _mm512_min_epi32(hi, _mm512_max_epi32(lo, q32(_mm512_maskz_loadu_ps(mk, r + j))));
      _mm_mask_storeu_epi8(o + j, mk, _mm512_cvtepi32_epi8(q));
    }
    for (j = k; j < kp; ++j) o[j] = static_cast<uint8_t>(p.zp);
  }
}

void int_layer_avx512(const uint8_t* xq, int64_t m, int64_t kp, const Layer& L, QParams qp, float* out,
                      int64_t ldo) {
  // Tiles: 8 rows x 2 groups (16 accumulators); 1 row x 4 groups for the leftover rows, so a
  // batch of 1 still has 4 independent accumulation chains.
  const int64_t m8 = (m / 8) * 8;
  if (m8 > 0) int_rows_avx512<8, 2>(xq, kp, 0, m8, L, qp, out, ldo);
  if (m8 < m) int_rows_avx512<1, 4>(xq, kp, m8, m, L, qp, out, ldo);
}

#pragma GCC pop_options
#endif  // AECOMP_PK_X86

// ---------------------------------------------------------------------------- the chain
void run_layer(const Layer& L, const float* x, int64_t m, int64_t ldx, float* out, int64_t ldo,
               std::vector<float>& xf, std::vector<uint8_t>& xq) {
  const int64_t kp = k_pad(L.k);
  if (L.integer) {
#if AECOMP_PK_X86
    if (use_avx512()) {
      const QParams qp = dynamic_qparams_avx512(x, m, L.k, ldx);
      if (qp.finite) {
        if (m >= kInt8BrgemmRows && cpu::brg::amx_enabled()) {  // AMX-INT8 (packed_brgemm.h)
          // rows of A 64-byte aligned (stride lda, a multiple of 64, padded with zp past kp): the
          // tile loads of unaligned rows crossed cache lines, and the time moved with where malloc
          // put the buffer (93 to 147 us for the CompressedNet at batch 256, from one process to
          // the next)
          const int64_t lda = (kp + 63) / 64 * 64;
          uint8_t* xa = cpu::brg::grow(xq, m * lda);
          quantize_rows_avx512(x, m, L.k, ldx, qp, xa, lda);
          cpu::isa_count(cpu::IsaLevel::Amx);
          IntBrgemmCtx ctx{&L, qp, out, ldo};
          return cpu::brg::int8_groups_brgemm(xa, m, kp, lda, L.w, L.n, &int_brgemm_tile, &ctx);
        }
        if (xq.size() < static_cast<size_t>(m * kp)) xq.resize(static_cast<size_t>(m * kp));  // grow only
        quantize_rows_avx512(x, m, L.k, ldx, qp, xq.data(), kp);
        cpu::isa_count(cpu::IsaLevel::Avx512);
        return int_layer_avx512(xq.data(), m, kp, L, qp, out, ldo);
      }
    } else
#endif
    {
      const cpu::mk::Isa isa = cpu::mk::active_isa();
      const QParams qp = AECOMP_MK_DISPATCH(isa, pk_dynamic_qparams, x, m, L.k, ldx);
      if (qp.finite) {
        if (xq.size() < static_cast<size_t>(m * kp)) xq.resize(static_cast<size_t>(m * kp));  // grow only
        AECOMP_MK_DISPATCH(isa, pk_quantize_rows, x, m, L.k, ldx, qp, xq.data(), kp);
        return AECOMP_MK_DISPATCH(isa, pk_int_layer, xq.data(), m, kp, L, qp, out, ldo);
      }
    }
  }
  if (L.kind == kCodebook && L.bf16 && m >= kCodebookBrgemmRows && cpu::brg::amx_enabled()) {  // bf16 tiles
    cpu::isa_count(cpu::IsaLevel::Amx);
    return cpu::brg::codebook_bf16(x, m, ldx, L.table == 16 ? 1 : 2, L.w, L.scale, static_cast<int>(L.table), L.n,
                                   L.k, L.bias, L.act, out, ldo);
  }
  // float path: the microkernel framework with the packed loaders (packed_isa.inc)
  cpu::mk::PkLayer P;
  P.kind = L.kind == kInt8 ? 0 : (L.table == 16 ? 1 : 2);
  P.n = L.n;
  P.k = L.k;
  P.gstride = P.kind == 0 ? ceil_div(L.k, 4) * 64 : (P.kind == 1 ? ceil_div(L.k, 2) * kGroup : L.k * kGroup);
  P.colbytes = P.kind == 0 ? 4 : 1;
  P.w = L.w;
  thread_local std::vector<uint8_t> zeros;
  if (zeros.size() < static_cast<size_t>(kp * 16 + 64)) zeros.assign(static_cast<size_t>(kp * 16 + 64), 0);
  P.zeros = zeros.data();
  P.table = L.kind == kCodebook ? L.scale : nullptr;
  P.tsize = static_cast<int>(L.table);
  P.scale = L.kind == kInt8 ? L.scale : nullptr;
  P.bias = L.bias;
  P.act = L.act;
  (void)xf;
  AECOMP_MK_DISPATCH(cpu::mk::active_isa(), pk_float_layer, x, ldx, m, P, out, ldo);
}

// The parsed chain: what the op and the pybind11 handle share.
struct Chain {
  std::vector<Tensor> keep;  // owns the packed tensors
  std::vector<Layer> layers;
  int64_t in_features = 0, out_features = 0;
};

const char* kOp = "aecomp::packed_mlp";

std::string shape_of(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

int parse_act(c10::string_view a) {
  if (a == "none") return 0;
  if (a == "relu") return 1;
  if (a == "sigmoid") return 2;
  TORCH_CHECK_VALUE(false, kOp, ": unknown activation '", std::string(a), "'; expected 'none', 'relu' or 'sigmoid'");
  return 0;
}

// The byte codes of a codebook layer index its table: every byte below T. Only T = 32 needs
// the scan (4-bit codes cannot pass 15 and T = 16; any byte is below 256).
void check_codes(size_t l, const Tensor& w, int64_t table) {
  if (table != 32) return;
  const uint8_t hi = AECOMP_MK_DISPATCH(cpu::mk::active_isa(), pk_max_byte, w.data_ptr<uint8_t>(), w.numel());
  TORCH_CHECK_VALUE(hi < table, kOp, ": layer ", l, "'s codes reach ", int(hi), " but its codebook table has ", table,
                    " entries");
}

// The integer path trusts colsum[j] = sum_k q[j, k] (it subtracts zp * colsum) and the int32
// range of the int8 format ([-127, 127], zero padding past K). Checked once per chain handle
// (one pass over the weights; the eager path); the op itself, called per batch, checks shapes only.
void check_int8_contents(size_t l, const Layer& L) {
  const int64_t K4 = ceil_div(L.k, 4), G = ceil_div(L.n, kGroup);
  std::vector<int64_t> sum(static_cast<size_t>(G * kGroup), 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t q = 0; q < K4; ++q)
      for (int c = 0; c < kGroup; ++c)
        for (int t = 0; t < 4; ++t) {
          const int8_t v = static_cast<int8_t>(L.w[(g * K4 + q) * 64 + c * 4 + t]);
          const int64_t j = g * kGroup + c, k = 4 * q + t;
          TORCH_CHECK_VALUE(v != -128, kOp, ": layer ", l, " holds -128 at row ", j, ", column ", k,
                            "; the int8 format is symmetric, [-127, 127]");
          TORCH_CHECK_VALUE(k < L.k || v == 0, kOp, ": layer ", l, "'s packed padding past K = ", L.k,
                            " must be zero");
          sum[j] += v;
        }
  for (int64_t j = 0; j < L.n; ++j)
    TORCH_CHECK_VALUE(sum[j] == L.colsum[j], kOp, ": layer ", l, "'s colsum[", j, "] = ", L.colsum[j],
                      " but its weights sum to ", sum[j], " (colsum must be the per-row sums of q)");
}

// data: 4 tensors a layer (packed weights uint8, scale-or-table float32, bias float32 [N] or [0],
// colsum int32 [N] or [0]); meta: 4 ints a layer (kind, N, K, T); activations "relu,relu,none";
// compute "auto" (int8 layers on the integer path) | "int8" | "float". Every argument is checked
// before any is read (shapes, dtypes, devices, the codes' range); `verify_contents` also checks
// the int8 weights against colsum (check_int8_contents).
Chain parse_chain(at::TensorList data, at::IntArrayRef meta, c10::string_view activations,
                  c10::string_view compute, bool verify_contents) {
  TORCH_CHECK_VALUE(!meta.empty() && meta.size() % 4 == 0 && data.size() == meta.size(), kOp,
                    ": expected 4 tensors and 4 meta ints per layer, got ", data.size(), " tensors and ", meta.size(),
                    " ints");
  const size_t nl = meta.size() / 4;
  std::vector<int> acts;
  {
    std::string s(activations);
    size_t start = 0;
    while (true) {
      const size_t e = s.find(',', start);
      acts.push_back(parse_act(s.substr(start, e == std::string::npos ? std::string::npos : e - start)));
      if (e == std::string::npos) break;
      start = e + 1;
    }
  }
  TORCH_CHECK_VALUE(acts.size() == nl, kOp, ": ", acts.size(), " activations for ", nl, " layers");
  TORCH_CHECK_VALUE(compute == "auto" || compute == "int8" || compute == "float", kOp, ": compute must be 'auto', ",
                    "'int8' or 'float', got '", std::string(compute), "'");
  Chain c;
  c.keep.assign(data.begin(), data.end());
  for (size_t l = 0; l < nl; ++l) {
    Layer L{};
    L.kind = meta[4 * l];
    L.n = meta[4 * l + 1];
    L.k = meta[4 * l + 2];
    L.table = meta[4 * l + 3];
    L.act = acts[l];
    const Tensor& w = data[4 * l];
    const Tensor& s = data[4 * l + 1];
    const Tensor& b = data[4 * l + 2];
    const Tensor& cs = data[4 * l + 3];
    TORCH_CHECK_VALUE(L.kind == kInt8 || L.kind == kCodebook, kOp, ": layer ", l, " has unknown kind ", L.kind);
    TORCH_CHECK_VALUE(L.n >= 1 && L.k >= 1 && L.k <= 66000, kOp, ": layer ", l, " has shape [", L.n, ", ", L.k,
                      "]; need N >= 1 and 1 <= K <= 66000");
    if (l > 0)
      TORCH_CHECK_VALUE(L.k == c.layers.back().n, kOp, ": layer ", l, " takes ", L.k, " inputs but layer ", l - 1,
                        " gives ", c.layers.back().n);
    const int64_t G = ceil_div(L.n, kGroup);
    int64_t want_w = 0;
    if (L.kind == kInt8) {
      want_w = G * ceil_div(L.k, 4) * 64;
      TORCH_CHECK_VALUE(L.table == 0, kOp, ": int8 layer ", l, " must have table size 0");
      TORCH_CHECK_VALUE(s.numel() == L.n, kOp, ": layer ", l, " scale has ", s.numel(), " values, expected ", L.n);
      TORCH_CHECK_VALUE(cs.numel() == L.n && cs.scalar_type() == at::kInt && cs.is_contiguous(), kOp, ": layer ", l,
                        " colsum must be int32 [", L.n, "], got ", cs.scalar_type(), " ", shape_of(cs));
    } else {
      TORCH_CHECK_VALUE(L.table == 16 || L.table == 32 || L.table == 256, kOp, ": codebook layer ", l,
                        " table size must be 16, 32 or 256, got ", L.table);
      want_w = L.table == 16 ? G * ceil_div(L.k, 2) * kGroup : G * L.k * kGroup;
      TORCH_CHECK_VALUE(s.numel() == L.table, kOp, ": layer ", l, " table has ", s.numel(), " values, expected ",
                        L.table);
    }
    TORCH_CHECK_VALUE(w.scalar_type() == at::kByte && w.is_contiguous() && w.numel() == want_w && w.is_cpu(), kOp,
                      ": layer ", l, " packed weights must be a contiguous CPU uint8 tensor of ", want_w,
                      " bytes, got ", w.scalar_type(), " ", shape_of(w));
    TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.is_contiguous() && s.is_cpu(), kOp, ": layer ", l,
                      " scale/table must be contiguous CPU float32, got ", s.scalar_type(), " ", shape_of(s));
    TORCH_CHECK_VALUE(b.numel() == 0 || (b.numel() == L.n && b.scalar_type() == at::kFloat && b.is_contiguous()), kOp,
                      ": layer ", l, " bias must be float32 [", L.n, "] or empty, got ", b.scalar_type(), " ",
                      shape_of(b));
    TORCH_CHECK_VALUE(b.is_cpu() && cs.is_cpu(), kOp, ": layer ", l, " bias is on ", b.device(), " and colsum on ",
                      cs.device(), "; the packed CPU kernels take CPU tensors");
    if (L.kind == kCodebook) check_codes(l, w, L.table);
    L.w = w.data_ptr<uint8_t>();
    L.scale = s.data_ptr<float>();
    L.bias = b.numel() ? b.data_ptr<float>() : nullptr;
    L.colsum = L.kind == kInt8 ? cs.data_ptr<int32_t>() : nullptr;
    L.integer = L.kind == kInt8 && compute != "float";
    L.bf16 = L.kind == kCodebook && compute == "auto";
    TORCH_CHECK_VALUE(!(L.kind == kCodebook && compute == "int8"), kOp, ": layer ", l,
                      " is a codebook layer, which has no int8 path; use compute='auto' or 'float'");
    if (verify_contents && L.kind == kInt8) check_int8_contents(l, L);
    c.layers.push_back(L);
  }
  c.in_features = c.layers.front().k;
  c.out_features = c.layers.back().n;
  return c;
}

Tensor run_chain(const Chain& c, const Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == c.in_features, kOp, ": x must be [..., ", c.in_features,
                    "], got ", shape_of(x));
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x.scalar_type(), " (shape ",
                   shape_of(x), ")");
  TORCH_CHECK_VALUE(x.is_cpu(), kOp, ": x is on ", x.device(), "; the packed CPU kernels take CPU tensors");
  // A 2-D input with unit column stride is read in place (no view, no copy: at batch 1 the
  // per-call tensor bookkeeping is a large part of the time).
  const int64_t m = x.dim() == 2 ? x.size(0) : x.numel() / c.in_features;
  Tensor y;
  if (x.dim() == 2) {
    y = at::empty({m, c.out_features}, x.options());
  } else {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = c.out_features;
    y = at::empty(shape, x.options());
  }
  if (m == 0) return y;
  Tensor x2 = x.dim() == 2 ? x : x.reshape({m, c.in_features});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  thread_local std::vector<float> xf, h0, h1;
  thread_local std::vector<uint8_t> xq;
  const float* in = x2.data_ptr<float>();
  int64_t ldx = x2.stride(0);
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const Layer& L = c.layers[l];
    float* out;
    if (l + 1 == c.layers.size()) {
      out = y.data_ptr<float>();
    } else {
      std::vector<float>& h = (l % 2 == 0) ? h0 : h1;
      h.resize(static_cast<size_t>(m * L.n));
      out = h.data();
    }
    run_layer(L, in, m, ldx, out, L.n, xf, xq);
    in = out;
    ldx = L.n;
  }
  return y;
}

Tensor packed_mlp_cpu(const Tensor& x, at::TensorList data, at::IntArrayRef meta, c10::string_view activations,
                      c10::string_view compute) {
  return run_chain(parse_chain(data, meta, activations, compute, /*verify_contents=*/false), x);
}

[[noreturn]] void inference_only() {
  TORCH_CHECK(false, kOp,
              ": packed ops are inference-only (their weights are integers); no gradient flows through them. "
              "Call it under torch.no_grad() / torch.inference_mode(), or train the float model.");
}

Tensor packed_mlp_autograd(const Tensor& x, at::TensorList data, at::IntArrayRef meta, c10::string_view activations,
                           c10::string_view compute) {
  if (c10::GradMode::is_enabled()) {
    bool any = x.requires_grad();
    for (const auto& t : data) any = any || t.requires_grad();
    if (any) inference_only();
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aecomp::packed_mlp", "")
                       .typed<Tensor(const Tensor&, at::TensorList, at::IntArrayRef, c10::string_view,
                                     c10::string_view)>();
  return op.call(x, data, meta, activations, compute);
}

// The eager fast path: a chain parsed once, called with x only.
struct Handle {
  Chain chain;
  Tensor call(const Tensor& x) const {
    if (x.requires_grad() && c10::GradMode::is_enabled()) inference_only();
    return run_chain(chain, x);
  }
};

}  // namespace
}  // namespace packed
}  // namespace aecomp

TORCH_LIBRARY_FRAGMENT(aecomp, m) {
  m.def("packed_mlp(Tensor x, Tensor[] data, int[] meta, str activations, str compute) -> Tensor");
}

TORCH_LIBRARY_IMPL(aecomp, CPU, m) { m.impl("packed_mlp", &aecomp::packed::packed_mlp_cpu); }

TORCH_LIBRARY_IMPL(aecomp, Autograd, m) { m.impl("packed_mlp", &aecomp::packed::packed_mlp_autograd); }

// A second Python module in the same shared library (PEP 489: a loader given the name
// "aecomp._packed" finds PyInit__packed here), so this file adds its entry points without
// touching the shared PYBIND11_MODULE of ops.cpp. aecomp/ops/_packed.py loads it.
PYBIND11_MODULE(_packed, mod) {
  namespace py = pybind11;
  using aecomp::packed::Handle;
  mod.doc() = "aecomp packed-weight inference: eager entry points of aecomp::packed_mlp";
  py::class_<Handle>(mod, "Chain")
      .def(py::init([](const std::vector<at::Tensor>& data, const std::vector<int64_t>& meta,
                       const std::string& activations, const std::string& compute) {
             return Handle{aecomp::packed::parse_chain(data, meta, activations, compute, /*verify_contents=*/true)};
           }),
           py::arg("data"), py::arg("meta"), py::arg("activations"), py::arg("compute"))
      .def("__call__", &Handle::call, py::arg("x"), "the chain on x (float32 [..., K])")
      .def_property_readonly("in_features", [](const Handle& h) { return h.chain.in_features; })
      .def_property_readonly("out_features", [](const Handle& h) { return h.chain.out_features; });
  mod.def("has_avx512_vnni", &aecomp::packed::use_avx512, "whether the AVX-512 VNNI kernels run here");
}
