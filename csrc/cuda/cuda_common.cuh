// Shared pieces of the CUDA kernels: element types, activations, the PTX instructions the
// kernels use (cp.async, ldmatrix, mma.sync, warp shuffles) and the launch macros.
//
// Torch-free on purpose: the kernels are compiled and checked with the bare nvcc on machines
// without a GPU or a CUDA build of torch. Every device primitive goes through this header so the
// same kernel source also builds as plain C++ against the CPU emulator in harness/emulator.h
// (define AECOMP_EMULATE): there each CUDA thread is a fiber, __syncthreads and the warp-wide
// instructions are barriers, and cp.async copies land when the program waits for them. That is
// how the tile indexing, the fragment layouts and the pipeline are tested without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

#ifdef AECOMP_EMULATE
#include "harness/emulator.h"
#define AE_KERNEL
#define AE_LAUNCH_BOUNDS(n)
#define AE_DEVICE inline
#define AE_HD inline
#define AE_SHARED(type, name, count) \
  type* name = static_cast<type*>(::aecomp_emu::static_smem(sizeof(type) * (count), alignof(type)))
#define AE_DYNAMIC_SMEM(name) unsigned char* name = ::aecomp_emu::dynamic_smem()
#define AE_SYNC() ::aecomp_emu::syncthreads()
#define AE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::aecomp_emu::launch(reinterpret_cast<const void*>(kernel), (grid), (block), (smem), [&] { kernel(__VA_ARGS__); })
#else
#define AE_KERNEL __global__
#define AE_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define AE_DEVICE __device__ __forceinline__
#define AE_HD __host__ __device__ __forceinline__
#define AE_SHARED(type, name, count) __shared__ type name[count]
#define AE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define AE_SYNC() __syncthreads()
#define AE_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

// mma.sync / ldmatrix / cp.async exist from sm_80 on. Device code for an older target compiles
// to a trap; the launchers never pick the tensor-core kernels there (see device_cc_major()).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define AE_NO_SM80 1
#endif

namespace aecomp_cuda {

// Must match aecomp::Act and aecomp::Reduction in csrc/aecomp.h.
enum : int { ACT_NONE = 0, ACT_RELU = 1, ACT_SIGMOID = 2 };
enum : int { RED_NONE = 0, RED_MEAN = 1, RED_SUM = 2 };

// ---------------------------------------------------------------- element types
// Values are loaded as T, converted to float, and every product and sum is in float.
template <typename T>
struct Num;
template <>
struct Num<float> {
  static AE_HD float to_f(float v) { return v; }
  static AE_HD float from_f(float v) { return v; }
};
template <>
struct Num<__nv_bfloat16> {
  static AE_HD float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  static AE_HD __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
  static AE_HD uint16_t bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  static AE_HD __nv_bfloat16 of_bits(uint16_t u) { return __ushort_as_bfloat16(u); }
};
template <>
struct Num<__half> {
  static AE_HD float to_f(__half v) { return __half2float(v); }
  static AE_HD __half from_f(float v) { return __float2half_rn(v); }
  static AE_HD uint16_t bits(__half v) { return __half_as_ushort(v); }
  static AE_HD __half of_bits(uint16_t u) { return __ushort_as_half(u); }
};

// Two 16-bit values in one 32-bit register, lower index in the low half (the mma operand order).
template <typename T>
AE_HD float2 unpack2(uint32_t r) {
  return make_float2(Num<T>::to_f(Num<T>::of_bits(static_cast<uint16_t>(r & 0xffffu))),
                     Num<T>::to_f(Num<T>::of_bits(static_cast<uint16_t>(r >> 16))));
}
template <typename T>
AE_HD uint32_t pack2(float x, float y) {
  return static_cast<uint32_t>(Num<T>::bits(Num<T>::from_f(x))) |
         (static_cast<uint32_t>(Num<T>::bits(Num<T>::from_f(y))) << 16);
}

// ---------------------------------------------------------------- activations
//   forward:  none: z;   relu: max(z, 0);   sigmoid: 1 / (1 + exp(-z))
//   backward from the OUTPUT y = act(z):  none: 1;  relu: 0 where y <= 0, else 1;  sigmoid: y (1 - y)
// relu' is 0 where y <= 0, so the gradient at z = 0 is 0 and a NaN y passes the gradient: torch's
// threshold_backward, exactly.
// relu keeps NaN (z < 0 is false for NaN), as torch, the CPU and the Triton kernels do.
AE_HD float act_forward(int act, float z) {
  if (act == ACT_RELU) return z < 0.f ? 0.f : z;
  if (act == ACT_SIGMOID) return 1.f / (1.f + expf(-z));
  return z;
}
AE_HD float act_grad_from_y(int act, float y) {
  if (act == ACT_RELU) return y <= 0.f ? 0.f : 1.f;
  if (act == ACT_SIGMOID) return y * (1.f - y);
  return 1.f;
}

AE_HD int ceil_div(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) + b - 1) / b); }
AE_HD int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- PTX wrappers
#ifdef AECOMP_EMULATE
using ::aecomp_emu::cp_async_16;
using ::aecomp_emu::cp_async_commit;
using ::aecomp_emu::cp_async_wait;
using ::aecomp_emu::ldmatrix_x4;
using ::aecomp_emu::ldmatrix_x4_trans;
using ::aecomp_emu::mma_16816;
using ::aecomp_emu::shfl_xor;
#else
// 16-byte global -> shared copy that bypasses L1. Only `src_bytes` (0..16) bytes are read; the
// rest of the 16 destination bytes are zero-filled, which is how edge tiles are predicated.
// Both addresses must be 16-byte aligned.
AE_DEVICE void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
#ifndef AE_NO_SM80
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes)
               : "memory");
#else
  __trap();
#endif
}
AE_DEVICE void cp_async_commit() {
#ifndef AE_NO_SM80
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
AE_DEVICE void cp_async_wait() {
#ifndef AE_NO_SM80
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// Four 8x8 b16 matrices; lanes 8q..8q+7 give the row addresses of matrix q, and lane l receives
// row l/4, columns 2(l%4) and 2(l%4)+1 of each matrix in r[q].
AE_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#ifndef AE_NO_SM80
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#else
  __trap();
#endif
}
// The same, transposed: lane l receives rows 2(l%4) and 2(l%4)+1 of column l/4.
AE_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#ifndef AE_NO_SM80
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
#else
  __trap();
#endif
}
// D = A B + D for one warp: A 16x16 (row), B 16x8 (col), fp32 accumulators.
template <typename T>
AE_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
AE_DEVICE void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifndef AE_NO_SM80
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}
template <>
AE_DEVICE void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifndef AE_NO_SM80
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}
AE_DEVICE float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
#endif  // AECOMP_EMULATE

// Sum over the 32 lanes of a warp; every lane gets the same, fixed-order result.
AE_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) v += shfl_xor(v, m);
  return v;
}

// ---------------------------------------------------------------- runtime calls
// The few CUDA runtime calls the host code makes, through one seam so that device_info.cu runs
// unchanged on the emulator (which models the opt-in attribute and the last-error state).
namespace rt {
#ifdef AECOMP_EMULATE
inline cudaError_t get_device(int* dev) { return ::aecomp_emu::get_device(dev); }
inline cudaError_t device_attribute(int* v, cudaDeviceAttr attr, int dev) {
  return ::aecomp_emu::device_get_attribute(v, attr, dev);
}
inline cudaError_t set_max_dynamic_smem_attribute(const void* kernel, int bytes) {
  return ::aecomp_emu::func_set_max_dynamic_smem(kernel, bytes);
}
inline cudaError_t get_last_error() { return ::aecomp_emu::get_last_error(); }
#else
inline cudaError_t get_device(int* dev) { return cudaGetDevice(dev); }
inline cudaError_t device_attribute(int* v, cudaDeviceAttr attr, int dev) { return cudaDeviceGetAttribute(v, attr, dev); }
inline cudaError_t set_max_dynamic_smem_attribute(const void* kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
inline cudaError_t get_last_error() { return cudaGetLastError(); }
#endif
}  // namespace rt

// ---------------------------------------------------------------- device properties (cached)
#ifdef AECOMP_EMULATE
// Read live from the emulator's configuration, which the harnesses change between cases.
inline int device_sm_count() { return ::aecomp_emu::config().sm_count; }
inline int device_cc_major() { return ::aecomp_emu::config().cc_major; }
inline int device_smem_optin() { return static_cast<int>(::aecomp_emu::config().max_dynamic_smem); }
#else
int device_sm_count();
int device_cc_major();
int device_smem_optin();  // the most dynamic shared memory a block may opt in to
#endif
// Makes sure `kernel` may launch with `bytes` of dynamic shared memory on the current device:
// raises its cudaFuncAttributeMaxDynamicSharedMemorySize when it is below `bytes` (the
// attribute only grows; 48 KiB needs no opt-in). A failure is returned and not left in the
// runtime's last error. device_info.cu (also built into the emulator harnesses).
cudaError_t set_max_dynamic_smem(const void* kernel, int bytes);
// The error of the launch just made (cudaGetLastError: it also resets the last error).
inline cudaError_t last_launch_error() { return rt::get_last_error(); }

}  // namespace aecomp_cuda
