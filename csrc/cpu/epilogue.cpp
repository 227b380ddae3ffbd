// Torch-free element-wise kernels of the CPU backend (see epilogue.h for the math).
#include "epilogue.h"

#include <cmath>
#include <cstring>

#include "microkernel.h"

#define AECOMP_MK_BODY "epilogue_isa.inc"
#include "microkernel_foreach.h"

namespace aecomp {
namespace cpu {
namespace {

inline double sigmoid_f64(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// max(v, 0) that keeps NaN (std::max(v, 0) would turn NaN into 0).
template <typename T>
inline T relu(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename T, int ACT>
inline T act_grad(T g, T y) {
  if (ACT == 1) return y <= T(0) ? T(0) : g;  // a NaN y passes g (torch's threshold_backward)
  if (ACT == 2) return g * (y * (T(1) - y));
  return g;
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
    case 1: AECOMP_MK_DISPATCH(mk::active_isa(), bias_relu_f32, y, bias, rows, cols); break;
    case 2: AECOMP_MK_DISPATCH(mk::active_isa(), bias_sigmoid_f32, y, bias, rows, cols); break;
    default:
      if (bias) AECOMP_MK_DISPATCH(mk::active_isa(), bias_none_f32, y, bias, rows, cols);
  }
}

void bias_act_f64(double* y, const double* bias, int64_t rows, int64_t cols, int act) {
  if (act == 0 && !bias) return;
  bias_act_generic<double>(y, bias, rows, cols, act);
}

void act_grad_f32(const float* g, const float* y, float* gz, double* acc, int64_t rows, int64_t cols, int act) {
  switch (act) {
    case 1: AECOMP_MK_DISPATCH(mk::active_isa(), grad_relu_f32, g, y, gz, acc, rows, cols); break;
    case 2: AECOMP_MK_DISPATCH(mk::active_isa(), grad_sigmoid_f32, g, y, gz, acc, rows, cols); break;
    default:
      // act none: gz is g itself; only the bias gradient is left to compute.
      if (gz != g) std::memcpy(gz, g, sizeof(float) * rows * cols);
      if (acc) AECOMP_MK_DISPATCH(mk::active_isa(), col_sum_f32, g, acc, rows, cols);
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
    case 1: AECOMP_MK_DISPATCH(mk::active_isa(), loss_grad_relu_f32, y, t, g, g_stride, scale, gz, acc, rows, cols); break;
    case 2:
      AECOMP_MK_DISPATCH(mk::active_isa(), loss_grad_sigmoid_f32, y, t, g, g_stride, scale, gz, acc, rows, cols);
      break;
    default: AECOMP_MK_DISPATCH(mk::active_isa(), loss_grad_none_f32, y, t, g, g_stride, scale, gz, acc, rows, cols);
  }
}

void loss_act_grad_f64(const double* y, const double* t, const double* g, int64_t g_stride, double scale, double* gz,
                       double* acc, int64_t rows, int64_t cols, int act) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t k = i * cols + j;
      const double yv = y[k];
      const double d = act == 1 ? (yv <= 0.0 ? 0.0 : 1.0) : act == 2 ? yv * (1.0 - yv) : 1.0;
      const double v = scale * g[k * g_stride] * (yv - t[k]) * d;
      gz[k] = v;
      if (acc) acc[j] += v;
    }
  }
}

double sq_err_sum_f32(const float* a, const float* b, int64_t n) {
  return AECOMP_MK_DISPATCH(mk::active_isa(), sq_err_sum_f32, a, b, n);
}

void sq_err_f32(const float* a, const float* b, float* out, int64_t n) {
  AECOMP_MK_DISPATCH(mk::active_isa(), sq_err_f32, a, b, out, n);
}

void sq_err_grad_f32(const float* a, const float* b, const float* g, int64_t g_stride, float scale, float* out,
                     int64_t n) {
  AECOMP_MK_DISPATCH(mk::active_isa(), sq_err_grad_f32, a, b, g, g_stride, scale, out, n);
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

void sq_err_f64(const double* a, const double* b, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double d = a[i] - b[i];
    out[i] = d * d;
  }
}

void sq_err_grad_f64(const double* a, const double* b, const double* g, int64_t g_stride, double scale, double* out,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale * g[g_stride ? i : 0] * (a[i] - b[i]);
}

}  // namespace cpu
}  // namespace aecomp
