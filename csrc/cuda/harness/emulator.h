// A CPU emulator for the small part of CUDA that the aecomp kernels use, so the real kernel
// source (compiled as plain C++ with AECOMP_EMULATE) can be run and checked on machines without
// a GPU. It is a test tool, not a simulator of timing or of the memory model.
//
// What is emulated:
//   * threads: one fiber (ucontext) per CUDA thread; the blocks of a grid run one after another;
//   * __syncthreads: a barrier over the block; threads that exit while others wait, or warps
//     stuck at different collectives, are reported as a deadlock;
//   * warp-wide instructions (shuffles, ldmatrix, mma.sync): a barrier over the 32 lanes, then
//     each lane computes its result from the other lanes' operands, with the register layouts
//     of the PTX ISA (so the kernels' fragment bookkeeping is checked, not assumed);
//   * cp.async: the copies of a committed group land when cp.async.wait_group retires the
//     group ("late" mode, catches reading a stage before waiting for it) or when issued
//     ("early" mode, catches overwriting a stage that other threads are still reading);
//   * shared memory starts filled with 0xFF bytes (NaN in every float type), so reading
//     memory that no copy wrote shows up in the results; addresses handed to ldmatrix and
//     cp.async are checked for range and 16-byte alignment.
//
// The hardware and runtime rules it models (each has a planted bug that breaks it in
// harness/emulator_rules.cpp, run by tests/test_cuda_compile.py):
//   R1 dynamic shared memory opt-in: each (kernel, device) has the attribute
//      cudaFuncAttributeMaxDynamicSharedMemorySize, 48 KiB until cudaFuncSetAttribute raises
//      it; a launch asking for more fails with cudaErrorInvalidValue and runs nothing;
//   R2 the device's opt-in maximum (sm_90: 227 KiB = 232448 B): cudaFuncSetAttribute above it
//      (less the kernel's static shared memory) fails with cudaErrorInvalidValue, and static +
//      dynamic shared memory above it is a fault;
//   R3 static shared memory at most 48 KiB per block (a fault);
//   R4 grid and block limits: grid.x <= 2^31 - 1, grid.y/z <= 65535, a block of at most 1024
//      threads (x, y <= 1024, z <= 64): cudaErrorInvalidConfiguration, nothing runs;
//   R5 the last-error state of the runtime: a failed runtime call or launch sets it,
//      cudaGetLastError returns it and resets it to cudaSuccess (cudaPeekAtLastError only
//      returns it), so an error nobody cleared shows up in the next, unrelated check;
//   R6 cp.async: 16-byte aligned shared and global addresses, src-size 0..16, copies land late
//      or early (see above), none left unwaited at exit;
//   R7 ldmatrix: 16-byte aligned row addresses inside the block's shared memory;
//   R8 __syncthreads after some threads exited, lanes of a warp at different collectives, and
//      deadlocks are faults; shared memory starts as NaN.
// Not modelled (a kernel relying on these is not checked here): timing, the memory model and
// races between threads of different blocks (blocks run one after another, so a cross-block race
// never shows), bank conflicts, register limits and occupancy, misaligned plain vector loads
// (float4 / uint4 through a pointer: the CPU does not fault), warp-synchronous code without the
// *_sync collectives, the L1/L2 caches, streams and asynchrony (a launch runs to completion
// before it returns), sticky (context-corrupting) errors, and more than config().device_count
// devices.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_types.h>

namespace aecomp_emu {

struct Config {
  int sm_count = 4;               // small, so the split-K heuristics split small problems
  int cc_major = 9;
  bool late_copies = true;        // see the header comment
  size_t max_dynamic_smem = 232448;  // sm_90 opt-in limit (227 KiB): R2
  int device_count = 2;           // cudaSetDevice accepts 0 .. device_count - 1
};
inline Config& config() {
  static Config c;
  return c;
}

constexpr int kDefaultDynamicSmem = 48 * 1024;  // R1: the attribute before any opt-in

// The runtime state: the current device, the last error (R5) and each (kernel, device)'s
// dynamic shared memory attribute (R1).
struct Runtime {
  int device = 0;
  cudaError_t last_error = cudaSuccess;
  std::map<std::pair<const void*, int>, int> max_dynamic_smem;
  long long set_attribute_calls = 0;  // cudaFuncSetAttribute calls that reached the "driver"
};
inline Runtime& runtime() {
  static Runtime r;
  return r;
}
inline cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) runtime().last_error = e;
  return e;
}
inline int kernel_max_dynamic_smem(const void* kernel) {
  auto it = runtime().max_dynamic_smem.find({kernel, runtime().device});
  return it == runtime().max_dynamic_smem.end() ? kDefaultDynamicSmem : it->second;
}
// Forgets every opt-in and error (a fresh process).
inline void reset_runtime() { runtime() = Runtime{}; }

// The runtime calls the kernels' host code makes (names as in CUDA, without the cuda prefix).
inline cudaError_t get_device(int* dev) {
  *dev = runtime().device;
  return cudaSuccess;
}
inline cudaError_t set_device(int dev) {
  if (dev < 0 || dev >= config().device_count) return record(cudaErrorInvalidDevice);
  runtime().device = dev;
  return cudaSuccess;
}
inline cudaError_t device_get_attribute(int* v, cudaDeviceAttr attr, int dev) {
  if (dev < 0 || dev >= config().device_count) return record(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = config().sm_count; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = config().cc_major; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(config().max_dynamic_smem); return cudaSuccess;
    default: return record(cudaErrorInvalidValue);
  }
}
// Only the attribute the kernels set. The static shared memory of a kernel is unknown before it
// runs here; the launch checks static + dynamic against the maximum (R2).
inline cudaError_t func_set_max_dynamic_smem(const void* kernel, int bytes) {
  ++runtime().set_attribute_calls;
  if (kernel == nullptr) return record(cudaErrorInvalidDeviceFunction);
  if (bytes < 0 || static_cast<size_t>(bytes) > config().max_dynamic_smem) return record(cudaErrorInvalidValue);
  runtime().max_dynamic_smem[{kernel, runtime().device}] = bytes;
  return cudaSuccess;
}
inline cudaError_t get_last_error() {
  const cudaError_t e = runtime().last_error;
  runtime().last_error = cudaSuccess;
  return e;
}
inline cudaError_t peek_at_last_error() { return runtime().last_error; }

[[noreturn]] inline void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "EMULATOR FAULT: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::fflush(stderr);
  std::abort();
}

struct Copy {
  void* dst;
  const void* src;
  int bytes;
};

enum State : int { RUNNABLE = 0, AT_SYNCTHREADS = 1, AT_WARP = 2, FINISHED = 3 };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int lin = 0;
  int state = RUNNABLE;
  const char* tag = "";
  size_t static_off = 0;
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> groups;
};

struct WarpScratch {
  float f[32];
  const void* ptr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
};

constexpr size_t kStaticSmem = 48 * 1024;
constexpr size_t kStack = 256 * 1024;

struct BlockState {
  uint3 bid;
  dim3 bdim, gdim;
  std::vector<unsigned char> smem;  // [static area | dynamic area]
  size_t dyn_bytes = 0;
  std::vector<Fiber> fibers;
  std::vector<WarpScratch> warps;
  std::vector<std::vector<char>> stacks;
  ucontext_t sched;
  int cur = 0;
  const std::function<void()>* body = nullptr;
};

inline BlockState& block() {
  static BlockState b;
  return b;
}
inline Fiber& me() { return block().fibers[block().cur]; }

inline void fiber_main() {
  BlockState& b = block();
  (*b.body)();
  Fiber& f = b.fibers[b.cur];
  if (!f.open.empty()) fail("thread %d exited with uncommitted cp.async copies", f.lin);
  for (auto& g : f.groups)
    if (!g.empty()) fail("thread %d exited with cp.async copies it never waited for", f.lin);
  f.state = FINISHED;
}

inline void yield_to_scheduler() {
  BlockState& b = block();
  swapcontext(&b.fibers[b.cur].ctx, &b.sched);
}

inline void syncthreads() {
  Fiber& f = me();
  f.state = AT_SYNCTHREADS;
  f.tag = "__syncthreads";
  yield_to_scheduler();
}

inline void warp_barrier(const char* tag) {
  Fiber& f = me();
  f.state = AT_WARP;
  f.tag = tag;
  yield_to_scheduler();
}

inline int lane() { return me().lin & 31; }
inline WarpScratch& warp() { return block().warps[me().lin >> 5]; }

inline void* static_smem(size_t bytes, size_t align) {
  Fiber& f = me();
  size_t off = (f.static_off + align - 1) / align * align;
  if (off + bytes > kStaticSmem) fail("static shared memory over %zu bytes", kStaticSmem);  // R3
  if (off + bytes + block().dyn_bytes > config().max_dynamic_smem)  // R2
    fail("static (%zu) + dynamic (%zu) shared memory over the device's %zu bytes", off + bytes, block().dyn_bytes,
         config().max_dynamic_smem);
  f.static_off = off + bytes;
  return block().smem.data() + off;
}
inline unsigned char* dynamic_smem() { return block().smem.data() + kStaticSmem; }

inline void check_smem(const void* p, size_t bytes, size_t align, const char* what) {
  BlockState& b = block();
  const unsigned char* lo = b.smem.data();
  const unsigned char* hi = lo + kStaticSmem + b.dyn_bytes;
  const unsigned char* q = static_cast<const unsigned char*>(p);
  if (q < lo || q + bytes > hi)
    fail("%s: shared address %p outside shared memory (thread %d, block %u,%u,%u)", what, p, me().lin, b.bid.x,
         b.bid.y, b.bid.z);
  if ((q - lo) % align != 0) fail("%s: shared address %p not %zu-byte aligned (thread %d)", what, p, align, me().lin);
}

// ---------------------------------------------------------------- cp.async
inline void do_copy(const Copy& c) {
  if (c.bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
  std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, static_cast<size_t>(16 - c.bytes));
}
inline void cp_async_16(void* dst, const void* src, int bytes) {
  check_smem(dst, 16, 16, "cp.async");
  if (bytes < 0 || bytes > 16) fail("cp.async: src-size %d outside 0..16", bytes);
  if (bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0)
    fail("cp.async: global address %p not 16-byte aligned (thread %d)", src, me().lin);
  Copy c{dst, src, bytes};
  if (config().late_copies)
    me().open.push_back(c);
  else
    do_copy(c);
}
inline void cp_async_commit() {
  Fiber& f = me();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}
template <int N>
inline void cp_async_wait() {
  Fiber& f = me();
  while (f.groups.size() > static_cast<size_t>(N)) {
    for (const Copy& c : f.groups.front()) do_copy(c);
    f.groups.erase(f.groups.begin());
  }
}

// ---------------------------------------------------------------- warp-wide instructions
inline float shfl_xor(float v, int mask) {
  WarpScratch& w = warp();
  const int l = lane();
  w.f[l] = v;
  warp_barrier("shfl_xor");
  const float r = w.f[l ^ mask];
  warp_barrier("shfl_xor done");
  return r;
}

inline uint16_t ld16(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const unsigned char*>(row) + 2 * col, 2);
  return v;
}

// ldmatrix .x4: lane 8q + i gives the address of row i of matrix q (16 bytes).
//   non-trans: lane l gets, of matrix q, row l/4, columns 2(l%4) and 2(l%4)+1;
//   .trans:    lane l gets, of matrix q, rows 2(l%4) and 2(l%4)+1 of column l/4.
inline void ldmatrix_impl(uint32_t (&r)[4], const void* row, bool trans) {
  WarpScratch& w = warp();
  const int l = lane();
  check_smem(row, 16, 16, "ldmatrix");
  w.ptr[l] = row;
  warp_barrier(trans ? "ldmatrix.trans" : "ldmatrix");
  for (int q = 0; q < 4; ++q) {
    uint16_t lo, hi;
    if (!trans) {
      const void* p = w.ptr[8 * q + l / 4];
      lo = ld16(p, 2 * (l % 4));
      hi = ld16(p, 2 * (l % 4) + 1);
    } else {
      lo = ld16(w.ptr[8 * q + 2 * (l % 4)], l / 4);
      hi = ld16(w.ptr[8 * q + 2 * (l % 4) + 1], l / 4);
    }
    r[q] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
  warp_barrier("ldmatrix done");
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_impl(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix_impl(r, row, true); }

template <typename T>
inline float half_bits_to_float(uint16_t u);
template <>
inline float half_bits_to_float<__nv_bfloat16>(uint16_t u) {
  return __bfloat162float(__ushort_as_bfloat16(u));
}
template <>
inline float half_bits_to_float<__half>(uint16_t u) {
  return __half2float(__ushort_as_half(u));
}

// mma.m16n8k16.row.col, fp32 accumulate. With g = lane/4, t = lane%4 (PTX ISA fragment layout):
//   A regs: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B regs: b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]           (B is k x n)
//   C/D:    d0,d1 = D[g][2t..2t+1], d2,d3 = D[g+8][2t..2t+1]
// Counters the harness reads to know which kernels ran.
struct Stats {
  long long mma = 0;       // mma.sync instructions (per warp)
  long long launches = 0;
};
inline Stats& stats() {
  static Stats s;
  return s;
}

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  WarpScratch& w = warp();
  if (lane() == 0) ++stats().mma;
  const int l = lane();
  for (int i = 0; i < 4; ++i) w.a[l][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[l][i] = b[i];
  warp_barrier("mma");
  float A[16][16], B[16][8];
  for (int src = 0; src < 32; ++src) {
    const int g = src / 4, t = src % 4;
    for (int half = 0; half < 2; ++half) {
      auto av = [&](int reg) { return half_bits_to_float<T>(static_cast<uint16_t>(w.a[src][reg] >> (16 * half))); };
      A[g][2 * t + half] = av(0);
      A[g + 8][2 * t + half] = av(1);
      A[g][2 * t + 8 + half] = av(2);
      A[g + 8][2 * t + 8 + half] = av(3);
      B[2 * t + half][g] = half_bits_to_float<T>(static_cast<uint16_t>(w.b[src][0] >> (16 * half)));
      B[2 * t + 8 + half][g] = half_bits_to_float<T>(static_cast<uint16_t>(w.b[src][1] >> (16 * half)));
    }
  }
  const int g = l / 4, t = l % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    double s = d[i];
    for (int k = 0; k < 16; ++k) s += static_cast<double>(A[row][k]) * B[k][col];
    d[i] = static_cast<float>(s);
  }
  warp_barrier("mma done");
}

// ---------------------------------------------------------------- launching
inline void run_block(const std::function<void()>& body) {
  BlockState& b = block();
  const int n = static_cast<int>(b.bdim.x * b.bdim.y * b.bdim.z);
  b.fibers.assign(static_cast<size_t>(n), Fiber{});
  b.warps.assign(static_cast<size_t>(n / 32), WarpScratch{});
  if (b.stacks.size() < static_cast<size_t>(n)) b.stacks.resize(static_cast<size_t>(n));
  std::fill(b.smem.begin(), b.smem.end(), 0xFF);
  b.body = &body;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[static_cast<size_t>(i)];
    f.lin = i;
    f.tid.x = i % b.bdim.x;
    f.tid.y = (i / b.bdim.x) % b.bdim.y;
    f.tid.z = i / (b.bdim.x * b.bdim.y);
    if (b.stacks[static_cast<size_t>(i)].empty()) b.stacks[static_cast<size_t>(i)].resize(kStack);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = b.stacks[static_cast<size_t>(i)].data();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  for (;;) {
    for (int i = 0; i < n; ++i) {
      if (b.fibers[static_cast<size_t>(i)].state != RUNNABLE) continue;
      b.cur = i;
      swapcontext(&b.sched, &b.fibers[static_cast<size_t>(i)].ctx);
    }
    int alive = 0, at_sync = 0;
    for (const Fiber& f : b.fibers) {
      alive += f.state != FINISHED;
      at_sync += f.state == AT_SYNCTHREADS;
    }
    if (alive == 0) break;
    bool released = false;
    for (int w = 0; w < n / 32; ++w) {
      bool all = true;
      for (int l = 0; l < 32; ++l) all = all && b.fibers[static_cast<size_t>(32 * w + l)].state == AT_WARP;
      if (!all) continue;
      for (int l = 0; l < 32; ++l)
        if (std::strcmp(b.fibers[static_cast<size_t>(32 * w + l)].tag, b.fibers[static_cast<size_t>(32 * w)].tag) != 0)
          fail("warp %d: lanes at different warp-wide instructions ('%s' vs '%s')", w,
               b.fibers[static_cast<size_t>(32 * w + l)].tag, b.fibers[static_cast<size_t>(32 * w)].tag);
      for (int l = 0; l < 32; ++l) b.fibers[static_cast<size_t>(32 * w + l)].state = RUNNABLE;
      released = true;
    }
    if (released) continue;
    if (at_sync == alive) {
      if (alive != n) fail("__syncthreads reached after %d threads of the block exited", n - alive);
      for (Fiber& f : b.fibers) f.state = RUNNABLE;
      continue;
    }
    for (const Fiber& f : b.fibers)
      if (f.state != FINISHED)
        std::fprintf(stderr, "  thread %d waits at %s\n", f.lin, f.tag);
    fail("deadlock in block (%u,%u,%u)", b.bid.x, b.bid.y, b.bid.z);
  }
}

// kernel: the kernel's address (what cudaFuncSetAttribute was given), for R1. A launch the
// hardware refuses sets the last error and runs nothing, as <<<...>>> does.
template <typename F>
inline void launch(const void* kernel, dim3 grid, dim3 blk, size_t dyn_smem, F&& kernel_call) {
  const unsigned long long n = 1ull * blk.x * blk.y * blk.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || n == 0) {  // CUDA: invalid configuration
    record(cudaErrorInvalidConfiguration);
    return;
  }
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || blk.x > 1024 || blk.y > 1024 || blk.z > 64 ||
      n > 1024) {  // R4
    record(cudaErrorInvalidConfiguration);
    return;
  }
  if (dyn_smem > static_cast<size_t>(kernel_max_dynamic_smem(kernel))) {  // R1
    record(cudaErrorInvalidValue);
    return;
  }
  if (n % 32 != 0) fail("launch: block of %llu threads (the emulator wants whole warps)", n);
  ++stats().launches;
  if (std::getenv("AECOMP_EMU_TRACE"))
    std::fprintf(stderr, "launch grid %u x %u x %u, block %u, dynamic smem %zu\n", grid.x, grid.y, grid.z, blk.x,
                 dyn_smem);
  BlockState& b = block();
  b.bdim = blk;
  b.gdim = grid;
  b.dyn_bytes = dyn_smem;
  b.smem.assign(kStaticSmem + dyn_smem, 0xFF);
  const std::function<void()> body = [&] { kernel_call(); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        b.bid.x = x;
        b.bid.y = y;
        b.bid.z = z;
        run_block(body);
      }
}


}  // namespace aecomp_emu

// The kernels read these as in CUDA.
#define threadIdx (::aecomp_emu::me().tid)
#define blockIdx (::aecomp_emu::block().bid)
#define blockDim (::aecomp_emu::block().bdim)
#define gridDim (::aecomp_emu::block().gdim)
