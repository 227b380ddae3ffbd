// Packed-weight inference at batch on the matrix engine (brgemm.h), for packed_mlp.cpp:
//
// int8 layers: the integer GEMM acc[i, j] = sum_k xq[i, k] q[j, k] as u8 x s8 -> s32 brgemm
//   (AMX-INT8). Each 16-column group of the int8 layout ([G][K4][16][4], packed_mlp.cpp
//   "layouts") is a VNNI B operand with ldb = 16; the groups are copied side by side per call
//   (brgemm wants 64 columns a call to keep AMX busy). The int32 sums are exact, so the caller's
//   epilogue (the one of its AVX-512 VNNI tiles) gives the same floats as that path, bit for bit.
// codebook layers: the codes are decoded into a bf16 VNNI B operand per call (in a scratch
//   buffer: the model stays small in memory), x is rounded to bf16, and the bf16 brgemm runs
//   with bias + activation in the float32 epilogue. That is a precision change against the
//   float path: every weight table[code] and every input rounded to bf16 once (relative 2^-8
//   each), so |y - y_float| <= (2^-7 + 2^-16) sum_k |x w| before the activation (brgemm.h).
// Both only where packed_mlp.cpp decides (AMX and a batch at or above the measured crossover).
#include "packed_brgemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "brgemm.h"
#include "epilogue.h"
#include "microkernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AECOMP_PB_X86 1
#define AECOMP_PB_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#else
#define AECOMP_PB_X86 0
#define AECOMP_PB_TARGET
#endif

namespace aecomp {
namespace cpu {
namespace brg {

namespace {
constexpr int64_t kGroup = 16;
constexpr int64_t kRows = 32;  // rows of one brgemm call (A rows stay in L1 across the groups)

}  // namespace

void int8_groups_brgemm(const uint8_t* xq, int64_t m, int64_t kp, int64_t lda, const uint8_t* w, int64_t n,
                        Int8TileFn epi, void* ctx) {
  // The groups side by side ([kp/4][G * 16][4]: one VNNI B of all columns), copied per call into a
  // scratch buffer: one brgemm call per 16 columns runs AMX at a fraction of its rate (measured
  // 525 against 20 us for 256 x 784 x 128), and the copy is N * kp bytes (~5 us for 784 x 128).
  constexpr int64_t kCols = 64;
  const int64_t groups = mk::ceil_div(n, kGroup), k4 = kp / 4, ldb = groups * kGroup;
  thread_local std::vector<int8_t> wide;
  thread_local std::vector<int32_t> cbuf;
  int8_t* b = grow(wide, k4 * ldb * 4);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t q = 0; q < k4; ++q) std::memcpy(b + (q * ldb + g * kGroup) * 4, w + (g * k4 + q) * 64, 64);
  int32_t* c = grow(cbuf, kRows * kCols);
  for (int64_t i0 = 0; i0 < m; i0 += kRows) {
    const int64_t mr = std::min(kRows, m - i0);
    for (int64_t j0 = 0; j0 < n; j0 += kCols) {
      const int64_t nr = std::min(kCols, n - j0);
      gemm_u8s8(mr, nr, kp, lda, ldb, nr, xq + i0 * lda, b + j0 * 4, c);
      for (int64_t s = 0; s < nr; s += kGroup)  // the epilogue takes one group of 16 columns
        epi(ctx, c + s, nr, i0, j0 + s, static_cast<int>(mr), static_cast<int>(std::min(kGroup, n - j0 - s)));
    }
  }
  release();
}

#if AECOMP_PB_X86
namespace {

// The table as bf16 in the low half of 32-bit lanes (for vpermd / gathers).
AECOMP_PB_TARGET void table_bf16(const float* table, int tsize, std::vector<uint32_t>& out) {
  out.assign(static_cast<size_t>(std::max(tsize, 16)), 0u);
  for (int t = 0; t < tsize; ++t) {
    const c10::BFloat16 b(table[t]);
    out[t] = b.x;
  }
}

// Codes of 16 columns -> table entries (bf16 in the low 16 bits of each lane).
AECOMP_PB_TARGET inline __m512i lookup(__m512i idx, const uint32_t* tb, int tsize) {
  if (tsize <= 16) return _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(tb));
  if (tsize <= 32) return _mm512_permutex2var_epi32(_mm512_loadu_si512(tb), idx, _mm512_loadu_si512(tb + 16));
  return _mm512_i32gather_epi32(idx, tb, 4);
}

// B = W^T as bf16 VNNI [kp/2][groups * 16][2] from the codes (kind 1: 4-bit, [G][K2][16]; kind 2:
// bytes, [G][K][16]); k past K and columns past N decode to whatever code 0 / padding holds, and
// A's padding column is zero, so the padded k contribute nothing.
AECOMP_PB_TARGET void decode_vnni(int kind, const uint8_t* codes, const uint32_t* tb, int tsize, int64_t n, int64_t k,
                                  c10::BFloat16* out) {
  const int64_t groups = mk::ceil_div(n, kGroup), ldb = groups * kGroup, kp2 = (k + 1) / 2;
  const __m512i lo4 = _mm512_set1_epi32(15);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t p = 0; p < kp2; ++p) {
      __m512i lo, hi;
      if (kind == 1) {
        const __m512i b = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (g * kp2 + p) * kGroup)));
        lo = lookup(_mm512_and_si512(b, lo4), tb, tsize);
        hi = lookup(_mm512_srli_epi32(b, 4), tb, tsize);
      } else {
        const uint8_t* base = codes + g * k * kGroup;
        lo = lookup(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(base + 2 * p * kGroup))),
                    tb, tsize);
        hi = 2 * p + 1 < k ? lookup(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                        reinterpret_cast<const __m128i*>(base + (2 * p + 1) * kGroup))),
                                    tb, tsize)
                           : _mm512_setzero_si512();
      }
      _mm512_storeu_si512(out + (p * ldb + g * kGroup) * 2, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

}  // namespace

void codebook_bf16(const float* x, int64_t m, int64_t ldx, int kind, const uint8_t* codes, const float* table,
                   int tsize, int64_t n, int64_t k, const float* bias, int act, float* out, int64_t ldo) {
  const int64_t groups = mk::ceil_div(n, kGroup), ldb = groups * kGroup, kp = k + (k & 1);
  thread_local std::vector<uint32_t> tb;
  thread_local std::vector<c10::BFloat16> bbuf, abuf;
  thread_local std::vector<float> cbuf;
  table_bf16(table, tsize, tb);
  c10::BFloat16* b = grow(bbuf, kp * ldb);
  decode_vnni(kind, codes, tb.data(), tsize, n, k, b);
  c10::BFloat16* a = grow(abuf, m * kp);
  rows_to_bf16(x, m, k, ldx, a, kp);
  if (kp != k)
    for (int64_t i = 0; i < m; ++i) a[i * kp + k] = c10::BFloat16(0.0f);
  constexpr int64_t kCols = 64;
  float* c = grow(cbuf, kRows * kCols);
  for (int64_t i0 = 0; i0 < m; i0 += kRows) {
    const int64_t mr = std::min(kRows, m - i0);
    for (int64_t j0 = 0; j0 < n; j0 += kCols) {
      const int64_t nr = std::min(kCols, n - j0);
      gemm_bf16(mr, nr, kp, kp, ldb, nr, a + i0 * kp, b + 2 * j0, c);
      bias_act_f32(c, bias ? bias + j0 : nullptr, mr, nr, act);
      for (int64_t r = 0; r < mr; ++r) std::copy(c + r * nr, c + (r + 1) * nr, out + (i0 + r) * ldo + j0);
    }
  }
  release();
}
#else
void codebook_bf16(const float*, int64_t, int64_t, int, const uint8_t*, const float*, int, int64_t, int64_t,
                   const float*, int, float*, int64_t) {
  TORCH_CHECK(false, "codebook_bf16: x86-64 only");
}
#endif

}  // namespace brg
}  // namespace cpu
}  // namespace aecomp
