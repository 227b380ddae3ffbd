// Packed-weight inference at batch on the matrix engine (packed_brgemm.cpp), called by
// packed_mlp.cpp where brgemm runs (brgemm.h) and the batch is at or above its crossover.
#pragma once

#include <cstdint>

namespace aecomp {
namespace cpu {
namespace brg {

// The epilogue of the int8 path for one finished int32 tile c [mr][ldc] (rows i0.., columns
// j0 .. j0+nr of the layer's output): ctx is the caller's.
using Int8TileFn = void (*)(void* ctx, const int32_t* c, int64_t ldc, int64_t i0, int64_t j0, int mr, int nr);

// acc = xq [m, kp] (uint8, kp a multiple of 4, rows lda >= kp apart) x the int8 layout w
// ([G][kp/4][16][4], n columns) by u8 x s8 brgemm, the groups side by side, then epi on each tile.
void int8_groups_brgemm(const uint8_t* xq, int64_t m, int64_t kp, int64_t lda, const uint8_t* w, int64_t n,
                        Int8TileFn epi, void* ctx);

// out [m, n] (ldo) = act(x W^T + bias) with W[j, k] = table[code(j, k)] decoded into bf16, x rounded
// to bf16, bf16 brgemm (kind 1: 4-bit codes [G][ceil(k/2)][16]; kind 2: byte codes [G][k][16]).
void codebook_bf16(const float* x, int64_t m, int64_t ldx, int kind, const uint8_t* codes, const float* table,
                   int tsize, int64_t n, int64_t k, const float* bias, int act, float* out, int64_t ldo);

}  // namespace brg
}  // namespace cpu
}  // namespace aecomp
