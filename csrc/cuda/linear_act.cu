// linear_act on CUDA: y = act(x W^T + b) and its backward, on the kernels of gemm.cuh.
//
// Math (x [M, K], W [N, K], b [N], y [M, N], upstream gradient g [M, N]):
//
//   forward   z = x W^T + b,  y = act(z)            act in {none, relu, sigmoid}
//   backward  gz = g * act'(z), written with the saved OUTPUT y:
//                  none: gz = g     relu: gz = g [!(y <= 0)]   sigmoid: gz = g y (1 - y)
//             dx = gz W          [M, K]   (dgrad: reduction over N)
//             dW = gz^T x        [N, K]   (wgrad: reduction over M, the batch)
//             db = sum_m gz[m]   [N]      (reduced in the wgrad kernel from the same tiles)
//
// Each of the three products is one launch of a GEMM kernel (tensor cores for bf16/fp16 with
// aligned rows, SIMT fp32 otherwise), with gz formed while the A operand is loaded and
// bias + activation applied in the forward kernel's registers before its only store. dW with a
// large batch is split over the batch into fp32 partials that a second kernel adds in a fixed
// order (no atomics, so the result, db included, is bitwise reproducible).
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "aecomp_cuda.h"
#include "gemm.cuh"

namespace aecomp_cuda {
namespace {

static_assert(TcLarge::BM == TcLarge::BN && TcSmall::BM == TcSmall::BN, "square tiles assumed by plan_gemm");
static_assert(SimtLarge::BM == SimtLarge::BN && SimtSmall::BM == SimtSmall::BN, "square tiles");
static_assert(TcLarge::BK == TcSmall::BK, "one BK per kernel family");

bool force_simt() {
  const char* e = std::getenv("AECOMP_CUDA_GEMM");
  return e != nullptr && std::strcmp(e, "simt") == 0;
}

// The tensor-core kernel reads rows with 16-byte cp.async: contiguous rows, a row stride that
// is a multiple of 8 elements and a 16-byte aligned start.
bool row_aligned(const Mat& m) {
  return m.s1 == 1 && m.s0 % 8 == 0 && reinterpret_cast<uintptr_t>(m.ptr) % 16 == 0;
}

template <typename T>
constexpr DType dtype_of() {
  return std::is_same<T, float>::value ? DType::F32 : std::is_same<T, __half>::value ? DType::F16 : DType::BF16;
}

bool tensor_cores(DType dt) { return dt != DType::F32 && device_cc_major() >= 8 && !force_simt(); }

struct Plan {
  bool tc = false;
  bool large = false;
  int splits = 1;
  int r_chunk = 0;
};

// Large (128 x 128) tiles only when they alone give every SM a block. The reduction is split
// only for wgrad, to reach about two blocks per SM, keeping at least 8 BK-steps per split so the
// pipeline has work to overlap and the partials stay small next to the operands.
Plan plan_gemm(bool tc, int I, int J, int R, bool allow_split) {
  Plan pl;
  pl.tc = tc;
  const int64_t sms = device_sm_count();
  const int64_t big = tc ? TcLarge::BM : SimtLarge::BM, small = tc ? TcSmall::BM : SimtSmall::BM;
  const int64_t bk = tc ? TcLarge::BK : SimtLarge::BK;
  pl.large = ceil_div64(I, big) * ceil_div64(J, big) >= sms;
  const int64_t tile = pl.large ? big : small;
  const int64_t tiles = ceil_div64(I, tile) * ceil_div64(J, tile);
  pl.r_chunk = R;
  if (allow_split && R > 0 && tiles > 0) {
    const int64_t ksteps = ceil_div64(R, bk);
    int64_t s = ceil_div64(2 * sms, tiles);
    const int64_t most = ksteps / 8 > 1 ? ksteps / 8 : 1;
    if (s > most) s = most;
    if (s > 64) s = 64;
    if (s < 1) s = 1;
    const int64_t chunk = ceil_div64(ksteps, s) * bk;
    pl.r_chunk = static_cast<int>(chunk);
    pl.splits = static_cast<int>(ceil_div64(R, chunk));
  }
  return pl;
}

// Column sums of gz (the bias gradient without dW): splits of at least 512 rows, about two
// blocks per SM.
struct ColPlan {
  int splits = 1;
  int rows = 1;
};
ColPlan plan_columns(int M, int N) {
  ColPlan c;
  const int64_t col_tiles = ceil_div64(N, 32);
  int64_t s = ceil_div64(2 * static_cast<int64_t>(device_sm_count()), col_tiles > 0 ? col_tiles : 1);
  const int64_t most = ceil_div64(M, 512);
  if (s > most) s = most;
  if (s < 1) s = 1;
  c.rows = M > 0 ? static_cast<int>(ceil_div64(M, s)) : 1;
  c.splits = M > 0 ? static_cast<int>(ceil_div64(M, c.rows)) : 1;
  return c;
}

dim3 gemm_grid(int I, int J, int tile, int splits) {
  return dim3(static_cast<unsigned>(ceil_div(I, tile)), static_cast<unsigned>(ceil_div(J, tile)),
              static_cast<unsigned>(splits));
}

bool grid_ok(const dim3& g) { return g.x > 0 && g.y > 0 && g.y <= 65535 && g.z <= 65535; }

template <typename T, class C, Major MA, Major MB, bool GATED>
cudaError_t launch_tc(const GemmArgs<T>& p, int splits, cudaStream_t st) {
  constexpr size_t smem = tc_smem_bytes<T, C, MA, MB, GATED>();
  auto kfn = &tc_gemm_kernel<T, C, MA, MB, GATED>;
  const cudaError_t e = set_max_dynamic_smem(reinterpret_cast<const void*>(kfn), static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  const dim3 grid = gemm_grid(p.I, p.J, C::BM, splits);
  if (!grid_ok(grid)) return cudaErrorInvalidConfiguration;
  AE_LAUNCH(kfn, grid, dim3(C::THREADS), smem, st, p);
  return last_launch_error();
}

template <typename T>
cudaError_t launch_simt(const GemmArgs<T>& p, const Plan& pl, cudaStream_t st) {
  if (pl.large) {
    auto kfn = &simt_gemm_kernel<T, SimtLarge>;
    const dim3 grid = gemm_grid(p.I, p.J, SimtLarge::BM, pl.splits);
    if (!grid_ok(grid)) return cudaErrorInvalidConfiguration;
    AE_LAUNCH(kfn, grid, dim3(SimtLarge::THREADS), 0, st, p);
  } else {
    auto kfn = &simt_gemm_kernel<T, SimtSmall>;
    const dim3 grid = gemm_grid(p.I, p.J, SimtSmall::BM, pl.splits);
    if (!grid_ok(grid)) return cudaErrorInvalidConfiguration;
    AE_LAUNCH(kfn, grid, dim3(SimtSmall::THREADS), 0, st, p);
  }
  return last_launch_error();
}

// Runs the planned kernel. MA/MB are the tensor-core kernel's operand majors for this product;
// GATED whether A is gated (p.y set), a template argument of the tensor-core kernel because
// the y tiles take shared memory.
template <typename T, Major MA, Major MB, bool GATED>
cudaError_t launch_tc_cfg(const GemmArgs<T>& p, const Plan& pl, cudaStream_t st) {
  // Large tiles take up to ~114 KiB of shared memory: fine on sm_80 / sm_90, too much on
  // sm_86 / sm_89 (99 KiB), which get the small tiles.
  constexpr size_t large_smem = tc_smem_bytes<T, TcLarge, MA, MB, GATED>();
  if (pl.large && large_smem <= static_cast<size_t>(device_smem_optin()))
    return launch_tc<T, TcLarge, MA, MB, GATED>(p, pl.splits, st);
  return launch_tc<T, TcSmall, MA, MB, GATED>(p, pl.splits, st);
}

template <typename T, Major MA, Major MB, bool MAY_GATE>
cudaError_t launch_gemm(const GemmArgs<T>& p, const Plan& pl, cudaStream_t st) {
  if constexpr (!std::is_same<T, float>::value) {
    if (pl.tc) {
      if constexpr (MAY_GATE) {
        if (p.y != nullptr) return launch_tc_cfg<T, MA, MB, true>(p, pl, st);
      }
      return launch_tc_cfg<T, MA, MB, false>(p, pl, st);
    }
  }
  return launch_simt<T>(p, pl, st);
}

template <typename T>
cudaError_t launch_finalize(const float* part, int splits, int64_t count, T* out, const float* bias_part, int I,
                            T* bias_out, cudaStream_t st) {
  const int64_t items = count > I ? count : I;
  if (items == 0) return cudaSuccess;
  int64_t blocks = ceil_div64(items, 256);
  const int64_t cap = 8 * static_cast<int64_t>(device_sm_count());
  if (blocks > cap) blocks = cap;
  auto kfn = &splitk_finalize_kernel<T>;
  AE_LAUNCH(kfn, dim3(static_cast<unsigned>(blocks)), dim3(256), 0, st, part, splits, count, out, bias_part, I,
            bias_out);
  return last_launch_error();
}

template <typename T>
GemmArgs<T> empty_args() {
  GemmArgs<T> p;
  std::memset(static_cast<void*>(&p), 0, sizeof(p));
  return p;
}

// ---------------------------------------------------------------- forward
template <typename T>
cudaError_t forward_t(int M, int N, int K, Mat x, Mat w, const void* bias, int act, void* y, cudaStream_t st) {
  if (M == 0 || N == 0) return cudaSuccess;
  GemmArgs<T> p = empty_args<T>();
  p.I = M, p.J = N, p.R = K;
  p.a = static_cast<const T*>(x.ptr), p.a_si = x.s0, p.a_sr = x.s1;  // A(m, k) = x[m, k]
  p.b = static_cast<const T*>(w.ptr), p.b_sr = w.s1, p.b_sj = w.s0;  // B(k, n) = W[n, k]
  p.bias = static_cast<const T*>(bias), p.act = act;
  p.out = static_cast<T*>(y), p.ldo = N;
  const Plan pl = plan_gemm(tensor_cores(dtype_of<T>()) && row_aligned(x) && row_aligned(w),
                            M, N, K, false);
  p.r_chunk = pl.r_chunk;
  return launch_gemm<T, Major::Red, Major::Red, false>(p, pl, st);
}

// ---------------------------------------------------------------- dgrad
template <typename T>
cudaError_t dgrad_t(int M, int N, int K, Mat g, Mat y, Mat w, int act, void* dx, cudaStream_t st) {
  if (M == 0 || K == 0) return cudaSuccess;
  const bool gated = act != ACT_NONE;
  GemmArgs<T> p = empty_args<T>();
  p.I = M, p.J = K, p.R = N;
  p.a = static_cast<const T*>(g.ptr), p.a_si = g.s0, p.a_sr = g.s1;  // A(m, n) = g[m, n] ...
  if (gated) p.y = static_cast<const T*>(y.ptr), p.y_si = y.s0, p.y_sr = y.s1;  // ... * act'(y[m, n])
  p.gate_act = act;
  p.b = static_cast<const T*>(w.ptr), p.b_sr = w.s0, p.b_sj = w.s1;  // B(n, k) = W[n, k]
  p.act = ACT_NONE;
  p.out = static_cast<T*>(dx), p.ldo = K;
  const bool tc = tensor_cores(dtype_of<T>()) && row_aligned(g) &&
                  (!gated || row_aligned(y)) && row_aligned(w);
  const Plan pl = plan_gemm(tc, M, K, N, false);
  p.r_chunk = pl.r_chunk;
  return launch_gemm<T, Major::Red, Major::Out, true>(p, pl, st);
}

// ---------------------------------------------------------------- wgrad (+ bias)
struct WgradPlan {
  Plan gemm;
  bool run_gemm = false;     // dW wanted and not empty
  bool fused_db = false;     // db from the wgrad kernel's tiles
  bool columns = false;      // db from column_sums_kernel
  ColPlan cols;
  int64_t part_floats = 0;       // dW partials
  int64_t bias_part_floats = 0;  // fused db partials
  int64_t col_part_floats = 0;   // column-sum partials
  size_t bytes() const { return static_cast<size_t>(part_floats + bias_part_floats + col_part_floats) * sizeof(float); }
};

WgradPlan plan_wgrad(DType dt, int M, int N, int K, Mat g, Mat y, Mat x, int act, bool need_w, bool need_b) {
  WgradPlan w;
  const bool gated = act != ACT_NONE;
  w.run_gemm = need_w && N > 0 && K > 0;
  w.fused_db = w.run_gemm && need_b;
  w.columns = need_b && !w.fused_db && N > 0;
  if (w.run_gemm) {
    const bool tc = tensor_cores(dt) && row_aligned(g) && (!gated || row_aligned(y)) && row_aligned(x);
    w.gemm = plan_gemm(tc, N, K, M, true);
    if (w.gemm.splits > 1) {
      w.part_floats = static_cast<int64_t>(w.gemm.splits) * N * K;
      if (w.fused_db) w.bias_part_floats = static_cast<int64_t>(w.gemm.splits) * N;
    }
  }
  if (w.columns) {
    w.cols = plan_columns(M, N);
    if (w.cols.splits > 1) w.col_part_floats = static_cast<int64_t>(w.cols.splits) * N;
  }
  return w;
}

template <typename T>
cudaError_t wgrad_t(const WgradPlan& w, int M, int N, int K, Mat g, Mat y, Mat x, int act, void* dw, void* db,
                    void* workspace, cudaStream_t st) {
  const bool gated = act != ACT_NONE;
  float* ws = static_cast<float*>(workspace);
  if (w.run_gemm) {
    GemmArgs<T> p = empty_args<T>();
    p.I = N, p.J = K, p.R = M;
    p.a = static_cast<const T*>(g.ptr), p.a_si = g.s1, p.a_sr = g.s0;  // A(n, m) = g[m, n] ...
    if (gated) p.y = static_cast<const T*>(y.ptr), p.y_si = y.s1, p.y_sr = y.s0;  // ... * act'(y[m, n])
    p.gate_act = act;
    p.b = static_cast<const T*>(x.ptr), p.b_sr = x.s0, p.b_sj = x.s1;  // B(m, k) = x[m, k]
    p.act = ACT_NONE;
    p.out = static_cast<T*>(dw), p.ldo = K;
    p.r_chunk = w.gemm.r_chunk;
    const int splits = w.gemm.splits;
    if (splits > 1) {
      p.part = ws;
      if (w.fused_db) p.bias_part = ws + w.part_floats;
    } else if (w.fused_db) {
      p.bias_out = static_cast<T*>(db);
    }
    cudaError_t e = launch_gemm<T, Major::Out, Major::Out, true>(p, w.gemm, st);
    if (e != cudaSuccess) return e;
    if (splits > 1) {
      e = launch_finalize<T>(p.part, splits, static_cast<int64_t>(N) * K, static_cast<T*>(dw), p.bias_part, N,
                             w.fused_db ? static_cast<T*>(db) : nullptr, st);
      if (e != cudaSuccess) return e;
    }
  }
  if (w.columns) {
    float* part = w.cols.splits > 1 ? ws + w.part_floats + w.bias_part_floats : nullptr;
    auto kfn = &column_sums_kernel<T>;
    const dim3 grid(static_cast<unsigned>(ceil_div(N, 32)), static_cast<unsigned>(w.cols.splits));
    AE_LAUNCH(kfn, grid, dim3(256), 0, st, static_cast<const T*>(g.ptr), g.s0, g.s1,
              gated ? static_cast<const T*>(y.ptr) : nullptr, y.s0, y.s1, act, M, N, w.cols.rows, static_cast<T*>(db),
              part);
    cudaError_t e = last_launch_error();
    if (e != cudaSuccess) return e;
    if (w.cols.splits > 1) {
      e = launch_finalize<T>(nullptr, w.cols.splits, 0, nullptr, part, N, static_cast<T*>(db), st);
      if (e != cudaSuccess) return e;
    }
  }
  return cudaSuccess;
}

}  // namespace

// ---------------------------------------------------------------- host API (aecomp_cuda.h)
cudaError_t linear_act_forward(DType dt, int M, int N, int K, Mat x, Mat w, const void* bias, int act, void* y,
                               cudaStream_t stream) {
  switch (dt) {
    case DType::BF16: return forward_t<__nv_bfloat16>(M, N, K, x, w, bias, act, y, stream);
    case DType::F16: return forward_t<__half>(M, N, K, x, w, bias, act, y, stream);
    default: return forward_t<float>(M, N, K, x, w, bias, act, y, stream);
  }
}

cudaError_t linear_act_dgrad(DType dt, int M, int N, int K, Mat g, Mat y, Mat w, int act, void* dx,
                             cudaStream_t stream) {
  switch (dt) {
    case DType::BF16: return dgrad_t<__nv_bfloat16>(M, N, K, g, y, w, act, dx, stream);
    case DType::F16: return dgrad_t<__half>(M, N, K, g, y, w, act, dx, stream);
    default: return dgrad_t<float>(M, N, K, g, y, w, act, dx, stream);
  }
}

size_t linear_act_wgrad_workspace(DType dt, int M, int N, int K, Mat g, Mat y, Mat x, int act, bool need_w,
                                  bool need_b) {
  return plan_wgrad(dt, M, N, K, g, y, x, act, need_w, need_b).bytes();
}

cudaError_t linear_act_wgrad(DType dt, int M, int N, int K, Mat g, Mat y, Mat x, int act, void* dw, void* db,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const WgradPlan w = plan_wgrad(dt, M, N, K, g, y, x, act, dw != nullptr, db != nullptr);
  if (workspace_bytes < w.bytes() || (w.bytes() > 0 && workspace == nullptr)) return cudaErrorInvalidValue;
  switch (dt) {
    case DType::BF16: return wgrad_t<__nv_bfloat16>(w, M, N, K, g, y, x, act, dw, db, workspace, stream);
    case DType::F16: return wgrad_t<__half>(w, M, N, K, g, y, x, act, dw, db, workspace, stream);
    default: return wgrad_t<float>(w, M, N, K, g, y, x, act, dw, db, workspace, stream);
  }
}

}  // namespace aecomp_cuda
