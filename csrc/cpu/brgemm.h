// The CPU's matrix engine, through the library made for it: oneDNN's micro-kernel API as
// PyTorch ships it, at::native::cpublas::brgemm (ATen/native/CPUBlas.h). It runs AMX tiles
// where the CPU has them (amx_bf16, amx_int8), AVX512-BF16 / AVX-512 VNNI code elsewhere. Our
// epilogues stay ours: every GEMM here writes a small float32 / int32 tile that the caller's
// epilogue reads while it is in L1.
//
// ---------------------------------------------------------------------------- the math
//   bf16:  C[m, n] = sum_k A[i, k] B[k, j]     A bfloat16 row-major (lda), B bfloat16 in the
//          VNNI layout below, C float32 (ldc); products of two bf16 are exact in float32 and
//          the sums are float32 (AMX: TDPBF16PS; AVX512-BF16: VDPBF16PS).
//   u8s8:  C[m, n] = sum_k A[i, k] B[k, j]     A uint8, B int8 (VNNI layout), C int32, exact
//          while |C| < 2^31 (K <= 66000 at 255 * 127).
// Every reduction length k is even (bf16) or a multiple of 4 (u8s8): the callers pad A's
// columns and B's rows with zeros (oneDNN's bf16 kernels do not take an odd k).
//
// ---------------------------------------------------------------------------- layouts
// VNNI B (bf16): B[k, j] at ((k / 2) * ldb + j) * 2 + (k % 2), i.e. [k/2][ldb][2]: the two
//   k of a pair next to each other (one 32-bit word per column and pair). A column block
//   j0 .. j0+n of B starts at B + 2 * j0. This is what cpublas::pack writes (checked in
//   tests/test_brgemm.py where pack runs, i.e. with AMX), so no pack call is needed.
// VNNI B (int8): B[k, j] at ((k / 4) * ldb + j) * 4 + (k % 4), [k/4][ldb][4].
//
// ---------------------------------------------------------------------------- the level
// level() is decided once per process, on first use:
//   amx          bf16 and u8s8 brgemm on AMX tiles (cpublas::could_pack(kBFloat16) holds)
//   avx512_bf16  bf16 brgemm on AVX512-BF16, u8s8 on AVX-512 VNNI (no AMX)
//   avx512_vnni  u8s8 only
//   none         no brgemm: the microkernels of microkernel.h run everything
// It is the highest level whose probe (a tiny GEMM through brgemm, checked against the exact
// answer) succeeds and that aecomp's own cap allows (isa.h: AECOMP_CPU_ISA): below avx512,
// none; bf16 needs isa_has(Avx512Bf16), u8s8 isa_has(Avx512Vnni), AMX isa_has(AmxBf16/AmxInt8).
// oneDNN has its own cap, ONEDNN_MAX_CPU_ISA, read once per process; the probes see it
// (AVX512_CORE_BF16 -> avx512_bf16, AVX512_CORE_VNNI -> avx512_vnni, AVX512_CORE or lower ->
// none). The two stay consistent: where oneDNN would run AMX kernels but AECOMP_CPU_ISA is
// below amx (e.g. avx512 on an AMX CPU), the level is none, since brgemm would run AMX code
// (set ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 as well to run brgemm at avx512_bf16 there).
// torch.backends.mkldnn.enabled = False at the time of the probe gives none; turned off later,
// *_enabled() say so per call and the callers take the microkernels. Every brgemm path counts
// its level with isa_count (amx, or avx512 for the AVX-512 BF16/VNNI kernels).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <string>
#include <vector>

namespace aecomp {
namespace cpu {
namespace brg {

using bf16 = c10::BFloat16;

enum class Level : int { None = 0, Vnni = 1, Bf16 = 2, Amx = 3 };

Level level();
const char* level_name(Level l);
// One line: the level, what capped it (AECOMP_CPU_ISA, ONEDNN_MAX_CPU_ISA, the CPU).
std::string describe();
// Whether bf16 (u8s8) brgemm may run now: level() high enough and mkldnn still enabled.
bool bf16_enabled();
bool int8_enabled();
bool amx_enabled();

// C = A B (add_c: C += A B), see the header comment. k even (bf16) / multiple of 4 (u8s8).
void gemm_bf16(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, const bf16* a,
               const bf16* b, float* c, bool add_c = false);
void gemm_u8s8(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, const uint8_t* a,
               const int8_t* b, int32_t* c, bool add_c = false);
// Ends this thread's use of the matrix engine (AMX: the tile configuration is released).
void release();

// ---------------------------------------------------------------------------- packing
// All of these need AVX-512 F/BW (+ BF16 for the conversions); call them only when
// bf16_enabled(). Conversions round to nearest even (NaN stays NaN); float32 denormals
// (|x| < 2^-126) become zero (VCVTNEPS2BF16), an absolute error below 1.2e-38.
//
// out[i * ldo + j] = bf16(x[i * ldx + j]) for i < m, j < k (nothing else is written).
void rows_to_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo);
// VNNI over rows: out[((i / 2) * ldo + j) * 2 + i % 2] = x[i, j] for i < m, j < k (ldo >= k
// columns; [(m + 1) / 2][ldo][2]); an odd m gets a zero partner row. For a weight W [n, k] this
// is the dgrad B operand (reduction over n); for activations h [m, k], the weight-gradient B
// operand (reduction over the batch); a tile of rows i0 (even) .. starts at out + i0 * ldo.
void rows_to_vnni(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo);
// B = W^T in VNNI for the forward: W [n, k] (row stride ldw) -> [(k + 1) / 2][n][2].
void weight_t_to_vnni(const float* w, int64_t n, int64_t k, int64_t ldw, bf16* out);
// The transposed store: out[j * ldo + i] = bf16(x[i * ldx + j]) for i < m, j < k.
void store_t_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo);

// n elements of grow-only scratch held in v, starting on a 64-byte boundary: the brgemm operands
// of a buffer that malloc placed off a cache line made tile loads cross lines, and the time moved
// from one process to the next with where it landed. A growth zero-fills the whole buffer (the
// contents are not kept across it).
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  static_assert(64 % sizeof(T) == 0, "grow: element size must divide 64");
  const int64_t pad = 64 / static_cast<int64_t>(sizeof(T));
  if (static_cast<int64_t>(v.size()) < n + pad) v.assign(static_cast<size_t>(n + pad), T());
  const uintptr_t a = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<T*>(a + (64 - a % 64) % 64);
}

}  // namespace brg
}  // namespace cpu
}  // namespace aecomp
