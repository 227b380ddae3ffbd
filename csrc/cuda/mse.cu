// mse_loss on CUDA.
//
// Math (a = input, b = target, both with n elements; g = upstream gradient):
//   forward   none: l_i = (a_i - b_i)^2
//             sum:  L = sum_i (a_i - b_i)^2          mean: L = (1/n) sum_i (a_i - b_i)^2
//   backward  dL/da_i = s (a_i - b_i) g_i,  dL/db_i = -dL/da_i,
//             s = 2/n for mean and 2 for sum / none; g_i = g (a scalar) for mean / sum.
//
// The mean/sum is one read of a and b in a deterministic two-pass reduction:
//   pass 1: P blocks of 256 threads; the elements are cut into chunks of V = 16 / sizeof(T)
//           (chunk c = elements cV .. cV + V - 1, the last one partial); thread t of the grid
//           sums, in fp32 and in element order, the chunks t, t + 256 P, t + 512 P, ..., each
//           read as one 16-byte vector when both pointers are 16-byte aligned and the chunk is
//           whole, element by element otherwise (same order, same fmaf's); then the block adds
//           its 256 sums with a fixed shuffle tree (xor 16, 8, 4, 2, 1) and the 8 warp sums in
//           warp order -> partial[blk];
//   pass 2: one block adds the P partials the same way and scales.
// What is reproducible: P depends only on n, the dtype and the GPU's SM count, and the order of
// every sum only on n and P, so the same values give the same bits on every run, in every
// process, whatever the pointers' alignment, on GPUs with the same number of SMs (another SM
// count may give another P and so other bits).
// The backward is one fused elementwise pass writing dL/da and/or dL/db.
#include "aecomp_cuda.h"
#include "cuda_common.cuh"

namespace aecomp_cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Vec {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
};

template <typename T>
AE_DEVICE void load_vec(const T* p, int64_t v, float (&out)[Vec<T>::N]) {
  if constexpr (sizeof(T) == 4) {
    const float4 q = reinterpret_cast<const float4*>(p)[v];
    out[0] = q.x, out[1] = q.y, out[2] = q.z, out[3] = q.w;
  } else {
    const uint4 q = reinterpret_cast<const uint4*>(p)[v];
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = unpack2<T>(w[k]);
      out[2 * k] = f.x, out[2 * k + 1] = f.y;
    }
  }
}

template <typename T>
AE_DEVICE void store_vec(T* p, int64_t v, const float (&in)[Vec<T>::N]) {
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<float4*>(p)[v] = make_float4(in[0], in[1], in[2], in[3]);
  } else {
    uint4 q;
    q.x = pack2<T>(in[0], in[1]);
    q.y = pack2<T>(in[2], in[3]);
    q.z = pack2<T>(in[4], in[5]);
    q.w = pack2<T>(in[6], in[7]);
    reinterpret_cast<uint4*>(p)[v] = q;
  }
}

// Fixed-order block sum; the result is valid in thread 0. `red` holds 32 floats of shared memory.
AE_DEVICE float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = static_cast<int>(threadIdx.x) & 31, w = static_cast<int>(threadIdx.x) >> 5;
  if (lane == 0) red[w] = v;
  AE_SYNC();
  float t = 0.f;
  if (w == 0) {
    t = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : 0.f;
    t = warp_sum(t);
  }
  return t;
}

// Pass 1 of mean/sum: partial[blockIdx.x] = sum over this block's chunks of (a - b)^2.
// vec: a and b are 16-byte aligned (whole chunks are read as vectors). The summation order is
// the same either way, so alignment does not change the bits.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(kThreads)
    mse_partial_kernel(const T* a, const T* b, int64_t n, bool vec, float* partial) {
  AE_SHARED(float, red, 32);
  constexpr int V = Vec<T>::N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunks = ceil_div64(n, V);
  float s = 0.f;
  for (int64_t c = first; c < chunks; c += stride) {
    if (vec && (c + 1) * V <= n) {
      float x[V], y[V];
      load_vec<T>(a, c, x);
      load_vec<T>(b, c, y);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = x[k] - y[k];
        s = fmaf(d, d, s);
      }
    } else {
      for (int64_t i = c * V; i < n && i < (c + 1) * V; ++i) {
        const float d = Num<T>::to_f(a[i]) - Num<T>::to_f(b[i]);
        s = fmaf(d, d, s);
      }
    }
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: out = (sum of the P partials) / divisor (n for mean, 1 for sum), in T.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(kThreads) mse_final_kernel(const float* partial, int P, float divisor, T* out) {
  AE_SHARED(float, red, 32);
  float s = 0.f;
  for (int i = static_cast<int>(threadIdx.x); i < P; i += static_cast<int>(blockDim.x)) s += partial[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[0] = Num<T>::from_f(s / divisor);
}

// reduction = none: out_i = (a_i - b_i)^2.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(kThreads) mse_none_kernel(const T* a, const T* b, int64_t n, int64_t n_vec, T* out) {
  constexpr int V = Vec<T>::N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = first; v < n_vec; v += stride) {
    float x[V], y[V], o[V];
    load_vec<T>(a, v, x);
    load_vec<T>(b, v, y);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = (x[k] - y[k]) * (x[k] - y[k]);
    store_vec<T>(out, v, o);
  }
  for (int64_t i = n_vec * V + first; i < n; i += stride) {
    const float d = Num<T>::to_f(a[i]) - Num<T>::to_f(b[i]);
    out[i] = Num<T>::from_f(d * d);
  }
}

// Fused backward: ga_i = scale (a_i - b_i) g_i and gb_i = -ga_i; ga / gb may be null.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(kThreads)
    mse_backward_kernel(const T* g, bool g_scalar, const T* a, const T* b, int64_t n, int64_t n_vec, float scale, T* ga,
                        T* gb) {
  constexpr int V = Vec<T>::N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float g0 = g_scalar ? Num<T>::to_f(g[0]) : 0.f;
  for (int64_t v = first; v < n_vec; v += stride) {
    float x[V], y[V], gv[V], o[V], on[V];
    load_vec<T>(a, v, x);
    load_vec<T>(b, v, y);
    if (!g_scalar) load_vec<T>(g, v, gv);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      o[k] = scale * (x[k] - y[k]) * (g_scalar ? g0 : gv[k]);
      on[k] = -o[k];
    }
    if (ga != nullptr) store_vec<T>(ga, v, o);
    if (gb != nullptr) store_vec<T>(gb, v, on);
  }
  for (int64_t i = n_vec * V + first; i < n; i += stride) {
    const float gi = g_scalar ? g0 : Num<T>::to_f(g[i]);
    const float o = scale * (Num<T>::to_f(a[i]) - Num<T>::to_f(b[i])) * gi;
    if (ga != nullptr) ga[i] = Num<T>::from_f(o);
    if (gb != nullptr) gb[i] = Num<T>::from_f(-o);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for an elementwise pass: enough for `items` at `per_thread` each, at most 8 per SM
// (grid-stride loops cover the rest).
unsigned grid_for(int64_t items, int per_thread) {
  int64_t blocks = ceil_div64(items, static_cast<int64_t>(kThreads) * per_thread);
  const int64_t cap = 8 * static_cast<int64_t>(device_sm_count());
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

// Pass-1 blocks of a mean/sum: at least 4 vectors per thread, at most 4 per SM and 1024.
int partial_blocks(int64_t n, int per_vec) {
  int64_t cap = 4 * static_cast<int64_t>(device_sm_count());
  if (cap > 1024) cap = 1024;
  int64_t p = ceil_div64(n, static_cast<int64_t>(kThreads) * per_vec * 4);
  if (p > cap) p = cap;
  if (p < 1) p = 1;
  return static_cast<int>(p);
}

int max_partial_blocks() {
  const int64_t cap = 4 * static_cast<int64_t>(device_sm_count());
  return static_cast<int>(cap > 1024 ? 1024 : cap);
}

template <typename T>
cudaError_t mse_forward_t(int64_t n, const T* a, const T* b, int reduction, T* out, float* ws, size_t ws_bytes,
                      cudaStream_t st) {
  constexpr int V = Vec<T>::N;
  if (reduction == RED_NONE) {
    if (n == 0) return cudaSuccess;
    const int64_t n_vec = (aligned16(a) && aligned16(b) && aligned16(out)) ? n / V : 0;
    auto kfn = &mse_none_kernel<T>;
    AE_LAUNCH(kfn, dim3(grid_for(n, V)), dim3(kThreads), 0, st, a, b, n, n_vec, out);
    return last_launch_error();
  }
  if (n == 0) return cudaErrorInvalidValue;  // the glue answers empty inputs itself
  const int P = partial_blocks(n, V);
  if (ws == nullptr || ws_bytes < static_cast<size_t>(P) * sizeof(float)) return cudaErrorInvalidValue;
  const bool vec = aligned16(a) && aligned16(b);
  auto k1 = &mse_partial_kernel<T>;
  AE_LAUNCH(k1, dim3(static_cast<unsigned>(P)), dim3(kThreads), 0, st, a, b, n, vec, ws);
  cudaError_t e = last_launch_error();
  if (e != cudaSuccess) return e;
  const float divisor = reduction == RED_MEAN ? static_cast<float>(n) : 1.f;
  auto k2 = &mse_final_kernel<T>;
  AE_LAUNCH(k2, dim3(1), dim3(kThreads), 0, st, static_cast<const float*>(ws), P, divisor, out);
  return last_launch_error();
}

template <typename T>
cudaError_t mse_backward_t(int64_t n, const T* g, bool g_scalar, const T* a, const T* b, int reduction, T* ga, T* gb,
                       cudaStream_t st) {
  constexpr int V = Vec<T>::N;
  if (n == 0 || (ga == nullptr && gb == nullptr)) return cudaSuccess;
  const float scale = reduction == RED_MEAN ? static_cast<float>(2.0 / static_cast<double>(n)) : 2.f;
  const bool vec = aligned16(a) && aligned16(b) && (g_scalar || aligned16(g)) && (ga == nullptr || aligned16(ga)) &&
                   (gb == nullptr || aligned16(gb));
  const int64_t n_vec = vec ? n / V : 0;
  auto kfn = &mse_backward_kernel<T>;
  AE_LAUNCH(kfn, dim3(grid_for(n, V)), dim3(kThreads), 0, st, g, g_scalar, a, b, n, n_vec, scale, ga, gb);
  return last_launch_error();
}

}  // namespace

size_t mse_workspace(int64_t) { return static_cast<size_t>(max_partial_blocks()) * sizeof(float); }

cudaError_t mse_forward(DType dt, int64_t n, const void* a, const void* b, int reduction, void* out, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream) {
  float* ws = static_cast<float*>(workspace);
  switch (dt) {
    case DType::BF16:
      return mse_forward_t<__nv_bfloat16>(n, static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b),
                                      reduction, static_cast<__nv_bfloat16*>(out), ws, workspace_bytes, stream);
    case DType::F16:
      return mse_forward_t<__half>(n, static_cast<const __half*>(a), static_cast<const __half*>(b), reduction,
                               static_cast<__half*>(out), ws, workspace_bytes, stream);
    default:
      return mse_forward_t<float>(n, static_cast<const float*>(a), static_cast<const float*>(b), reduction,
                              static_cast<float*>(out), ws, workspace_bytes, stream);
  }
}

cudaError_t mse_backward(DType dt, int64_t n, const void* grad, bool grad_is_scalar, const void* a, const void* b,
                         int reduction, void* grad_a, void* grad_b, cudaStream_t stream) {
  switch (dt) {
    case DType::BF16: {
      using T = __nv_bfloat16;
      return mse_backward_t<T>(n, static_cast<const T*>(grad), grad_is_scalar, static_cast<const T*>(a),
                           static_cast<const T*>(b), reduction, static_cast<T*>(grad_a), static_cast<T*>(grad_b), stream);
    }
    case DType::F16: {
      using T = __half;
      return mse_backward_t<T>(n, static_cast<const T*>(grad), grad_is_scalar, static_cast<const T*>(a),
                           static_cast<const T*>(b), reduction, static_cast<T*>(grad_a), static_cast<T*>(grad_b), stream);
    }
    default: {
      using T = float;
      return mse_backward_t<T>(n, static_cast<const T*>(grad), grad_is_scalar, static_cast<const T*>(a),
                           static_cast<const T*>(b), reduction, static_cast<T*>(grad_a), static_cast<T*>(grad_b), stream);
    }
  }
}

}  // namespace aecomp_cuda
