// The fused layer chain on CUDA (aecomp::mlp and friends): a forward kernel that runs a whole
// chain with the intermediates on chip, and the fused loss-entry kernel of the backward.
//
// Forward math (h_0 = x [M, K_0], W_i [N_i, K_i] with K_{i+1} = N_i):
//
//   y_i = h_{i+1} = act_i(h_i W_i^T + b_i),   i = 0 .. L-1,   every y_i written out (the
//   backward needs them: act_i' is a function of y_i, and y_i is the input of layer i+1).
//
// mlp_chain_kernel (SIMT, fp32 FMAs for every dtype). A block owns CHAIN_BM = 16 rows and walks
// all layers: the rows of the intermediate activations h_1 .. h_{L-1} live in shared memory as
// fp32 (the value stored to y_i, i.e. rounded to T, so the chain computes exactly what L
// separate linear_act calls compute); the input x is streamed through a 16 x 16 chunk (its
// width K_0 is not limited); the weights are streamed from global/L2 in chunks of CHAIN_BK = 16
// reduction steps, transposed into shared memory; bias + activation are applied in registers
// before the only store of y_i, which (but for the last layer) is also written into the other
// shared-memory buffer as the next layer's input. 256 threads = 4 row groups x 64 column lanes;
// thread (rg, c) owns rows 4 rg .. 4 rg + 3 and columns n0 + c + 64 j, j < 4 (16 fp32
// accumulators) of a 256-column pass; a layer wider than 256 takes several passes over the same
// on-chip input, so only the intermediate widths N_0 .. N_{L-2} are limited (to 256, what the
// buffers hold; the autoencoder 784-128-64-32-64-128-784 runs in one launch).
// Shared memory: 2 x 16 x (W + 1) fp32 activations (W = the widest intermediate)
// + 16 x 260 fp32 weight chunk + 16 x 17 fp32 x chunk: at most ~50 KiB.
//
// mlp_chain_tc_kernel (bf16/fp16 on tensor cores, fp32 accumulate; see its comment below) runs
// the same contract when every width is a multiple of 8 and the rows are 16-byte aligned, as
// the autoencoder's are; the launcher picks it (mlp_chain_forward in aecomp_cuda.h).
//
// Loss entry (mlp_mse_backward's first pass), for the last layer's output y [M, N], target t:
//
//   gz[m, n] = s * g_mn * (y[m, n] - t[m, n]) * act'(y[m, n]),   s = 2 / (M N) (mean), 2 (sum, none)
//   db[n]    = sum_m gz[m, n]
//
// with g_mn = g[0] (mean/sum: the loss's scalar upstream gradient) or g[m, n] (none). One kernel
// forms gz and the column sums from the same registers; the MSE gradient and the activation
// gradient are never written out. Column sums are split over the batch into fp32 partials
// (about two blocks per SM), added in split order by a second kernel: deterministic, no atomics.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "aecomp_cuda.h"
#include "gemm.cuh"

namespace aecomp_cuda {
namespace {

constexpr int CHAIN_BM = 16;
constexpr int CHAIN_BK = 16;
constexpr int CHAIN_THREADS = 256;
constexpr int CHAIN_WLD = CHAIN_MAX_WIDTH + 4;  // weight chunk row stride (floats)
constexpr int CHAIN_XLD = CHAIN_BK + 1;         // x chunk row stride (floats)

template <typename T>
struct ChainArgs {
  int M, L;
  const T* x;
  int64_t x_s0, x_s1;
  int width[CHAIN_MAX_LAYERS + 1];  // width[0] = K_0, width[i + 1] = N_i
  const T* w[CHAIN_MAX_LAYERS];      // contiguous [N_i, K_i]
  const T* bias[CHAIN_MAX_LAYERS];   // [N_i] or null
  int act[CHAIN_MAX_LAYERS];
  T* out[CHAIN_MAX_LAYERS];          // contiguous [M, N_i]
  int hld;                           // row stride of the activation buffers (elements of their type)
};

// At least two blocks per SM (<= 128 registers), so ptxas does not squeeze the kernel into 64
// registers (which spills in the 16-bit instances).
#ifdef AECOMP_EMULATE
#define AE_CHAIN_BOUNDS
#else
#define AE_CHAIN_BOUNDS __launch_bounds__(CHAIN_THREADS, 2)
#endif

template <typename T>
AE_KERNEL void AE_CHAIN_BOUNDS mlp_chain_kernel(const ChainArgs<T> p) {
  AE_DYNAMIC_SMEM(smem_raw);
  float* const hbuf0 = reinterpret_cast<float*>(smem_raw);
  float* const hbuf1 = hbuf0 + CHAIN_BM * p.hld;
  float* const ws = hbuf1 + CHAIN_BM * p.hld;   // ws[k][n]: CHAIN_BK x CHAIN_WLD
  float* const xs = ws + CHAIN_BK * CHAIN_WLD;  // xs[r][k]: CHAIN_BM x CHAIN_XLD (layer 0's A)

  const int tid = static_cast<int>(threadIdx.x), c = tid & 63, rg = tid >> 6;
  const int m0 = static_cast<int>(blockIdx.x) * CHAIN_BM;
  const int rows = imin(CHAIN_BM, p.M - m0);

  float* hin = hbuf0;
  float* hout = hbuf1;
  for (int l = 0; l < p.L; ++l) {
    const int K = p.width[l], N = p.width[l + 1];
    const bool first = l == 0, last = l == p.L - 1;
    const T* const w = p.w[l];
    const T* const bias = p.bias[l];
    T* const out = p.out[l];
    const int act = p.act[l];
    for (int n0 = 0; n0 < N; n0 += CHAIN_MAX_WIDTH) {  // column passes (only the ends may be wider)
      const int nw = imin(CHAIN_MAX_WIDTH, N - n0);
      float acc[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

      for (int k0 = 0; k0 < K; k0 += CHAIN_BK) {
        AE_SYNC();  // h written (first step of a layer) / the previous chunk fully read
        // ws[kk][nn] = W[n0 + nn, k0 + kk]: consecutive threads walk k (contiguous in W).
        for (int e = tid; e < nw * CHAIN_BK; e += CHAIN_THREADS) {
          const int nn = e / CHAIN_BK, kk = e % CHAIN_BK;
          ws[kk * CHAIN_WLD + nn] =
              k0 + kk < K ? Num<T>::to_f(w[static_cast<int64_t>(n0 + nn) * K + k0 + kk]) : 0.f;
        }
        if (first) {  // layer 0 streams its A operand, x, through a BM x BK chunk
          for (int e = tid; e < CHAIN_BM * CHAIN_BK; e += CHAIN_THREADS) {
            const int r = e / CHAIN_BK, kk = e % CHAIN_BK;
            xs[r * CHAIN_XLD + kk] = r < rows && k0 + kk < K
                                         ? Num<T>::to_f(p.x[(m0 + r) * p.x_s0 + (k0 + kk) * p.x_s1])
                                         : 0.f;
          }
        }
        AE_SYNC();
        const int kend = imin(CHAIN_BK, K - k0);
        const float* const abase = first ? xs : hin + k0;
        const int ald = first ? CHAIN_XLD : p.hld;
        for (int kk = 0; kk < kend; ++kk) {
          float a[4], b[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = abase[(rg * 4 + i) * ald + kk];
#pragma unroll
          for (int j = 0; j < 4; ++j) b[j] = ws[kk * CHAIN_WLD + c + 64 * j];  // stale past nw: never stored
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
      }

      // Epilogue: bias + activation in registers, one store of y_l, and (not for the last
      // layer) the rounded value as the next layer's input; rows past M stay zero there.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n = n0 + c + 64 * j;
        if (c + 64 * j >= nw) continue;
        const float bn = bias != nullptr ? Num<T>::to_f(bias[n]) : 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = rg * 4 + i;
          const T v = Num<T>::from_f(act_forward(act, acc[i][j] + bn));
          if (r < rows) out[static_cast<int64_t>(m0 + r) * N + n] = v;
          if (!last) hout[r * p.hld + n] = r < rows ? Num<T>::to_f(v) : 0.f;
        }
      }
    }
    float* const t = hin;
    hin = hout;
    hout = t;
  }
}

// ---------------------------------------------------------------- tensor-core chain
// mlp_chain_tc_kernel: the same chain on mma.sync m16n8k16 (bf16/fp16 operands, fp32
// accumulators), with gemm.cuh's tile loader (cp.async, zero-filled edges) and its ldmatrix
// fragment layouts. A block owns TC_BM = 64 rows; 8 warps = 4 (rows, 16 each) x 2 (columns, 64
// each) cover a 64 x 128 column pass of a layer. The intermediate activations live in shared
// memory as T, row-major [64][HCOLS + 8] (HCOLS = the widest intermediate rounded up to TC_BK;
// the 8-element pad makes the ldmatrix rows conflict-free as in gemm.cuh); they are the A
// operand of the next layer, read with ldmatrix straight from there. Layer 0's A (x) and every
// layer's B (W) are streamed in TC_BK = 32 chunks through a 2-stage cp.async ring. Epilogue:
// bias + activation on the accumulators, pairs of T stored to y_l and (but for the last layer)
// to the other activation buffer; columns N .. HCOLS of that buffer are written as 0, so the
// next layer's zero-padded reduction reads zeros past its K. Needs every width % 8 == 0 (16-byte
// rows), x with 16-byte aligned rows, contiguous weights.
constexpr int TC_BM = 64;
constexpr int TC_BK = 32;
constexpr int TC_PASS = 128;
constexpr int TC_THREADS = 256;
constexpr int TC_SLD = TC_BK + 8;  // stage tile row stride (elements)

template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(TC_THREADS) mlp_chain_tc_kernel(const ChainArgs<T> p) {
  AE_DYNAMIC_SMEM(smem_raw);
  T* const hbuf0 = reinterpret_cast<T*>(smem_raw);
  T* const hbuf1 = hbuf0 + TC_BM * p.hld;
  T* const wst = hbuf1 + TC_BM * p.hld;        // 2 stages of [TC_PASS][TC_SLD]
  T* const xst = wst + 2 * TC_PASS * TC_SLD;   // 2 stages of [TC_BM][TC_SLD]
  const int hcols = p.hld - 8;

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 3, wn = warp >> 2;
  const int m0 = static_cast<int>(blockIdx.x) * TC_BM;
  const int g = lane >> 2, t = lane & 3;

  for (int e = tid; e < 2 * TC_BM * p.hld; e += TC_THREADS) hbuf0[e] = Num<T>::from_f(0.f);

  T* hin = hbuf0;
  T* hout = hbuf1;
  for (int l = 0; l < p.L; ++l) {
    const int K = p.width[l], N = p.width[l + 1];
    const bool first = l == 0, last = l == p.L - 1;
    const T* const w = p.w[l];
    const T* const bias = p.bias[l];
    T* const out = p.out[l];
    const int act = p.act[l];
    const int ktiles = ceil_div(K, TC_BK);
    for (int n0 = 0; n0 < N; n0 += TC_PASS) {
      float acc[8][4];
#pragma unroll
      for (int ni = 0; ni < 8; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[ni][e] = 0.f;

      auto issue = [&](int kt) {
        const int s = kt & 1, k0 = kt * TC_BK;
        load_tile<T, TC_PASS, TC_BK, TC_THREADS>(wst + s * TC_PASS * TC_SLD, w, K, n0, k0, N, K, tid);
        if (first) load_tile<T, TC_BM, TC_BK, TC_THREADS>(xst + s * TC_BM * TC_SLD, p.x, p.x_s0, m0, k0, p.M, K, tid);
      };
      AE_SYNC();  // the previous pass / layer is done with the stages; its h writes are visible
      issue(0);
      cp_async_commit();
      for (int kt = 0; kt < ktiles; ++kt) {
        if (kt + 1 < ktiles) issue(kt + 1);  // into the stage that iteration kt - 1 finished reading
        cp_async_commit();
        cp_async_wait<1>();
        AE_SYNC();
        const int s = kt & 1;
        const T* const as = first ? xst + s * TC_BM * TC_SLD : hin + kt * TC_BK;
        const int ald = first ? TC_SLD : p.hld;
        const T* const bs = wst + s * TC_PASS * TC_SLD;
#pragma unroll
        for (int kk = 0; kk < TC_BK / 16; ++kk) {
          uint32_t af[4];
          ldmatrix_x4(af, as + (wm * 16 + (lane & 15)) * ald + kk * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int pj = 0; pj < 4; ++pj) {
            uint32_t t4[4];
            ldmatrix_x4(t4, bs + (wn * 64 + pj * 16 + (lane & 7) + (lane >> 4) * 8) * TC_SLD + kk * 16 +
                                ((lane >> 3) & 1) * 8);
            const uint32_t b0[2] = {t4[0], t4[1]}, b1[2] = {t4[2], t4[3]};
            mma_16816<T>(acc[2 * pj], af, b0);
            mma_16816<T>(acc[2 * pj + 1], af, b1);
          }
        }
        AE_SYNC();  // every warp is done with stage s before iteration kt + 1 refills it
      }
      cp_async_wait<0>();

#pragma unroll
      for (int ni = 0; ni < 8; ++ni) {
        const int col = n0 + wn * 64 + ni * 8 + 2 * t;  // N % 8 == 0: col < N implies col + 1 < N
        float b0 = 0.f, b1 = 0.f;
        if (bias != nullptr && col < N) b0 = Num<T>::to_f(bias[col]), b1 = Num<T>::to_f(bias[col + 1]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * 16 + g + 8 * h;
          if (col < N) {
            const uint32_t v =
                pack2<T>(act_forward(act, acc[ni][2 * h] + b0), act_forward(act, acc[ni][2 * h + 1] + b1));
            if (m0 + r < p.M) *reinterpret_cast<uint32_t*>(out + static_cast<int64_t>(m0 + r) * N + col) = v;
            if (!last) *reinterpret_cast<uint32_t*>(hout + r * p.hld + col) = v;
          } else if (!last && col < hcols) {
            *reinterpret_cast<uint32_t*>(hout + r * p.hld + col) = 0u;
          }
        }
      }
    }
    T* const tmp = hin;
    hin = hout;
    hout = tmp;
  }
}

// ---------------------------------------------------------------- loss entry
// Block = 32 columns x 8 row groups (as column_sums_kernel in gemm.cuh); row group q handles
// rows q, q + 8, ... of the block's row range. Grid: (ceil(N / 32), splits of M).
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(256)
    mlp_loss_entry_kernel(const T* y, const T* t, const T* g, bool g_scalar, float scale, int act, int M, int N,
                          int rows_per_split, T* gz, T* db, float* part) {
  AE_SHARED(float, red, 8 * 33);
  const int c = static_cast<int>(threadIdx.x) & 31, q = static_cast<int>(threadIdx.x) >> 5;
  const int n = static_cast<int>(blockIdx.x) * 32 + c;
  const int m_begin = static_cast<int>(blockIdx.y) * rows_per_split;
  const int m_end = split_end(M, m_begin, rows_per_split);
  const float g0 = g_scalar ? Num<T>::to_f(g[0]) : 0.f;
  float s = 0.f;
  if (n < N) {
    for (int m = m_begin + q; m < m_end; m += 8) {
      const int64_t e = static_cast<int64_t>(m) * N + n;
      const float yv = Num<T>::to_f(y[e]);
      const float gv = g_scalar ? g0 : Num<T>::to_f(g[e]);
      const float d = scale * gv * (yv - Num<T>::to_f(t[e]));
      const T v = Num<T>::from_f(gate_value(act, d, yv));
      gz[e] = v;
      s += Num<T>::to_f(v);  // the bias gradient is the sum of the stored gz, as in wgrad
    }
  }
  if (db == nullptr && part == nullptr) return;  // uniform over the grid
  red[q * 33 + c] = s;
  AE_SYNC();
  if (q == 0 && n < N) {
    float tot = 0.f;
    for (int k = 0; k < 8; ++k) tot += red[k * 33 + c];
    if (gridDim.y > 1)
      part[static_cast<int64_t>(blockIdx.y) * N + n] = tot;
    else
      db[n] = Num<T>::from_f(tot);
  }
}

// db[n] = sum_{z < splits} part[z][n], in split order.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(256) mlp_bias_finalize_kernel(const float* part, int splits, int N, T* db) {
  const int n = static_cast<int>(blockIdx.x) * 256 + static_cast<int>(threadIdx.x);
  if (n >= N) return;
  float s = 0.f;
  for (int z = 0; z < splits; ++z) s += part[static_cast<int64_t>(z) * N + n];
  db[n] = Num<T>::from_f(s);
}

struct EntryPlan {
  int splits = 1;
  int rows = 1;
};
EntryPlan plan_entry(int M, int N) {
  EntryPlan p;
  const int64_t col_tiles = ceil_div64(N, 32);
  int64_t s = ceil_div64(2 * static_cast<int64_t>(device_sm_count()), col_tiles > 0 ? col_tiles : 1);
  const int64_t most = ceil_div64(M, 512);
  if (s > most) s = most;
  if (s > 65535) s = 65535;
  if (s < 1) s = 1;
  p.rows = M > 0 ? static_cast<int>(ceil_div64(M, s)) : 1;
  p.splits = M > 0 ? static_cast<int>(ceil_div64(M, p.rows)) : 1;
  return p;
}

// hld: row stride of the activation buffers (floats).
size_t chain_smem_bytes(int hld) {
  return static_cast<size_t>(2 * CHAIN_BM * hld + CHAIN_BK * CHAIN_WLD + CHAIN_BM * CHAIN_XLD) * sizeof(float);
}

size_t chain_tc_smem_bytes(int hld, size_t elem) {
  return (static_cast<size_t>(2 * TC_BM * hld) + 2 * TC_PASS * TC_SLD + 2 * TC_BM * TC_SLD) * elem;
}

bool force_simt_chain() {
  const char* e = std::getenv("AECOMP_CUDA_GEMM");
  return e != nullptr && std::strcmp(e, "simt") == 0;
}

bool chain_aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The tensor-core chain takes 16-bit operands on sm_80+ with every width a multiple of 8, x's
// rows 16-byte aligned and contiguous, the weights 16-byte aligned, and its shared memory within
// the device's opt-in limit; the SIMT chain takes the rest.
template <typename T>
bool chain_on_tensor_cores(const ChainArgs<T>& p, int hld_tc) {
  if (std::is_same<T, float>::value || device_cc_major() < 8 || force_simt_chain()) return false;
  if (p.x_s1 != 1 || p.x_s0 % 8 != 0 || !chain_aligned16(p.x)) return false;
  for (int i = 0; i <= p.L; ++i)
    if (p.width[i] % 8 != 0) return false;
  for (int i = 0; i < p.L; ++i)
    if (!chain_aligned16(p.w[i]) || !chain_aligned16(p.out[i])) return false;
  return chain_tc_smem_bytes(hld_tc, sizeof(T)) <= static_cast<size_t>(device_smem_optin());
}

template <typename T>
cudaError_t chain_forward_t(int M, int L, const int* widths, Mat x, const void* const* w, const void* const* bias,
                            const int* acts, void* const* out, cudaStream_t st) {
  if (M == 0) return cudaSuccess;
  if (!mlp_chain_fusable(L, widths)) return cudaErrorInvalidValue;
  ChainArgs<T> p;
  std::memset(static_cast<void*>(&p), 0, sizeof(p));
  p.M = M, p.L = L;
  p.x = static_cast<const T*>(x.ptr), p.x_s0 = x.s0, p.x_s1 = x.s1;
  int maxw = 0;  // the widest intermediate (on-chip) activation
  for (int i = 0; i <= L; ++i) {
    p.width[i] = widths[i];
    if (i > 0 && i < L && widths[i] > maxw) maxw = widths[i];
  }
  for (int i = 0; i < L; ++i) {
    p.w[i] = static_cast<const T*>(w[i]);
    p.bias[i] = static_cast<const T*>(bias[i]);
    p.act[i] = acts[i];
    p.out[i] = static_cast<T*>(out[i]);
  }
  const int hld_tc = ceil_div(maxw > 0 ? maxw : 1, TC_BK) * TC_BK + 8;
  if constexpr (!std::is_same<T, float>::value) {
    if (chain_on_tensor_cores(p, hld_tc)) {
      p.hld = hld_tc;
      const size_t smem = chain_tc_smem_bytes(hld_tc, sizeof(T));
      auto kfn = &mlp_chain_tc_kernel<T>;
      const cudaError_t e = set_max_dynamic_smem(reinterpret_cast<const void*>(kfn), static_cast<int>(smem));
      if (e != cudaSuccess) return e;
      AE_LAUNCH(kfn, dim3(static_cast<unsigned>(ceil_div(M, TC_BM))), dim3(TC_THREADS), smem, st, p);
      return last_launch_error();
    }
  }
  p.hld = maxw + 1;  // odd stride: the 4 row groups' reads of one k fall in different banks
  const size_t smem = chain_smem_bytes(p.hld);
  auto kfn = &mlp_chain_kernel<T>;
  const cudaError_t e = set_max_dynamic_smem(reinterpret_cast<const void*>(kfn), static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(ceil_div(M, CHAIN_BM)));
  AE_LAUNCH(kfn, grid, dim3(CHAIN_THREADS), smem, st, p);
  return last_launch_error();
}

template <typename T>
cudaError_t loss_entry_t(int M, int N, const void* y, const void* t, const void* g, bool g_scalar, float scale,
                         int act, void* gz, void* db, void* workspace, cudaStream_t st) {
  if (N == 0) return cudaSuccess;
  auto fin = &mlp_bias_finalize_kernel<T>;
  if (M == 0) {  // no rows: db = 0 (a finalize over zero splits)
    if (db == nullptr) return cudaSuccess;
    AE_LAUNCH(fin, dim3(static_cast<unsigned>(ceil_div(N, 256))), dim3(256), 0, st, nullptr, 0, N,
              static_cast<T*>(db));
    return last_launch_error();
  }
  const EntryPlan pl = plan_entry(M, N);
  float* part = db != nullptr && pl.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  if (db != nullptr && pl.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  auto kfn = &mlp_loss_entry_kernel<T>;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, 32)), static_cast<unsigned>(pl.splits));
  AE_LAUNCH(kfn, grid, dim3(256), 0, st, static_cast<const T*>(y), static_cast<const T*>(t),
            static_cast<const T*>(g), g_scalar, scale, act, M, N, pl.rows, static_cast<T*>(gz),
            part == nullptr ? static_cast<T*>(db) : nullptr, part);
  cudaError_t e = last_launch_error();
  if (e != cudaSuccess || part == nullptr) return e;
  AE_LAUNCH(fin, dim3(static_cast<unsigned>(ceil_div(N, 256))), dim3(256), 0, st, part, pl.splits, N,
            static_cast<T*>(db));
  return last_launch_error();
}

}  // namespace

// ---------------------------------------------------------------- host API (aecomp_cuda.h)
bool mlp_chain_fusable(int L, const int* widths) {
  if (L < 1 || L > CHAIN_MAX_LAYERS) return false;
  for (int i = 0; i <= L; ++i) {
    if (widths[i] < 1) return false;
    if (i > 0 && i < L && widths[i] > CHAIN_MAX_WIDTH) return false;  // kept on chip
  }
  return true;
}

cudaError_t mlp_chain_forward(DType dt, int M, int L, const int* widths, Mat x, const void* const* w,
                              const void* const* bias, const int* acts, void* const* out, cudaStream_t stream) {
  switch (dt) {
    case DType::BF16: return chain_forward_t<__nv_bfloat16>(M, L, widths, x, w, bias, acts, out, stream);
    case DType::F16: return chain_forward_t<__half>(M, L, widths, x, w, bias, acts, out, stream);
    default: return chain_forward_t<float>(M, L, widths, x, w, bias, acts, out, stream);
  }
}

size_t mlp_loss_entry_workspace(int M, int N) {
  const EntryPlan pl = plan_entry(M, N);
  return pl.splits > 1 ? static_cast<size_t>(pl.splits) * static_cast<size_t>(N) * sizeof(float) : 0;
}

cudaError_t mlp_loss_entry(DType dt, int M, int N, const void* y, const void* target, const void* grad,
                           bool grad_is_scalar, float scale, int act, void* gz, void* db, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  if (db != nullptr && workspace_bytes < mlp_loss_entry_workspace(M, N)) return cudaErrorInvalidValue;
  switch (dt) {
    case DType::BF16:
      return loss_entry_t<__nv_bfloat16>(M, N, y, target, grad, grad_is_scalar, scale, act, gz, db, workspace, stream);
    case DType::F16:
      return loss_entry_t<__half>(M, N, y, target, grad, grad_is_scalar, scale, act, gz, db, workspace, stream);
    default:
      return loss_entry_t<float>(M, N, y, target, grad, grad_is_scalar, scale, act, gz, db, workspace, stream);
  }
}

}  // namespace aecomp_cuda
