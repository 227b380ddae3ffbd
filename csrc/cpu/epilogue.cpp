// Torch-free element-wise kernels of the CPU backend (see epilogue.h for the math).
#include "epilogue.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AECOMP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AECOMP_CLONES
#endif

namespace aecomp {
namespace cpu {
namespace {

// exp(t) for t in [-87.3, 88.7] (the caller clamps), vectorisable: t = n ln2 + r with |r| <= ln2/2,
// exp(r) by a degree-6 minimax polynomial (Cephes coefficients, ~1 ulp), 2^n by building the
// exponent bits. NaN propagates through the arithmetic.
__attribute__((always_inline)) inline float exp_poly(float t) {
  // Round t / ln2 to the nearest integer n with the 1.5 * 2^23 trick: adding it pushes the
  // fraction out of the mantissa, and the low mantissa bits of the sum are n. No floor()
  // call, so the loop vectorises on every x86-64 level.
  const float shifted = t * 1.44269504088896341f + 12582912.0f;
  int32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
  const int32_t n = shifted_bits - 0x4B400000;
  const float fx = shifted - 12582912.0f;
  // Cody-Waite split of ln2 keeps r exact to float precision.
  float r = t - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// sigmoid(v) = 1 / (1 + exp(-v)). exp's argument is clamped to [-87, 88] with comparisons
// that keep NaN (a NaN compares false and passes through); the clamp changes the result by
// less than 1e-38, i.e. not at all in float32.
__attribute__((always_inline)) inline float sigmoid_f32(float v) {
  float t = -v;
  t = t > 88.0f ? 88.0f : t;
  t = t < -87.0f ? -87.0f : t;
  return 1.0f / (1.0f + exp_poly(t));
}

inline double sigmoid_f64(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// max(v, 0) that keeps NaN (std::max(v, 0) would turn NaN into 0).
template <typename T>
inline T relu(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename T, int ACT>
inline T act_grad(T g, T y) {
  if (ACT == 1) return y > T(0) ? g : T(0);
  if (ACT == 2) return g * (y * (T(1) - y));
  return g;
}

// The float32 loops are plain functions, one per activation, each cloned for AVX-512, AVX2
// and baseline x86-64 (the resolver picks by CPU feature at load time), stamped out by these macros (ACT_EXPR maps v -> activation, GRAD_EXPR
// maps (gv, yv) -> g * act'(y)).
#define AECOMP_BIAS_ACT_F32(NAME, ACT_EXPR)                                                              \
  AECOMP_CLONES void NAME(float* __restrict y, const float* __restrict b, int64_t rows, int64_t cols) { \
    for (int64_t i = 0; i < rows; ++i) {                                                                 \
      float* __restrict row = y + i * cols;                                                              \
      for (int64_t j = 0; j < cols; ++j) {                                                               \
        const float v = row[j] + (b ? b[j] : 0.0f);                                                      \
        row[j] = ACT_EXPR;                                                                               \
      }                                                                                                  \
    }                                                                                                    \
  }

AECOMP_BIAS_ACT_F32(bias_none_f32, v)
AECOMP_BIAS_ACT_F32(bias_relu_f32, (v < 0.0f ? 0.0f : v))
AECOMP_BIAS_ACT_F32(bias_sigmoid_f32, sigmoid_f32(v))

#define AECOMP_ACT_GRAD_F32(NAME, GRAD_EXPR)                                                             \
  AECOMP_CLONES void NAME(const float* g, const float* __restrict y, float* gz, double* __restrict acc,  \
                          int64_t rows, int64_t cols) {                                                  \
    for (int64_t i = 0; i < rows; ++i) {                                                                 \
      const float* gr = g + i * cols;                                                                    \
      const float* __restrict yr = y + i * cols;                                                         \
      float* zr = gz + i * cols;                                                                         \
      for (int64_t j = 0; j < cols; ++j) {                                                               \
        const float gv = gr[j], yv = yr[j];                                                              \
        zr[j] = GRAD_EXPR;                                                                               \
      }                                                                                                  \
      if (acc)                                                                                           \
        for (int64_t j = 0; j < cols; ++j) acc[j] += static_cast<double>(zr[j]);                         \
    }                                                                                                    \
  }

AECOMP_ACT_GRAD_F32(grad_relu_f32, (yv > 0.0f ? gv : 0.0f))
AECOMP_ACT_GRAD_F32(grad_sigmoid_f32, gv * (yv * (1.0f - yv)))

// gz = s * (y - t) * act'(y) with s = scale * g (g a scalar or per element), and the column sums.
#define AECOMP_LOSS_GRAD_F32(NAME, DACT_EXPR)                                                             \
  AECOMP_CLONES void NAME(const float* __restrict y, const float* __restrict t, const float* __restrict g, \
                          int64_t gs, float scale, float* __restrict gz, double* __restrict acc, int64_t rows, \
                          int64_t cols) {                                                                 \
    for (int64_t i = 0; i < rows; ++i) {                                                                  \
      const float* yr = y + i * cols;                                                                     \
      const float* tr = t + i * cols;                                                                     \
      const float* gr = g + i * cols * gs;                                                                \
      float* zr = gz + i * cols;                                                                          \
      for (int64_t j = 0; j < cols; ++j) {                                                                \
        const float yv = yr[j];                                                                           \
        zr[j] = (scale * gr[j * gs]) * (yv - tr[j]) * (DACT_EXPR);                                        \
      }                                                                                                   \
      if (acc)                                                                                            \
        for (int64_t j = 0; j < cols; ++j) acc[j] += static_cast<double>(zr[j]);                          \
    }                                                                                                     \
  }

AECOMP_LOSS_GRAD_F32(loss_grad_none_f32, 1.0f)
AECOMP_LOSS_GRAD_F32(loss_grad_relu_f32, (yv > 0.0f ? 1.0f : 0.0f))
AECOMP_LOSS_GRAD_F32(loss_grad_sigmoid_f32, yv * (1.0f - yv))

AECOMP_CLONES void col_sum_f32(const float* __restrict g, double* __restrict acc, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict gr = g + i * cols;
    for (int64_t j = 0; j < cols; ++j) acc[j] += static_cast<double>(gr[j]);
  }
}

template <typename T>
void bias_act_generic(T* y, const T* b, int64_t rows, int64_t cols, int act) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = y + i * cols;
    for (int64_t j = 0; j < cols; ++j) {
      T v = row[j] + (b ? b[j] : T(0));
      row[j] = act == 1 ? relu(v) : act == 2 ? T(sigmoid_f64(v)) : v;
    }
  }
}

}  // namespace

void bias_act_f32(float* y, const float* bias, int64_t rows, int64_t cols, int act) {
  switch (act) {
    case 1: bias_relu_f32(y, bias, rows, cols); break;
    case 2: bias_sigmoid_f32(y, bias, rows, cols); break;
    default:
      if (bias) bias_none_f32(y, bias, rows, cols);
  }
}

void bias_act_f64(double* y, const double* bias, int64_t rows, int64_t cols, int act) {
  if (act == 0 && !bias) return;
  bias_act_generic<double>(y, bias, rows, cols, act);
}

void act_grad_f32(const float* g, const float* y, float* gz, double* acc, int64_t rows, int64_t cols, int act) {
  switch (act) {
    case 1: grad_relu_f32(g, y, gz, acc, rows, cols); break;
    case 2: grad_sigmoid_f32(g, y, gz, acc, rows, cols); break;
    default:
      // act none: gz is g itself; only the bias gradient is left to compute.
      if (gz != g) std::memcpy(gz, g, sizeof(float) * rows * cols);
      if (acc) col_sum_f32(g, acc, rows, cols);
  }
}

void act_grad_f64(const double* g, const double* y, double* gz, double* acc, int64_t rows, int64_t cols, int act) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t k = i * cols + j;
      double v = act == 1 ? act_grad<double, 1>(g[k], y[k]) : act == 2 ? act_grad<double, 2>(g[k], y[k]) : g[k];
      gz[k] = v;
      if (acc) acc[j] += v;
    }
  }
}

void loss_act_grad_f32(const float* y, const float* t, const float* g, int64_t g_stride, float scale, float* gz,
                       double* acc, int64_t rows, int64_t cols, int act) {
  switch (act) {
    case 1: loss_grad_relu_f32(y, t, g, g_stride, scale, gz, acc, rows, cols); break;
    case 2: loss_grad_sigmoid_f32(y, t, g, g_stride, scale, gz, acc, rows, cols); break;
    default: loss_grad_none_f32(y, t, g, g_stride, scale, gz, acc, rows, cols);
  }
}

void loss_act_grad_f64(const double* y, const double* t, const double* g, int64_t g_stride, double scale, double* gz,
                       double* acc, int64_t rows, int64_t cols, int act) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t k = i * cols + j;
      const double yv = y[k];
      const double d = act == 1 ? (yv > 0.0 ? 1.0 : 0.0) : act == 2 ? yv * (1.0 - yv) : 1.0;
      const double v = scale * g[k * g_stride] * (yv - t[k]) * d;
      gz[k] = v;
      if (acc) acc[j] += v;
    }
  }
}

// Sums of squares: 8 independent double lanes (vectorisable, fixed order), folded at the end.
AECOMP_CLONES double sq_err_sum_f32(const float* __restrict a, const float* __restrict b, int64_t n) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) {
      double d = static_cast<double>(a[i + l]) - static_cast<double>(b[i + l]);
      lanes[l] += d * d;
    }
  for (; i < n; ++i) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    lanes[0] += d * d;
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

double sq_err_sum_f64(const double* a, const double* b, int64_t n) {
  double lanes[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) {
      double d = a[i + l] - b[i + l];
      lanes[l] += d * d;
    }
  for (; i < n; ++i) {
    double d = a[i] - b[i];
    lanes[0] += d * d;
  }
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

AECOMP_CLONES void sq_err_f32(const float* __restrict a, const float* __restrict b, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float d = a[i] - b[i];
    out[i] = d * d;
  }
}

void sq_err_f64(const double* a, const double* b, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double d = a[i] - b[i];
    out[i] = d * d;
  }
}

AECOMP_CLONES void sq_err_grad_f32(const float* __restrict a, const float* __restrict b, const float* __restrict g,
                                   int64_t g_stride, float scale, float* __restrict out, int64_t n) {
  if (g_stride == 0) {
    const float s = scale * g[0];
    for (int64_t i = 0; i < n; ++i) out[i] = s * (a[i] - b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = scale * g[i] * (a[i] - b[i]);
  }
}

void sq_err_grad_f64(const double* a, const double* b, const double* g, int64_t g_stride, double scale, double* out,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale * g[g_stride ? i : 0] * (a[i] - b[i]);
}

}  // namespace cpu
}  // namespace aecomp
