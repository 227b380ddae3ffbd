// Element-wise passes of the CPU kernels, on raw row-major buffers.
//
// Forward epilogue, over the GEMM output acc [M, N]:      y = act(acc + b)
// Backward prologue, over the incoming gradient g [M, N]:  gz = g * act'(y),  db = sum_rows gz
//   act'(y): none -> 1; relu -> 0 where y <= 0, else 1 (a NaN y passes g, as torch's
//   threshold_backward); sigmoid -> y (1 - y)   (from the saved output y)
//
// Both are single passes over the [M, N] buffer. The float32 versions (epilogue_isa.inc) are
// compiled for AVX-512, AVX2 and baseline x86-64 and dispatched at the level of isa.h (capped
// by AECOMP_CPU_ISA), with a polynomial exp that the compiler vectorises, so sigmoid costs a
// few instructions per element instead of a libm call.
#pragma once

#include <cstdint>

namespace aecomp {
namespace cpu {

// act: 0 none, 1 relu, 2 sigmoid (aecomp::Act)
void bias_act_f32(float* y, const float* bias, int64_t rows, int64_t cols, int act);
void bias_act_f64(double* y, const double* bias, int64_t rows, int64_t cols, int act);

// gz may alias g. acc (length cols, may be null) accumulates the column sums of gz in double,
// in row order; the caller splits rows into fixed chunks, so the bits never depend on threads.
void act_grad_f32(const float* g, const float* y, float* gz, double* acc, int64_t rows, int64_t cols, int act);
void act_grad_f64(const double* g, const double* y, double* gz, double* acc, int64_t rows, int64_t cols, int act);

// The fused loss entry of a chain that ends in an MSE loss against t:
//   gz = (scale * g) * (y - t) * act'(y),  acc += sum_rows gz
// with scale = 2/n (mean) or 2 (sum) and g the incoming gradient of the loss (g_stride 0: a
// scalar; 1: per element, for reduction 'none'). One pass: the loss backward and the output
// layer's activation backward are never written out separately.
void loss_act_grad_f32(const float* y, const float* t, const float* g, int64_t g_stride, float scale, float* gz,
                       double* acc, int64_t rows, int64_t cols, int act);
void loss_act_grad_f64(const double* y, const double* t, const double* g, int64_t g_stride, double scale, double* gz,
                       double* acc, int64_t rows, int64_t cols, int act);

// sum((a - b)^2) in double, fixed order, and the element-wise (a - b)^2.
double sq_err_sum_f32(const float* a, const float* b, int64_t n);
double sq_err_sum_f64(const double* a, const double* b, int64_t n);
void sq_err_f32(const float* a, const float* b, float* out, int64_t n);
void sq_err_f64(const double* a, const double* b, double* out, int64_t n);
// out = scale * g[i or 0] * (a - b);  g_stride 0 broadcasts a scalar gradient.
void sq_err_grad_f32(const float* a, const float* b, const float* g, int64_t g_stride, float scale, float* out,
                     int64_t n);
void sq_err_grad_f64(const double* a, const double* b, const double* g, int64_t g_stride, double scale,
                     double* out, int64_t n);

// Overloads by element type, for code dispatched over float/double.
inline void bias_act(float* y, const float* b, int64_t r, int64_t c, int act) { bias_act_f32(y, b, r, c, act); }
inline void bias_act(double* y, const double* b, int64_t r, int64_t c, int act) { bias_act_f64(y, b, r, c, act); }
inline void act_grad(const float* g, const float* y, float* gz, double* acc, int64_t r, int64_t c, int act) {
  act_grad_f32(g, y, gz, acc, r, c, act);
}
inline void act_grad(const double* g, const double* y, double* gz, double* acc, int64_t r, int64_t c, int act) {
  act_grad_f64(g, y, gz, acc, r, c, act);
}
inline void loss_act_grad(const float* y, const float* t, const float* g, int64_t gs, double scale, float* gz,
                          double* acc, int64_t r, int64_t c, int act) {
  loss_act_grad_f32(y, t, g, gs, static_cast<float>(scale), gz, acc, r, c, act);
}
inline void loss_act_grad(const double* y, const double* t, const double* g, int64_t gs, double scale, double* gz,
                          double* acc, int64_t r, int64_t c, int act) {
  loss_act_grad_f64(y, t, g, gs, scale, gz, acc, r, c, act);
}
inline double sq_err_sum(const float* a, const float* b, int64_t n) { return sq_err_sum_f32(a, b, n); }
inline double sq_err_sum(const double* a, const double* b, int64_t n) { return sq_err_sum_f64(a, b, n); }
inline void sq_err(const float* a, const float* b, float* o, int64_t n) { sq_err_f32(a, b, o, n); }
inline void sq_err(const double* a, const double* b, double* o, int64_t n) { sq_err_f64(a, b, o, n); }
inline void sq_err_grad(const float* a, const float* b, const float* g, int64_t gs, double scale, float* o, int64_t n) {
  sq_err_grad_f32(a, b, g, gs, static_cast<float>(scale), o, n);
}
inline void sq_err_grad(const double* a, const double* b, const double* g, int64_t gs, double scale, double* o,
                        int64_t n) {
  sq_err_grad_f64(a, b, g, gs, scale, o, n);
}

}  // namespace cpu
}  // namespace aecomp
