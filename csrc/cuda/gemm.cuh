// The GEMM kernels behind linear_act: one tensor-core kernel (bf16/fp16, mma.sync) and one
// general SIMT kernel (any dtype, any strides), plus the split-K and column-sum helpers.
//
// Every GEMM here is the same problem, C[I x J] = A[I x R] B[R x J], described by GemmArgs:
//
//   forward  y  = act(x W^T + b)      I = M, J = N, R = K   A(i,r) = x[m,k]   B(r,j) = W[n,k]
//   dgrad    dx = gz W                I = M, J = K, R = N   A(i,r) = gz[m,n]  B(r,j) = W[n,k]
//   wgrad    dW = gz^T x              I = N, J = K, R = M   A(i,r) = gz[m,n]  B(r,j) = x[m,k]
//            db = sum_m gz[m, :]      the row sums of A, taken from the same shared-memory tiles
//
// with gz = g * act'(y) formed on chip as A is loaded ("gating": relu' = [not y <= 0], sigmoid' =
// y (1 - y), none: gz = g), so gz never goes through global memory. Accumulation is in fp32.
//
// Determinism: nothing uses atomics. When the reduction R is split over gridDim.z blocks (wgrad
// with a large batch), each split writes its fp32 partial tile and splitk_finalize_kernel adds
// the partials in split order; the bias gradient follows the same path. Every sum therefore has
// a fixed order for a given shape and device, and results are bitwise reproducible.
#pragma once

#include "cuda_common.cuh"

namespace aecomp_cuda {

// Where the reduction index sits in an operand's memory. Red: rows are the output index and the
// reduction index is contiguous ("K-major": x, W in forward, gz in dgrad). Out: rows are the
// reduction index and the output index is contiguous (W in dgrad, gz and x in wgrad).
enum class Major : int { Red = 0, Out = 1 };

template <typename T>
struct GemmArgs {
  int I, J, R;                   // C is I x J, the reduction has length R
  const T* a;                    // A(i, r) = a[i * a_si + r * a_sr]
  int64_t a_si, a_sr;
  const T* y;                    // gate: A(i, r) = a(i, r) * act'(y(i, r)) when y != nullptr
  int64_t y_si, y_sr;
  int gate_act;
  const T* b;                    // B(r, j) = b[r * b_sr + j * b_sj]
  int64_t b_sr, b_sj;
  const T* bias;                 // epilogue: C = act(A B + bias[j]); bias may be null
  int act;
  T* out;                        // C, row-major with row stride ldo
  int64_t ldo;
  float* part;                   // gridDim.z > 1: fp32 partials [gridDim.z][I][J] instead of out
  T* bias_out;                   // row sums sum_r A(i, r) (the bias gradient), or null
  float* bias_part;              // ... their partials [gridDim.z][I] when the reduction is split
  int r_chunk;                   // reduction length per split (a multiple of the kernel's BK)
};

// gz = g * act'(y). relu selects instead of multiplying so that an infinite g next to y = 0
// gives 0, and tests y <= 0 so that a NaN y passes g, as torch's threshold_backward does.
AE_HD float gate_value(int act, float g, float y) {
  if (act == ACT_RELU) return y <= 0.f ? 0.f : g;
  if (act == ACT_SIGMOID) return g * (y * (1.f - y));
  return g;
}

AE_HD int imin(int a, int b) { return a < b ? a : b; }
// End of the reduction range of the split starting at r_begin (no int overflow near 2^31).
AE_HD int split_end(int R, int r_begin, int r_chunk) {
  const int64_t e = static_cast<int64_t>(r_begin) + r_chunk;
  return e < R ? static_cast<int>(e) : R;
}

// ============================================================================ tensor cores
//
// Tiling. A block computes a BM x BN tile of C with WARPS_M x WARPS_N warps; each warp owns a
// (BM/WARPS_M) x (BN/WARPS_N) sub-tile made of MT x NT mma tiles of 16 x 8. The reduction is
// walked in steps of BK; one step of A (BM x BK) and of B (BK x BN) is a pipeline stage.
//
// Pipeline (STAGES-deep ring of shared-memory stages, cp.async):
//   prologue: issue stages 0 .. STAGES-2, one commit group each;
//   step kt:  wait until this thread's copies of stage kt have landed (cp.async.wait_group
//             STAGES-2); gate them in place if A is gated (below); __syncthreads, after which
//             the whole stage is visible to every warp; issue stage kt+STAGES-1 into the slot
//             that step kt-1 just finished reading (the barrier proves every warp is done with
//             it); run the BK/16 mma steps on slot kt % STAGES. Copies for the next STAGES-1
//             stages overlap the math.
// Gating (dgrad, wgrad): g and y tiles are both copied; between the wait and the barrier each
// thread rewrites the 16-byte chunks of g it copied itself as gz = g * act'(y) (rounded to T,
// the mma operand precision). Doing it once per stage in shared memory, instead of on every
// warp's fragments, costs each thread 2 chunks per stage and keeps the mma loop untouched.
// Edge tiles: every 16-byte chunk is predicated. Rows past the matrix and columns past the
// end of the reduction are zero-filled by cp.async's src-size operand, so the mma adds zeros;
// a chunk that straddles the end of a row reads only the valid bytes.
//
// Shared-memory layout: each tile is stored row-major with 8 extra elements per row (16 bytes).
// Row strides are then 80, 144 or 272 bytes, so the eight 16-byte row segments that one
// ldmatrix phase reads fall in eight different bank groups: no bank conflicts, no swizzle.
//
// Fragments (PTX ISA layouts for mma.m16n8k16; g = lane / 4, t = lane % 4):
//   A 16x16: a0 = A[g][2t,2t+1]  a1 = A[g+8][2t,2t+1]  a2 = A[g][2t+8,+9]  a3 = A[g+8][2t+8,+9]
//   B 16x8:  b0 = B[2t,2t+1][g]  b1 = B[2t+8,2t+9][g]
//   C 16x8:  c0,c1 = C[g][2t,2t+1]  c2,c3 = C[g+8][2t,2t+1]
// ldmatrix.x4 fills them: lane l supplies the address of one 8-element row segment; for a
// Red-major tile the segment is a row of A (or of B^T) and the plain ldmatrix gives the layout
// above; for an Out-major tile the segment runs along the output index and ldmatrix.trans
// transposes each 8x8 block on the way (see load_a_frag / load_b_frag for the lane -> address
// maps).
//
// Epilogue: the fp32 accumulators get bias + activation in registers and are stored once
// (pairs of 16-bit values as one 32-bit store), or stored as fp32 split-K partials.

template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int STAGES = STAGES_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  static constexpr int MT = WTM / 16, NT = WTN / 8;              // mma tiles per warp
  static_assert(WTM % 16 == 0 && WTN % 16 == 0 && BK % 16 == 0, "tile shape");
  static_assert(STAGES >= 2, "pipeline depth");
};
// 128 x 128 tiles, 8 warps of 64 x 32: big problems. 64 x 64, 4 warps of 32 x 32: the
// autoencoder's narrow layers (N = 32, 64) and small batches, where big tiles leave SMs idle.
using TcLarge = TileCfg<128, 128, 32, 2, 4, 4>;
using TcSmall = TileCfg<64, 64, 32, 2, 2, 4>;

// A shared-memory tile of ROWS x COLS elements, rows padded by 8 elements.
template <int ROWS, int COLS>
struct SmemTile {
  static constexpr int LD = COLS + 8;
  static constexpr int ELEMS = ROWS * LD;
};
template <class C, Major M>
using ATile = SmemTile<M == Major::Red ? C::BM : C::BK, M == Major::Red ? C::BK : C::BM>;
template <class C, Major M>
using BTile = SmemTile<M == Major::Red ? C::BN : C::BK, M == Major::Red ? C::BK : C::BN>;

template <typename T, class C, Major MA, Major MB, bool GATED>
constexpr int tc_stage_elems() {
  return ATile<C, MA>::ELEMS * (GATED ? 2 : 1) + BTile<C, MB>::ELEMS;
}
template <typename T, class C, Major MA, Major MB, bool GATED>
constexpr size_t tc_smem_bytes() {
  return static_cast<size_t>(C::STAGES) * tc_stage_elems<T, C, MA, MB, GATED>() * sizeof(T);
}

// Copies the ROWS x COLS tile at (row0, col0) of a row-major matrix (row stride ld, contiguous
// columns) into shared memory with 16-byte cp.async. Element (r, c) is read only where
// r < row_lim and c < col_lim; everything else in the tile is zero-filled.
template <typename T, int ROWS, int COLS, int THREADS>
AE_DEVICE void load_tile(T* dst, const T* src, int64_t ld, int row0, int col0, int row_lim, int col_lim, int tid) {
  constexpr int EPC = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  constexpr int CPR = COLS / EPC;                         // chunks per row
  constexpr int CHUNKS = ROWS * CPR;
  static_assert(COLS % EPC == 0 && CHUNKS % THREADS == 0, "tile / thread count mismatch");
#pragma unroll
  for (int it = 0; it < CHUNKS / THREADS; ++it) {
    const int c = tid + it * THREADS;
    const int r = c / CPR, cc = (c % CPR) * EPC;
    const int gr = row0 + r, gc = col0 + cc;
    int bytes = 0;
    const T* p = src;  // a valid address even when nothing is read
    if (gr < row_lim && gc < col_lim) {
      bytes = imin(col_lim - gc, EPC) * static_cast<int>(sizeof(T));
      p = src + gr * ld + gc;
    }
    cp_async_16(dst + r * (COLS + 8) + cc, p, bytes);
  }
}

// The A fragment of the 16x16 block at (m_base, k_base) of the warp's A tile.
//   Red tile [i][r]: lane l -> row m_base + l%16, column k_base + 8 (l/16): matrices 0..3 are
//     (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0..a3.
//   Out tile [r][i]: lane l -> row k_base + l%8 + 8 (l/16), column m_base + 8 ((l/8)%2), read
//     transposed: matrix q covers (i 8 (q%2).., k 8 (q/2)..), again a0..a3.
template <class C, Major MA, typename T>
AE_DEVICE void load_a_frag(uint32_t (&r)[4], const T* tile, int m_base, int k_base, int lane) {
  if constexpr (MA == Major::Red) {
    constexpr int LD = ATile<C, MA>::LD;
    ldmatrix_x4(r, tile + (m_base + (lane & 15)) * LD + k_base + (lane >> 4) * 8);
  } else {
    constexpr int LD = ATile<C, MA>::LD;
    ldmatrix_x4_trans(r, tile + (k_base + (lane & 7) + (lane >> 4) * 8) * LD + m_base + ((lane >> 3) & 1) * 8);
  }
}

// The B fragments of two adjacent 16x8 blocks at (k_base, n_base) and (k_base, n_base + 8):
// r[0], r[1] are b0, b1 of the first; r[2], r[3] of the second.
//   Red tile [j][r]: lane l -> row n_base + l%8 + 8 (l/16), column k_base + 8 ((l/8)%2).
//   Out tile [r][j]: lane l -> row k_base + l%8 + 8 ((l/8)%2), column n_base + 8 (l/16), transposed.
template <class C, Major MB, typename T>
AE_DEVICE void load_b_frag(uint32_t (&r)[4], const T* tile, int n_base, int k_base, int lane) {
  if constexpr (MB == Major::Red) {
    constexpr int LD = BTile<C, MB>::LD;
    ldmatrix_x4(r, tile + (n_base + (lane & 7) + (lane >> 4) * 8) * LD + k_base + ((lane >> 3) & 1) * 8);
  } else {
    constexpr int LD = BTile<C, MB>::LD;
    ldmatrix_x4_trans(r, tile + (k_base + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n_base + (lane >> 4) * 8);
  }
}

// g <- g * act'(y) for the 16-byte chunks of a ROWS x COLS tile that thread `tid` copied
// with load_tile (the same chunk -> thread map), rounded back to T.
template <typename T, int ROWS, int COLS, int THREADS>
AE_DEVICE void gate_tile(T* g, const T* y, int act, int tid) {
  constexpr int EPC = 16 / static_cast<int>(sizeof(T));
  constexpr int CPR = COLS / EPC;
  constexpr int CHUNKS = ROWS * CPR;
#pragma unroll
  for (int it = 0; it < CHUNKS / THREADS; ++it) {
    const int c = tid + it * THREADS;
    const int off = (c / CPR) * (COLS + 8) + (c % CPR) * EPC;
    const uint4 gv = *reinterpret_cast<const uint4*>(g + off);
    const uint4 yv = *reinterpret_cast<const uint4*>(y + off);
    uint32_t gw[4] = {gv.x, gv.y, gv.z, gv.w};
    const uint32_t yw[4] = {yv.x, yv.y, yv.z, yv.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float2 a = unpack2<T>(gw[q]), b = unpack2<T>(yw[q]);
      gw[q] = pack2<T>(gate_value(act, a.x, b.x), gate_value(act, a.y, b.y));
    }
    *reinterpret_cast<uint4*>(g + off) = make_uint4(gw[0], gw[1], gw[2], gw[3]);
  }
}

// C = A B (+ bias, activation) on tensor cores; see the comment block above. T is bf16 or fp16.
// MA / MB give the operands' majors (forward: Red, Red; dgrad: Red, Out; wgrad: Out, Out);
// GATED says A is gated by act'(y) with act = p.gate_act (when false, y is not read).
// Grid: (ceil(I / BM), ceil(J / BN), splits of R). Dynamic shared memory: tc_smem_bytes().
// When p.bias_out / p.bias_part is set (wgrad) the blocks with blockIdx.y == 0 also sum the A
// tiles over r (the bias gradient); that needs MA == Out.
template <typename T, class C, Major MA, Major MB, bool GATED>
AE_KERNEL void AE_LAUNCH_BOUNDS(C::THREADS) tc_gemm_kernel(const GemmArgs<T> p) {
  using TA = ATile<C, MA>;
  constexpr int STAGE = tc_stage_elems<T, C, MA, MB, GATED>();
  AE_DYNAMIC_SMEM(smem_raw);
  T* const smem = reinterpret_cast<T*>(smem_raw);

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int wi = warp % C::WARPS_M, wj = warp / C::WARPS_M;
  const int i0 = static_cast<int>(blockIdx.x) * C::BM, j0 = static_cast<int>(blockIdx.y) * C::BN;
  const int r_begin = static_cast<int>(blockIdx.z) * p.r_chunk;
  const int r_end = split_end(p.R, r_begin, p.r_chunk);
  const int ktiles = r_end > r_begin ? ceil_div(r_end - r_begin, C::BK) : 0;
  const int64_t lda = MA == Major::Red ? p.a_si : p.a_sr;
  const int64_t ldy = MA == Major::Red ? p.y_si : p.y_sr;
  const int64_t ldb = MB == Major::Red ? p.b_sj : p.b_sr;

  auto a_slot = [&](int s) { return smem + s * STAGE; };
  auto y_slot = [&](int s) { return smem + s * STAGE + TA::ELEMS; };
  auto b_slot = [&](int s) { return smem + s * STAGE + TA::ELEMS * (GATED ? 2 : 1); };

  auto load_stage = [&](int s, int kt) {
    const int r0 = r_begin + kt * C::BK;
    if constexpr (MA == Major::Red) {
      load_tile<T, C::BM, C::BK, C::THREADS>(a_slot(s), p.a, lda, i0, r0, p.I, r_end, tid);
      if constexpr (GATED) load_tile<T, C::BM, C::BK, C::THREADS>(y_slot(s), p.y, ldy, i0, r0, p.I, r_end, tid);
    } else {
      load_tile<T, C::BK, C::BM, C::THREADS>(a_slot(s), p.a, lda, r0, i0, r_end, p.I, tid);
      if constexpr (GATED) load_tile<T, C::BK, C::BM, C::THREADS>(y_slot(s), p.y, ldy, r0, i0, r_end, p.I, tid);
    }
    if constexpr (MB == Major::Red)
      load_tile<T, C::BN, C::BK, C::THREADS>(b_slot(s), p.b, ldb, j0, r0, p.J, r_end, tid);
    else
      load_tile<T, C::BK, C::BN, C::THREADS>(b_slot(s), p.b, ldb, r0, j0, r_end, p.J, tid);
  };

  // Bias gradient (wgrad): thread tid sums column tid % BM of the A tile (one output feature)
  // over the rows tid / BM, tid / BM + RG, ... of every stage, in the same fixed order each run.
  const bool row_sums = (p.bias_out != nullptr || p.bias_part != nullptr) && blockIdx.y == 0;
  constexpr int RG = C::THREADS / C::BM;
  static_assert(C::THREADS % C::BM == 0 && C::BK % RG == 0, "row-sum thread mapping");
  float rsum = 0.f;

  float acc[C::MT][C::NT][4];
#pragma unroll
  for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::NT; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<C::STAGES - 2>();
    if constexpr (GATED) {
      if constexpr (MA == Major::Red)
        gate_tile<T, C::BM, C::BK, C::THREADS>(a_slot(kt % C::STAGES), y_slot(kt % C::STAGES), p.gate_act, tid);
      else
        gate_tile<T, C::BK, C::BM, C::THREADS>(a_slot(kt % C::STAGES), y_slot(kt % C::STAGES), p.gate_act, tid);
    }
    AE_SYNC();
    {
      const int next = kt + C::STAGES - 1;
      if (next < ktiles) load_stage(next % C::STAGES, next);
      cp_async_commit();
    }
    const int s = kt % C::STAGES;
    const T* const as = a_slot(s);
    const T* const bs = b_slot(s);

    if constexpr (MA == Major::Out) {
      if (row_sums) {
        const int col = tid % C::BM;
        for (int r = tid / C::BM; r < C::BK; r += RG) rsum += Num<T>::to_f(as[r * TA::LD + col]);
      }
    }

#pragma unroll
    for (int kk = 0; kk < C::BK / 16; ++kk) {
      uint32_t af[C::MT][4];
      uint32_t bf[C::NT][2];
#pragma unroll
      for (int mi = 0; mi < C::MT; ++mi) load_a_frag<C, MA>(af[mi], as, wi * C::WTM + mi * 16, kk * 16, lane);
#pragma unroll
      for (int pj = 0; pj < C::NT / 2; ++pj) {
        uint32_t t4[4];
        load_b_frag<C, MB>(t4, bs, wj * C::WTN + pj * 16, kk * 16, lane);
        bf[2 * pj][0] = t4[0];
        bf[2 * pj][1] = t4[1];
        bf[2 * pj + 1][0] = t4[2];
        bf[2 * pj + 1][1] = t4[3];
      }
#pragma unroll
      for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < C::NT; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();

  // ---- epilogue
  const bool split = gridDim.z > 1;
  const bool pairs = (p.ldo % 2 == 0) && (reinterpret_cast<uintptr_t>(p.out) % 4 == 0);
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ni = 0; ni < C::NT; ++ni) {
    const int col = j0 + wj * C::WTN + ni * 8 + 2 * t;
    float b0 = 0.f, b1 = 0.f;
    if (p.bias != nullptr) {
      if (col < p.J) b0 = Num<T>::to_f(p.bias[col]);
      if (col + 1 < p.J) b1 = Num<T>::to_f(p.bias[col + 1]);
    }
#pragma unroll
    for (int mi = 0; mi < C::MT; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = i0 + wi * C::WTM + mi * 16 + g + 8 * h;
        if (row >= p.I) continue;
        const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
        if (split) {
          float* o = p.part + (static_cast<int64_t>(blockIdx.z) * p.I + row) * p.J;
          if (col < p.J) o[col] = v0;
          if (col + 1 < p.J) o[col + 1] = v1;
        } else {
          const float o0 = act_forward(p.act, v0 + b0), o1 = act_forward(p.act, v1 + b1);
          T* o = p.out + row * p.ldo;
          if (pairs && col + 1 < p.J) {
            *reinterpret_cast<uint32_t*>(o + col) = pack2<T>(o0, o1);
          } else {
            if (col < p.J) o[col] = Num<T>::from_f(o0);
            if (col + 1 < p.J) o[col + 1] = Num<T>::from_f(o1);
          }
        }
      }
    }
  }

  if constexpr (MA == Major::Out) {
    if (row_sums) {  // the same value for the whole block, so the barriers are not divergent
      AE_SYNC();     // every warp is done with the stage buffers; reuse them
      float* red = reinterpret_cast<float*>(smem_raw);
      red[tid] = rsum;
      AE_SYNC();
      if (tid < C::BM && i0 + tid < p.I) {
        float s = 0.f;
        for (int q = 0; q < RG; ++q) s += red[q * C::BM + tid];
        if (split)
          p.bias_part[static_cast<int64_t>(blockIdx.z) * p.I + i0 + tid] = s;
        else
          p.bias_out[i0 + tid] = Num<T>::from_f(s);
      }
    }
  }
}

// ============================================================================ SIMT fallback
//
// C = A B with plain fp32 FMAs, for float32 (exact fp32 products and sums, no TF32), and for
// bf16/fp16 operands that the tensor-core kernel cannot take (rows not 16-byte aligned,
// non-contiguous reduction dim, a GPU older than sm_80). Any strides, including 0.
// Block tile BM x BN, 256 threads as 16 x 16, each thread owns (BM/16) x (BN/16) outputs in
// groups of 4 rows (columns) spaced 64 apart; per step of BK = 16 the block loads A and B
// tiles into shared memory as fp32 (gate applied, out-of-range elements 0), transposed so that
// the inner loop reads 4 consecutive floats per group.
template <int BM_, int BN_>
struct SimtCfg {
  static constexpr int BM = BM_, BN = BN_, BK = 16, THREADS = 256;
  static constexpr int TM = BM / 16, TN = BN / 16;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "4-wide groups");
};
using SimtLarge = SimtCfg<128, 128>;
using SimtSmall = SimtCfg<64, 64>;

template <typename T, class C>
AE_KERNEL void AE_LAUNCH_BOUNDS(256) simt_gemm_kernel(const GemmArgs<T> p) {
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, TM = C::TM, TN = C::TN;
  constexpr int LDA = BM + 4, LDB = BN + 4;  // floats; rows stay 16-byte aligned
  AE_SHARED(float4, as4, BK * LDA / 4);      // As[r][i]
  AE_SHARED(float4, bs4, BK * LDB / 4);      // Bs[r][j]
  float* const As = reinterpret_cast<float*>(as4);
  float* const Bs = reinterpret_cast<float*>(bs4);

  const int tid = static_cast<int>(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int i0 = static_cast<int>(blockIdx.x) * BM, j0 = static_cast<int>(blockIdx.y) * BN;
  const int r_begin = static_cast<int>(blockIdx.z) * p.r_chunk;
  const int r_end = split_end(p.R, r_begin, p.r_chunk);
  // Walk the smaller stride with consecutive threads (coalesced when it is 1).
  const bool a_r_fast = p.a_sr <= p.a_si;
  const bool b_r_fast = p.b_sr <= p.b_sj;
  const bool row_sums = (p.bias_out != nullptr || p.bias_part != nullptr) && blockIdx.y == 0;
  constexpr int RG = C::THREADS / BM;
  float rsum = 0.f;

  float acc[TM][TN];
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TN; ++b) acc[a][b] = 0.f;

  for (int r0 = r_begin; r0 < r_end; r0 += BK) {
    for (int e = tid; e < BM * BK; e += C::THREADS) {
      const int i = a_r_fast ? e / BK : e % BM;
      const int r = a_r_fast ? e % BK : e / BM;
      const int gi = i0 + i, gr = r0 + r;
      float v = 0.f;
      if (gi < p.I && gr < r_end) {
        v = Num<T>::to_f(p.a[gi * p.a_si + gr * p.a_sr]);
        if (p.y != nullptr) v = gate_value(p.gate_act, v, Num<T>::to_f(p.y[gi * p.y_si + gr * p.y_sr]));
      }
      As[r * LDA + i] = v;
    }
    for (int e = tid; e < BK * BN; e += C::THREADS) {
      const int j = b_r_fast ? e / BK : e % BN;
      const int r = b_r_fast ? e % BK : e / BN;
      const int gj = j0 + j, gr = r0 + r;
      Bs[r * LDB + j] = (gj < p.J && gr < r_end) ? Num<T>::to_f(p.b[gr * p.b_sr + gj * p.b_sj]) : 0.f;
    }
    AE_SYNC();
    if (row_sums) {
      const int col = tid % BM;
      for (int r = tid / BM; r < BK; r += RG) rsum += As[r * LDA + col];
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float av[TM], bv[TN];
#pragma unroll
      for (int q = 0; q < TM / 4; ++q) {
        const float4 v = *reinterpret_cast<const float4*>(As + k * LDA + q * 64 + ty * 4);
        av[4 * q] = v.x, av[4 * q + 1] = v.y, av[4 * q + 2] = v.z, av[4 * q + 3] = v.w;
      }
#pragma unroll
      for (int q = 0; q < TN / 4; ++q) {
        const float4 v = *reinterpret_cast<const float4*>(Bs + k * LDB + q * 64 + tx * 4);
        bv[4 * q] = v.x, bv[4 * q + 1] = v.y, bv[4 * q + 2] = v.z, bv[4 * q + 3] = v.w;
      }
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TN; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
    }
    AE_SYNC();
  }

  const bool split = gridDim.z > 1;
#pragma unroll
  for (int b = 0; b < TN; ++b) {
    const int col = j0 + (b / 4) * 64 + tx * 4 + (b % 4);
    if (col >= p.J) continue;
    const float bb = p.bias != nullptr ? Num<T>::to_f(p.bias[col]) : 0.f;
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int row = i0 + (a / 4) * 64 + ty * 4 + (a % 4);
      if (row >= p.I) continue;
      if (split)
        p.part[(static_cast<int64_t>(blockIdx.z) * p.I + row) * p.J + col] = acc[a][b];
      else
        p.out[row * p.ldo + col] = Num<T>::from_f(act_forward(p.act, acc[a][b] + bb));
    }
  }

  if (row_sums) {  // uniform over the block
    AE_SHARED(float, red, C::THREADS);
    red[tid] = rsum;
    AE_SYNC();
    if (tid < BM && i0 + tid < p.I) {
      float s = 0.f;
      for (int q = 0; q < RG; ++q) s += red[q * BM + tid];
      if (split)
        p.bias_part[static_cast<int64_t>(blockIdx.z) * p.I + i0 + tid] = s;
      else
        p.bias_out[i0 + tid] = Num<T>::from_f(s);
    }
  }
}

// ============================================================================ helpers
//
// Split-K finalize: out[e] = sum_{z < splits} part[z][e] for e < count (out contiguous), and
// bias_out[i] = sum_z bias_part[z][i] for i < I when bias_out is set. The z loop runs in order,
// so the result does not depend on which split finished first.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(256)
    splitk_finalize_kernel(const float* part, int splits, int64_t count, T* out, const float* bias_part, int I,
                           T* bias_out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t e = first; e < count; e += stride) {
    float s = 0.f;
    for (int z = 0; z < splits; ++z) s += part[z * count + e];
    out[e] = Num<T>::from_f(s);
  }
  if (bias_out != nullptr) {
    for (int64_t e = first; e < I; e += stride) {
      float s = 0.f;
      for (int z = 0; z < splits; ++z) s += bias_part[static_cast<int64_t>(z) * I + e];
      bias_out[e] = Num<T>::from_f(s);
    }
  }
}

// Bias gradient on its own (when dW is not needed): db[n] = sum_m g[m, n] act'(y[m, n]).
// Block = 32 columns x 8 row groups; row group q sums rows q, q + 8, ... of the block's row
// range; the 8 group sums are added in order. Grid: (ceil(N / 32), splits of M); with more
// than one split each block writes part[split][n] and splitk_finalize_kernel adds them.
template <typename T>
AE_KERNEL void AE_LAUNCH_BOUNDS(256)
    column_sums_kernel(const T* g, int64_t g_s0, int64_t g_s1, const T* y, int64_t y_s0, int64_t y_s1, int act,
                       int M, int N, int rows_per_split, T* out, float* part) {
  AE_SHARED(float, red, 8 * 33);
  const int c = static_cast<int>(threadIdx.x) & 31, q = static_cast<int>(threadIdx.x) >> 5;
  const int n = static_cast<int>(blockIdx.x) * 32 + c;
  const int m_begin = static_cast<int>(blockIdx.y) * rows_per_split;
  const int m_end = split_end(M, m_begin, rows_per_split);
  float s = 0.f;
  if (n < N) {
    for (int m = m_begin + q; m < m_end; m += 8) {
      float v = Num<T>::to_f(g[m * g_s0 + n * g_s1]);
      if (y != nullptr) v = gate_value(act, v, Num<T>::to_f(y[m * y_s0 + n * y_s1]));
      s += v;
    }
  }
  red[q * 33 + c] = s;
  AE_SYNC();
  if (q == 0 && n < N) {
    float t = 0.f;
    for (int k = 0; k < 8; ++k) t += red[k * 33 + c];
    if (gridDim.y > 1)
      part[static_cast<int64_t>(blockIdx.y) * N + n] = t;
    else
      out[n] = Num<T>::from_f(t);
  }
}

}  // namespace aecomp_cuda
