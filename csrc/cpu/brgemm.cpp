// The matrix engine's level, the brgemm calls, and the bf16 packing (see brgemm.h).
#include "brgemm.h"

#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "isa.h"
#include "microkernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AECOMP_BRG_X86 1
#define AECOMP_BRG_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))
#else
#define AECOMP_BRG_X86 0
#define AECOMP_BRG_TARGET
#endif

namespace aecomp {
namespace cpu {
namespace brg {

namespace cb = at::native::cpublas;

namespace {

struct Decision {
  Level level = Level::None;
  std::string why;
};

// A 2 x 16 x 2 bf16 GEMM through brgemm, against the exact answer (small integers).
bool probe_bf16() {
  bf16 a[4], b[2 * 16 * 2];
  float c[2 * 16];
  for (int i = 0; i < 4; ++i) a[i] = bf16(static_cast<float>(i + 1));
  for (int k = 0; k < 2; ++k)
    for (int j = 0; j < 16; ++j) b[j * 2 + k] = bf16(static_cast<float>(j - 3 * k));
  try {
    cb::brgemm(2, 16, 2, 2, 16, 16, false, a, b, c, true);
    cb::brgemm_release(true);
  } catch (const std::exception&) {
    return false;
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 16; ++j)
      if (c[i * 16 + j] != (2 * i + 1) * j + (2 * i + 2) * (j - 3)) return false;
  return true;
}

bool probe_u8s8() {
  uint8_t a[2 * 4];
  int8_t b[4 * 16];
  int32_t c[2 * 16];
  for (int i = 0; i < 8; ++i) a[i] = static_cast<uint8_t>(200 + i);
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 16; ++j) b[j * 4 + k] = static_cast<int8_t>(j * (k % 2 ? -7 : 7) - k);
  try {
    cb::brgemm(2, 16, 4, 4, 16, 16, false, a, b, c, true);
    cb::brgemm_release(true);
  } catch (const std::exception&) {
    return false;
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 16; ++j) {
      int32_t want = 0;
      for (int k = 0; k < 4; ++k) want += int32_t(a[i * 4 + k]) * int32_t(b[j * 4 + k]);
      if (c[i * 16 + j] != want) return false;
    }
  return true;
}

std::string env_note(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(", ") + name + "=" + v : std::string();
}

Decision decide() {
  Decision d;
  const std::string caps = env_note("AECOMP_CPU_ISA") + env_note("ONEDNN_MAX_CPU_ISA");
#if !AECOMP_BRG_X86
  d.why = "not an x86-64 build";
  return d;
#else
  const IsaLevel level = isa_level();  // throws (one line) for a refused AECOMP_CPU_ISA
  if (level < IsaLevel::Avx512) {
    d.why = std::string("the CPU kernels run at ") + isa_level_name(level) + caps +
            "; brgemm runs only at the avx512 level and above";
    return d;
  }
  if (!at::globalContext().userEnabledMkldnn()) {
    d.why = "torch.backends.mkldnn.enabled is False";
    return d;
  }
  // oneDNN picks its kernels from ITS cap (ONEDNN_MAX_CPU_ISA): with AMX there, its bf16 and
  // u8s8 kernels are AMX ones, which aecomp's cap below amx must rule out (never run a higher
  // level's instructions). could_pack asks without running anything.
  const bool onednn_amx = cb::could_pack(at::kBFloat16);
  const bool amx_ok = isa_has(IsaFeature::AmxBf16) && isa_has(IsaFeature::AmxInt8);
  if (onednn_amx && !amx_ok) {
    d.why = std::string("the CPU kernels run at ") + isa_level_name(level) + caps +
            ", below amx, and oneDNN's brgemm would use AMX here (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 runs "
            "it without)";
    return d;
  }
  const bool bf16 = isa_has(IsaFeature::Avx512Bf16) && probe_bf16();
  const bool int8 = isa_has(IsaFeature::Avx512Vnni) && probe_u8s8();
  if (onednn_amx && bf16 && int8) {
    d.level = Level::Amx;
    d.why = "AMX-BF16 / AMX-INT8 tiles through oneDNN brgemm" + caps;
  } else if (bf16) {
    d.level = Level::Bf16;
    d.why = "bf16 on AVX512-BF16, u8s8 on AVX-512 VNNI (no AMX" + caps + ")";
  } else if (int8) {
    d.level = Level::Vnni;
    d.why = std::string("u8s8 on AVX-512 VNNI only (no ") +
            (isa_has(IsaFeature::Avx512Bf16) ? "bf16 kernel from oneDNN" : "AVX512-BF16") + caps + ")";
  } else {
    d.why = "oneDNN's brgemm generated no bf16 or u8s8 kernel here" + caps;
  }
  return d;
#endif
}

const Decision& decision() {
  static const Decision d = decide();
  return d;
}

}  // namespace

Level level() { return decision().level; }

const char* level_name(Level l) {
  switch (l) {
    case Level::Amx: return "amx";
    case Level::Bf16: return "avx512_bf16";
    case Level::Vnni: return "avx512_vnni";
    default: return "none";
  }
}

std::string describe() { return std::string(level_name(level())) + ": " + decision().why; }

bool bf16_enabled() { return level() >= Level::Bf16 && at::globalContext().userEnabledMkldnn(); }
bool int8_enabled() { return level() >= Level::Vnni && at::globalContext().userEnabledMkldnn(); }
bool amx_enabled() { return level() == Level::Amx && at::globalContext().userEnabledMkldnn(); }

void gemm_bf16(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, const bf16* a, const bf16* b,
               float* c, bool add_c) {
  cb::brgemm(m, n, k, lda, ldb, ldc, add_c, a, b, c, true);
}

void gemm_u8s8(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, const uint8_t* a,
               const int8_t* b, int32_t* c, bool add_c) {
  cb::brgemm(m, n, k, lda, ldb, ldc, add_c, reinterpret_cast<const unsigned char*>(a),
             reinterpret_cast<const signed char*>(b), c, true);
}

void release() { cb::brgemm_release(true); }

// ---------------------------------------------------------------------------- packing
#if AECOMP_BRG_X86
namespace {

AECOMP_BRG_TARGET inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// 16 float32 -> 16 bf16 (round to nearest even).
AECOMP_BRG_TARGET inline __m256i cvt16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }

// In-register transpose of a 16 x 16 block of 32-bit lanes: r[i] lane j -> r[j] lane i.
AECOMP_BRG_TARGET inline void transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // b[4i + c], 128-bit lane L: rows 4i .. 4i+3 of column 4L + c
  for (int i = 0; i < 4; ++i) {
    const __m512d a0 = _mm512_castps_pd(a[4 * i]), a1 = _mm512_castps_pd(a[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * i + 2]), a3 = _mm512_castps_pd(a[4 * i + 3]);
    b[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 u0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88), u1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD);
    const __m512 v0 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(u0, v0, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(u0, v0, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(u1, v1, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(u1, v1, 0xDD);
  }
}

}  // namespace

AECOMP_BRG_TARGET void rows_to_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo) {
  for (int64_t i = 0; i < m; ++i) {
    const float* r = x + i * ldx;
    bf16* o = out + i * ldo;
    for (int64_t j = 0; j < k; j += 16) {
      const __mmask16 mk = mask16(k - j);
      _mm256_mask_storeu_epi16(o + j, mk, cvt16(_mm512_maskz_loadu_ps(mk, r + j)));
    }
  }
}

AECOMP_BRG_TARGET void rows_to_vnni(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo) {
  for (int64_t i = 0; i < m; i += 2) {
    const float* r0 = x + i * ldx;
    const float* r1 = i + 1 < m ? r0 + ldx : nullptr;
    bf16* o = out + (i / 2) * ldo * 2;
    for (int64_t j = 0; j < k; j += 16) {
      const __mmask16 mk = mask16(k - j);
      const __m512i lo = _mm512_cvtepu16_epi32(cvt16(_mm512_maskz_loadu_ps(mk, r0 + j)));
      const __m512i hi = r1 ? _mm512_cvtepu16_epi32(cvt16(_mm512_maskz_loadu_ps(mk, r1 + j))) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(o + 2 * j, mk, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

AECOMP_BRG_TARGET void weight_t_to_vnni(const float* w, int64_t n, int64_t k, int64_t ldw, bf16* out) {
  // 16 rows of W x 16 k-pairs at a time: each row's 32 floats -> 16 words (pairs), then a
  // 16 x 16 word transpose puts one k-pair of 16 rows in a register: one 64-byte store.
  const int64_t kp = (k + 1) / 2;
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t rows = std::min<int64_t>(16, n - j0);
    for (int64_t q0 = 0; q0 < kp; q0 += 16) {
      __m512 r[16];
      const int64_t k0 = 2 * q0;
      for (int64_t i = 0; i < 16; ++i) {
        if (i >= rows) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const float* src = w + (j0 + i) * ldw + k0;
        const __m512 lo = _mm512_maskz_loadu_ps(mask16(k - k0), src);
        const __m512 hi = _mm512_maskz_loadu_ps(mask16(k - k0 - 16), src + 16);
        r[i] = reinterpret_cast<__m512>(_mm512_cvtne2ps_pbh(hi, lo));
      }
      transpose16(r);
      const int64_t qs = std::min<int64_t>(16, kp - q0);
      for (int64_t q = 0; q < qs; ++q)
        _mm512_mask_storeu_epi32(out + ((q0 + q) * n + j0) * 2, mask16(rows), _mm512_castps_si512(r[q]));
    }
  }
}

AECOMP_BRG_TARGET void store_t_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, bf16* out, int64_t ldo) {
  for (int64_t i0 = 0; i0 < m; i0 += 16) {
    const int64_t rows = std::min<int64_t>(16, m - i0);
    for (int64_t j0 = 0; j0 < k; j0 += 16) {
      const __mmask16 mk = mask16(k - j0);
      __m512 r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(mk, x + (i0 + i) * ldx + j0) : _mm512_setzero_ps();
      transpose16(r);
      const int64_t cols = std::min<int64_t>(16, k - j0);
      for (int64_t j = 0; j < cols; ++j) _mm256_mask_storeu_epi16(out + (j0 + j) * ldo + i0, mask16(rows), cvt16(r[j]));
    }
  }
}
#else
void rows_to_bf16(const float*, int64_t, int64_t, int64_t, bf16*, int64_t) { TORCH_CHECK(false, "x86-64 only"); }
void rows_to_vnni(const float*, int64_t, int64_t, int64_t, bf16*, int64_t) { TORCH_CHECK(false, "x86-64 only"); }
void weight_t_to_vnni(const float*, int64_t, int64_t, int64_t, bf16*) { TORCH_CHECK(false, "x86-64 only"); }
void store_t_bf16(const float*, int64_t, int64_t, int64_t, bf16*, int64_t) { TORCH_CHECK(false, "x86-64 only"); }
#endif

}  // namespace brg
}  // namespace cpu
}  // namespace aecomp

// ---------------------------------------------------------------------------- test entry points
#include <torch/extension.h>

namespace aecomp {
namespace cpu {
namespace brg {
namespace {

using at::Tensor;

void need_bf16(const char* what) {
  TORCH_CHECK(bf16_enabled(), "aecomp._C.", what, ": no bf16 brgemm here (", describe(), ")");
}

Tensor f32_2d(const Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.scalar_type() == at::kFloat && t.is_cpu() && t.stride(1) == 1, "aecomp._C.",
                    what, ": expected a 2-D float32 CPU tensor with unit column stride");
  return t;
}

}  // namespace

void def_brgemm(pybind11::module& mod) {
  mod.def("_brgemm_rows_bf16", [](const Tensor& x) {
    need_bf16("_brgemm_rows_bf16");
    f32_2d(x, "_brgemm_rows_bf16");
    Tensor out = at::zeros({x.size(0), x.size(1)}, x.options().dtype(at::kBFloat16));
    rows_to_bf16(x.data_ptr<float>(), x.size(0), x.size(1), x.stride(0), out.data_ptr<c10::BFloat16>(), x.size(1));
    return out;
  });
  mod.def("_brgemm_rows_vnni", [](const Tensor& x) {
    need_bf16("_brgemm_rows_vnni");
    f32_2d(x, "_brgemm_rows_vnni");
    const int64_t m = x.size(0), k = x.size(1);
    Tensor out = at::full({(m + 1) / 2, k, 2}, 7.0, x.options().dtype(at::kBFloat16));
    rows_to_vnni(x.data_ptr<float>(), m, k, x.stride(0), out.data_ptr<c10::BFloat16>(), k);
    return out;
  });
  mod.def("_brgemm_weight_t_vnni", [](const Tensor& w) {
    need_bf16("_brgemm_weight_t_vnni");
    f32_2d(w, "_brgemm_weight_t_vnni");
    const int64_t n = w.size(0), k = w.size(1);
    Tensor out = at::full({(k + 1) / 2, n, 2}, 7.0, w.options().dtype(at::kBFloat16));
    weight_t_to_vnni(w.data_ptr<float>(), n, k, w.stride(0), out.data_ptr<c10::BFloat16>());
    return out;
  });
  mod.def("_brgemm_store_t", [](const Tensor& x) {
    need_bf16("_brgemm_store_t");
    f32_2d(x, "_brgemm_store_t");
    Tensor out = at::zeros({x.size(1), x.size(0)}, x.options().dtype(at::kBFloat16));
    store_t_bf16(x.data_ptr<float>(), x.size(0), x.size(1), x.stride(0), out.data_ptr<c10::BFloat16>(), x.size(0));
    return out;
  });
  // C [m, n] = A [m, k] (bf16, k even) x B (VNNI [k/2][n][2]), in column blocks of nb.
  mod.def("_brgemm_gemm_bf16", [](const Tensor& a, const Tensor& b, int64_t nb) {
    need_bf16("_brgemm_gemm_bf16");
    TORCH_CHECK_VALUE(a.dim() == 2 && a.scalar_type() == at::kBFloat16 && a.is_contiguous() && a.size(1) % 2 == 0 &&
                          b.dim() == 3 && b.scalar_type() == at::kBFloat16 && b.is_contiguous() &&
                          b.size(0) * 2 == a.size(1) && b.size(2) == 2 && nb >= 1,
                      "aecomp._C._brgemm_gemm_bf16: expected a [m, k] (k even) and b [k/2, n, 2], bfloat16");
    const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
    Tensor c = at::empty({m, n}, a.options().dtype(at::kFloat));
    for (int64_t j = 0; j < n; j += nb)
      gemm_bf16(m, std::min(nb, n - j), k, k, n, n, a.data_ptr<c10::BFloat16>(), b.data_ptr<c10::BFloat16>() + 2 * j,
                c.data_ptr<float>() + j);
    release();
    return c;
  });
  // cpublas::pack of a row-major bf16 B [k, n] (k even, n a multiple of nb) in column blocks of
  // nb (16, 32, 48 or 64: what oneDNN's packing takes): [n / nb][k / 2][nb][2] (AMX only).
  mod.def("_brgemm_pack", [](const Tensor& b, int64_t nb) {
    TORCH_CHECK(amx_enabled(), "aecomp._C._brgemm_pack: cpublas::pack needs AMX (", describe(), ")");
    TORCH_CHECK_VALUE(b.dim() == 2 && b.scalar_type() == at::kBFloat16 && b.is_contiguous() && b.size(0) % 2 == 0 &&
                          nb > 0 && b.size(1) % nb == 0,
                      "aecomp._C._brgemm_pack: expected a contiguous bfloat16 [k, n] with k even and nb | n");
    const int64_t k = b.size(0), n = b.size(1);
    Tensor out = at::zeros({n / nb, k / 2, nb, 2}, b.options());
    for (int64_t j = 0; j < n; j += nb)
      at::native::cpublas::pack(k, nb, n, nb, at::kBFloat16, at::kBFloat16, b.data_ptr<c10::BFloat16>() + j,
                                out.data_ptr<c10::BFloat16>() + j * k);
    return out;
  });
  mod.def("_brgemm_level", [] { return std::string(level_name(level())); });
  mod.def("_brgemm_bf16", &bf16_enabled, "whether bf16 brgemm runs now (level and torch.backends.mkldnn)");
  mod.def("_brgemm_describe", [] { return describe(); });
}

}  // namespace brg
}  // namespace cpu
}  // namespace aecomp
