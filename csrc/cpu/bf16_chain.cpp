// The bf16 chain on the matrix engine (see bf16_chain.h for the math and the buffers).
//
// Every GEMM runs in tiles of kMb x kNb outputs: one brgemm call into a float32 tile in L1, then
// ONE vectorised epilogue pass over the tile that does all the element-wise work of that point
// of the chain (bias, activation, the loss and its gradient, act', the bias-gradient column sums)
// and stores the bf16 operands the next GEMMs read, in their layouts. Column sums (bias
// gradients, the loss) are summed per tile in float32 over at most kMb rows, then per tile row
// block in double, in a fixed order: the result does not depend on the thread count.
#include "bf16_chain.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "microkernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define AECOMP_B16_X86 1
#else
#define AECOMP_B16_X86 0
#endif

namespace aecomp {
namespace cpu {
namespace bf16c {

#if AECOMP_B16_X86
// Everything below runs only where bf16 brgemm runs (brg::bf16_enabled(): AVX512-BF16 or AMX).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")
namespace {

constexpr int64_t kMb = 32, kNb = 64;  // output tile of one brgemm call (kMb even: VNNI row pairs)
constexpr int64_t kWgradRow = 1024;    // weight gradients of layers up to this width: whole-row tiles

using brg::grow;  // 64-byte aligned scratch

// C [M, N] = A [M, K] B, tile by tile into a float32 [mr][nr] buffer, then epi(c, i0, j0, mr, nr, rb).
// nb: the tile width (kNb; a weight gradient may take whole rows, so its epilogue sees contiguous
// rows of W and the optimizer streams through them). Tiles go row block by row block (A read
// once), or with by_column column block by column block (B read once: when B is the big one).
template <class Epi>
void gemm_tiles(int64_t M, int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B, int64_t ldb, Epi& epi,
                int64_t nb = kNb, bool by_column = false) {
  const int64_t nrb = mk::ceil_div(M, kMb), ncb = mk::ceil_div(N, nb);
  auto body = [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> cbuf;
    float* c = grow(cbuf, kMb * nb);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rb = by_column ? t % nrb : t / ncb, cb = by_column ? t / nrb : t % ncb;
      const int64_t i0 = rb * kMb, j0 = cb * nb;
      const int64_t mr = std::min(kMb, M - i0), nr = std::min(nb, N - j0);
      brg::gemm_bf16(mr, nr, K, lda, ldb, nr, A + i0 * lda, B + 2 * j0, c);
      epi(c, i0, j0, mr, nr, rb);
    }
    brg::release();
  };
  mk::run_tiles(nrb * ncb, M * N * K, body);
}

// ---------------------------------------------------------------------------- vector pieces
inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
inline __m256i to_bf16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }
inline __m512 from_bf16(const bf16* p, __mmask16 mk) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, p)), 16));
}

// exp(x), float32 accuracy (a few ulp): x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial,
// scaled by 2^n (vscalefps: overflow -> inf, underflow -> 0, NaN stays NaN).
inline __m512 exp_ps(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 act_ps(__m512 v, int act) {
  if (act == 1) return _mm512_max_ps(_mm512_setzero_ps(), v);  // NaN stays NaN (max returns v)
  if (act == 2) {  // 1 / (1 + e^-v): reciprocal estimate (2^-14) and one Newton step (float32 accuracy)
    const __m512 one = _mm512_set1_ps(1.0f);
    // -v clamped to [-88, 88] (e^-v finite and exp_ps's argument reduction exact: v = +inf or
    // v > ~2e14 gave NaN, not 1); NaN stays NaN (min / max return their second operand, v)
    const __m512 e = exp_ps(_mm512_max_ps(_mm512_set1_ps(-88.0f),
                                          _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_sub_ps(_mm512_setzero_ps(), v))));
    const __m512 d = _mm512_add_ps(one, e);
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);
  }
  return v;
}

// g * act'(y): relu passes g where !(y <= 0) (NaN y passes, like torch); sigmoid g y (1 - y).
inline __m512 dact_ps(__m512 g, __m512 y, int act) {
  if (act == 1) return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_NLE_UQ), g);
  if (act == 2) return _mm512_mul_ps(g, _mm512_mul_ps(y, _mm512_sub_ps(_mm512_set1_ps(1.0f), y)));
  return g;
}

// Stores of a float32 tile row segment as bf16.
inline void store_bf16(bf16* p, __m512 v, __mmask16 mk) { _mm256_mask_storeu_epi16(p, mk, to_bf16(v)); }
inline void store_pair(bf16* p, __m512 v0, __m512 v1, __mmask16 mk) {
  const __m512i lo = _mm512_cvtepu16_epi32(to_bf16(v0)), hi = _mm512_cvtepu16_epi32(to_bf16(v1));
  _mm512_mask_storeu_epi32(p, mk, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
}

// Bias-gradient column sums of one tile: acc (<= 4 vectors) summed over rows in float32, then
// added to the double partial sums of the tile's row block.
struct ColSums {
  __m512 a[kNb / 16];
  ColSums() {
    for (auto& v : a) v = _mm512_setzero_ps();
  }
  void flush(double* out, int64_t nr) const {
    alignas(64) float tmp[kNb];
    for (int v = 0; v < kNb / 16; ++v) _mm512_store_ps(tmp + 16 * v, a[v]);
    for (int64_t j = 0; j < nr; ++j) out[j] += static_cast<double>(tmp[j]);
  }
};

// ---------------------------------------------------------------------------- epilogues
// hidden forward: v = act(c + b) -> H rows (ld) and HV (VNNI over rows, width n)
void epi_hidden(const float* c, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const float* b,
                                  int act, bf16* h, int64_t ld, bf16* hv, int64_t n) {
  for (int64_t r = 0; r < mr; r += 2) {
    const bool two = r + 1 < mr;
    for (int64_t j = 0; j < nr; j += 16) {
      const __mmask16 mk = mask16(nr - j);
      const __m512 bv = b ? _mm512_maskz_loadu_ps(mk, b + j0 + j) : _mm512_setzero_ps();
      const __m512 v0 = act_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mk, c + r * nr + j), bv), act);
      const __m512 v1 = two ? act_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mk, c + (r + 1) * nr + j), bv), act)
                            : _mm512_setzero_ps();
      store_bf16(h + (i0 + r) * ld + j0 + j, v0, mk);
      if (two) store_bf16(h + (i0 + r + 1) * ld + j0 + j, v1, mk);
      if (hv) store_pair(hv + ((i0 + r) * n + 2 * (j0 + j)), v0, v1, mk);
    }
  }
}

// top forward to float32 output
void epi_top(const float* c, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const float* b, int act,
                               float* y, int64_t ldy) {
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; j += 16) {
      const __mmask16 mk = mask16(nr - j);
      const __m512 bv = b ? _mm512_maskz_loadu_ps(mk, b + j0 + j) : _mm512_setzero_ps();
      _mm512_mask_storeu_ps(y + (i0 + r) * ldy + j0 + j, mk,
                            act_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mk, c + r * nr + j), bv), act));
    }
}

// top forward + MSE: y = act(c + b); sq += (y - t)^2; g = s (y - t) act'(y) into c, db, GZ rows.
double epi_top_mse(float* c, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const float* b, int act,
                                     const float* t, int64_t ldt, float scale, bf16* gz, int64_t ldg, double* db) {
  ColSums cs;
  double sq = 0.0;
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < mr; ++r) {
    __m512 sqv = _mm512_setzero_ps();
    for (int64_t j = 0, v = 0; j < nr; j += 16, ++v) {
      const __mmask16 mk = mask16(nr - j);
      const __m512 bv = b ? _mm512_maskz_loadu_ps(mk, b + j0 + j) : _mm512_setzero_ps();
      const __m512 y = act_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(mk, c + r * nr + j), bv), act);
      const __m512 d = _mm512_maskz_sub_ps(mk, y, _mm512_maskz_loadu_ps(mk, t + (i0 + r) * ldt + j0 + j));
      sqv = _mm512_fmadd_ps(d, d, sqv);
      const __m512 g = dact_ps(_mm512_mul_ps(s, d), y, act);
      cs.a[v] = _mm512_add_ps(cs.a[v], g);
      _mm512_mask_storeu_ps(c + r * nr + j, mk, g);
      if (gz) store_bf16(gz + (i0 + r) * ldg + j0 + j, g, mk);
    }
    sq += static_cast<double>(_mm512_reduce_add_ps(sqv));
  }
  cs.flush(db, nr);
  return sq;
}

// the ops' backward entry: g = grad * act'(y) from float32 grad and y (rows i0.., all in one tile)
void epi_top_grad(float* c, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const float* grad,
                                    const float* y, int64_t ld, int act, bf16* gz, int64_t ldg, double* db) {
  ColSums cs;
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0, v = 0; j < nr; j += 16, ++v) {
      const __mmask16 mk = mask16(nr - j);
      const int64_t off = (i0 + r) * ld + j0 + j;
      const __m512 g = dact_ps(_mm512_maskz_loadu_ps(mk, grad + off), _mm512_maskz_loadu_ps(mk, y + off), act);
      cs.a[v] = _mm512_add_ps(cs.a[v], g);
      _mm512_mask_storeu_ps(c + r * nr + j, mk, g);
      if (gz) store_bf16(gz + (i0 + r) * ldg + j0 + j, g, mk);
    }
  cs.flush(db, nr);
}

// dgrad: g = c * act'(h) with h the saved bf16 output of the layer below; into c, db, GZ rows.
void epi_dgrad(float* c, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const bf16* h, int64_t ldh,
                                 int act, bf16* gz, int64_t ldg, double* db) {
  ColSums cs;
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0, v = 0; j < nr; j += 16, ++v) {
      const __mmask16 mk = mask16(nr - j);
      const __m512 y = from_bf16(h + (i0 + r) * ldh + j0 + j, mk);
      const __m512 g = dact_ps(_mm512_maskz_loadu_ps(mk, c + r * nr + j), y, act);
      cs.a[v] = _mm512_add_ps(cs.a[v], g);
      _mm512_mask_storeu_ps(c + r * nr + j, mk, g);
      if (gz) store_bf16(gz + (i0 + r) * ldg + j0 + j, g, mk);
    }
  cs.flush(db, nr);
}

// Bias-gradient partial sums: [row block][N] doubles, summed over the row blocks in order.
struct DbParts {
  std::vector<double> part;
  int64_t nrb = 0, n = 0;
  void reset(int64_t M, int64_t N) {
    nrb = mk::ceil_div(M, kMb);
    n = N;
    part.assign(static_cast<size_t>(nrb * N), 0.0);
  }
  double* at(int64_t rb, int64_t j0) { return part.data() + rb * n + j0; }
  std::vector<float> total() const {
    std::vector<float> out(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t r = 0; r < nrb; ++r) s += part[r * n + j];
      out[j] = static_cast<float>(s);
    }
    return out;
  }
};

void zero_col(bf16* p, int64_t rows, int64_t ld, int64_t col) {
  for (int64_t i = 0; i < rows; ++i) p[i * ld + col] = bf16(0.0f);
}

}  // namespace

void pack_weights(const Chain& c) {
  for (size_t i = 0; i < c.layers(); ++i) {
    const int64_t K = c.dim[i], N = c.dim[i + 1];
    if (c.WT[i]) brg::weight_t_to_vnni(c.w[i], N, K, K, c.WT[i]);
    if (c.WV[i]) brg::rows_to_vnni(c.w[i], N, K, K, c.WV[i], K);
  }
}

void pack_input(const Chain& c, const float* x, int64_t ldx) {
  const int64_t M = c.M, K = c.dim[0], kp = even(K);
  bf16* h = c.H[0];
  bf16* hv = c.HV[0];
  for (int64_t i = 0; i < M; i += 2) {
    const bool two = i + 1 < M;
    for (int64_t j = 0; j < K; j += 16) {
      const __mmask16 mk = mask16(K - j);
      const __m512 v0 = _mm512_maskz_loadu_ps(mk, x + i * ldx + j);
      const __m512 v1 = two ? _mm512_maskz_loadu_ps(mk, x + (i + 1) * ldx + j) : _mm512_setzero_ps();
      store_bf16(h + i * kp + j, v0, mk);
      if (two) store_bf16(h + (i + 1) * kp + j, v1, mk);
      if (hv) store_pair(hv + (i * K + 2 * j), v0, v1, mk);
    }
  }
  if (kp != K) zero_col(h, M, kp, K);
}

void forward_hidden(const Chain& c) {
  const int64_t M = c.M;
  for (size_t i = 0; i + 1 < c.layers(); ++i) {
    const int64_t K = c.dim[i], N = c.dim[i + 1], ld = even(N);
    const float* b = c.b[i];
    const int act = c.act[i];
    bf16* h = c.H[i + 1];
    bf16* hv = c.HV[i + 1];
    auto epi = [&](float* t, int64_t i0, int64_t j0, int64_t mr, int64_t nr, int64_t) {
      epi_hidden(t, i0, j0, mr, nr, b, act, h, ld, hv, N);
    };
    gemm_tiles(M, N, even(K), c.H[i], even(K), c.WT[i], N, epi);
    if (ld != N) zero_col(h, M, ld, N);
  }
}

void forward_top(const Chain& c, float* y) {
  const size_t top = c.layers() - 1;
  const int64_t K = c.dim[top], N = c.dim[top + 1];
  const float* b = c.b[top];
  const int act = c.act[top];
  auto epi = [&](float* t, int64_t i0, int64_t j0, int64_t mr, int64_t nr, int64_t) {
    epi_top(t, i0, j0, mr, nr, b, act, y, N);
  };
  gemm_tiles(c.M, N, even(K), c.H[top], even(K), c.WT[top], N, epi);
}

double forward_top_mse(const Chain& c, const float* t, float scale, float* db) {
  const size_t top = c.layers() - 1;
  const int64_t M = c.M, K = c.dim[top], N = c.dim[top + 1], ldg = even(N), Mp = even(M);
  const float* b = c.b[top];
  const int act = c.act[top];
  bf16* gz = c.GZ[top];
  bf16* gzt = c.GZT[top];
  const int64_t ncb = mk::ceil_div(N, kNb);
  std::vector<double> sq(static_cast<size_t>(mk::ceil_div(M, kMb) * ncb), 0.0);
  DbParts dbp;
  dbp.reset(M, N);
  auto epi = [&](float* tile, int64_t i0, int64_t j0, int64_t mr, int64_t nr, int64_t rb) {
    sq[rb * ncb + j0 / kNb] = epi_top_mse(tile, i0, j0, mr, nr, b, act, t, N, scale, gz, ldg, dbp.at(rb, j0));
    if (gzt) brg::store_t_bf16(tile, mr, nr, nr, gzt + j0 * Mp + i0, Mp);
  };
  gemm_tiles(M, N, even(K), c.H[top], even(K), c.WT[top], N, epi);
  if (gz && ldg != N) zero_col(gz, M, ldg, N);
  if (gzt && Mp != M) zero_col(gzt, N, Mp, M);
  const std::vector<float> d = dbp.total();
  std::copy(d.begin(), d.end(), db);
  double total = 0.0;
  for (double v : sq) total += v;
  return total;
}

void top_grad(const Chain& c, const float* g, const float* y, float* db) {
  const size_t top = c.layers() - 1;
  const int64_t M = c.M, N = c.dim[top + 1], ldg = even(N), Mp = even(M);
  const int act = c.act[top];
  bf16* gz = c.GZ[top];
  bf16* gzt = c.GZT[top];
  DbParts dbp;
  dbp.reset(M, N);
  std::vector<float> tile(static_cast<size_t>(kMb * kNb));
  for (int64_t i0 = 0, rb = 0; i0 < M; i0 += kMb, ++rb)
    for (int64_t j0 = 0; j0 < N; j0 += kNb) {
      const int64_t mr = std::min(kMb, M - i0), nr = std::min(kNb, N - j0);
      epi_top_grad(tile.data(), i0, j0, mr, nr, g, y, N, act, gz, ldg, dbp.at(rb, j0));
      if (gzt) brg::store_t_bf16(tile.data(), mr, nr, nr, gzt + j0 * Mp + i0, Mp);
    }
  if (gz && ldg != N) zero_col(gz, M, ldg, N);
  if (gzt && Mp != M) zero_col(gzt, N, Mp, M);
  const std::vector<float> d = dbp.total();
  std::copy(d.begin(), d.end(), db);
}

void backward(const Chain& c, std::vector<float> db_cur, const std::vector<bool>& need_below, WgradSink& sink,
              float* gx) {
  const int64_t M = c.M, Mp = even(M);
  for (size_t k = c.layers(); k-- > 0;) {
    const int64_t K = c.dim[k], N = c.dim[k + 1];
    std::vector<float> db_next;
    if (k > 0 && need_below[k]) {
      const int act = c.act[k - 1];
      const bf16* h = c.H[k];
      const int64_t ldh = even(K);
      bf16* gz = c.GZ[k - 1];
      bf16* gzt = c.GZT[k - 1];
      DbParts dbp;
      dbp.reset(M, K);
      auto epi = [&](float* t, int64_t i0, int64_t j0, int64_t mr, int64_t nr, int64_t rb) {
        epi_dgrad(t, i0, j0, mr, nr, h, ldh, act, gz, ldh, dbp.at(rb, j0));
        if (gzt) brg::store_t_bf16(t, mr, nr, nr, gzt + j0 * Mp + i0, Mp);
      };
      gemm_tiles(M, K, even(N), c.GZ[k], even(N), c.WV[k], K, epi);
      if (gz && ldh != K) zero_col(gz, M, ldh, K);
      if (gzt && Mp != M) zero_col(gzt, K, Mp, M);
      db_next = dbp.total();
    } else if (k == 0 && gx) {
      auto epi = [&](float* t, int64_t i0, int64_t j0, int64_t mr, int64_t nr, int64_t) {
        for (int64_t r = 0; r < mr; ++r) std::memcpy(gx + (i0 + r) * K + j0, t + r * nr, sizeof(float) * nr);
      };
      gemm_tiles(M, K, even(N), c.GZ[0], even(N), c.WV[0], K, epi);
    }
    if (sink.wants_weight(k)) {
      auto epi = [&](float* t, int64_t n0, int64_t j0, int64_t rows, int64_t cols, int64_t) {
        sink.weight_tile(k, t, n0, j0, rows, cols);
      };
      // dW [N, K] = GZT [N][Mp] HV [Mp/2][K][2]: when HV is the larger operand (a wide input, e.g.
      // 784 pixels), one pass over it column block by column block; else whole rows of W.
      if (K > N || K > kWgradRow)
        gemm_tiles(N, K, Mp, c.GZT[k], Mp, c.HV[k], K, epi, kNb, /*by_column=*/true);
      else
        gemm_tiles(N, K, Mp, c.GZT[k], Mp, c.HV[k], K, epi, K);
    }
    sink.bias(k, c.b[k] ? db_cur.data() : nullptr, N);
    if (k == 0 || !need_below[k]) break;
    db_cur = std::move(db_next);
  }
}

#pragma GCC pop_options
#else
void pack_weights(const Chain&) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
void pack_input(const Chain&, const float*, int64_t) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
void forward_hidden(const Chain&) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
void forward_top(const Chain&, float*) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
double forward_top_mse(const Chain&, const float*, float, float*) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
void top_grad(const Chain&, const float*, const float*, float*) { TORCH_CHECK(false, "bf16 chain: x86-64 only"); }
void backward(const Chain&, std::vector<float>, const std::vector<bool>&, WgradSink&, float*) {
  TORCH_CHECK(false, "bf16 chain: x86-64 only");
}
#endif

}  // namespace bf16c
}  // namespace cpu
}  // namespace aecomp
