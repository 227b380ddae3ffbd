// Tests the emulator itself: for each hardware / runtime rule that emulator.h models (R1-R8 in
// its header), a correct use passes and a planted bug that breaks the rule is caught (a fault,
// the error the GPU gives, or a wrong result). Each case runs in a forked child, so a fault
// (abort) is observed rather than fatal. Built and run by tests/test_cuda_compile.py; by hand:
//
//   g++ -std=c++17 -O1 -DAECOMP_EMULATE -I/usr/local/cuda/include
//       csrc/cuda/harness/emulator_rules.cpp -o /tmp/rules  &&  /tmp/rules
//
// Prints one line per case ("ok <rule> <case>: <what happened>") and "N cases, 0 failures".
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#define AECOMP_EMULATE 1
#include "../cuda_common.cuh"
#include "../device_info.cu"

using namespace aecomp_cuda;

namespace {

constexpr int kN = 64;  // floats each test kernel moves
// Results a case reports besides a cudaError_t: the output was wrong (NaN or a wrong value).
constexpr int kWrongResult = 1000;

// in -> dynamic shared memory (at byte offset `off`) -> out, one float per thread of 64.
AE_KERNEL void stage_kernel(const float* in, float* out, int off) {
  AE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem + off);
  const int t = static_cast<int>(threadIdx.x);
  s[t] = in[t];
  AE_SYNC();
  out[t] = s[kN - 1 - t];
}

// The same through cp.async in 16-byte pieces. src_off (bytes) shifts the global source,
// dst_off the shared destination; wait=false reads the stage before waiting for it.
AE_KERNEL void cp_async_kernel(const float* in, float* out, int src_off, int dst_off, bool wait, bool drain) {
  AE_DYNAMIC_SMEM(smem);
  const int t = static_cast<int>(threadIdx.x);
  if (t < kN / 4) {
    cp_async_16(smem + dst_off + 16 * t, reinterpret_cast<const unsigned char*>(in) + src_off + 16 * t, 16);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
  }
  AE_SYNC();
  const float* s = reinterpret_cast<const float*>(smem + dst_off);
  out[t] = s[t];
  if (!wait && drain && t < kN / 4) cp_async_wait<0>();
}

// Static shared memory of `bytes` plus the dynamic area.
AE_KERNEL void static_smem_kernel(size_t bytes, float* out) {
  AE_SHARED(unsigned char, big, bytes);
  big[threadIdx.x] = 1;
  AE_SYNC();
  out[threadIdx.x] = static_cast<float>(big[(threadIdx.x + 1) % blockDim.x]);
}

// ldmatrix over an 8x... tile at byte offset `off` of the dynamic area.
AE_KERNEL void ldmatrix_kernel(float* out, int off) {
  AE_DYNAMIC_SMEM(smem);
  const int t = static_cast<int>(threadIdx.x);
  for (int i = t; i < 4096; i += static_cast<int>(blockDim.x)) smem[i] = 0;
  AE_SYNC();
  uint32_t r[4];
  if (t < 32) {
    ldmatrix_x4(r, smem + off + 16 * t);
    out[t] = static_cast<float>(r[0]);
  }
}

// Barrier after some threads returned (exit_early) / lanes of a warp at different collectives
// (diverge) / shared memory read before anything wrote it (uninit).
AE_KERNEL void control_kernel(float* out, int mode) {
  AE_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const int t = static_cast<int>(threadIdx.x);
  if (mode == 1 && t >= 32) return;  // then a barrier below
  if (mode != 3) s[t] = static_cast<float>(t);
  AE_SYNC();
  float v = s[(t + 1) % kN];
  if (mode == 2) {
    if ((t & 1) == 0) v = warp_sum(v);
    else v = shfl_xor(v, 1) + shfl_xor(v, 2);
  }
  out[t] = v;
}

std::vector<float> g_in(kN), g_out(kN);

cudaError_t check_out(const std::vector<float>& want) {
  for (int i = 0; i < kN; ++i)
    if (std::isnan(g_out[i]) || g_out[i] != want[i]) return static_cast<cudaError_t>(kWrongResult);
  return cudaSuccess;
}
std::vector<float> reversed() {
  std::vector<float> w(kN);
  for (int i = 0; i < kN; ++i) w[i] = g_in[kN - 1 - i];
  return w;
}

// Launches stage_kernel with `dyn` bytes (the data at the end of the area) and reports the launch
// error, or a wrong result.
cudaError_t run_stage(size_t dyn) {
  std::fill(g_out.begin(), g_out.end(), NAN);
  auto kfn = &stage_kernel;
  AE_LAUNCH(kfn, dim3(1), dim3(kN), dyn, nullptr, g_in.data(), g_out.data(), static_cast<int>(dyn) - 4 * kN);
  const cudaError_t e = last_launch_error();
  return e != cudaSuccess ? e : check_out(reversed());
}

// The planted version of set_max_dynamic_smem that issue 13 found: "done" once per (kernel,
// device), whatever the byte count.
cudaError_t set_once_per_kernel(const void* kernel, int bytes) {
  static std::map<std::pair<const void*, int>, bool> done;
  int dev = 0;
  rt::get_device(&dev);
  if (done[{kernel, dev}]) return cudaSuccess;
  const cudaError_t e = rt::set_max_dynamic_smem_attribute(kernel, bytes);
  if (e == cudaSuccess) done[{kernel, dev}] = true;
  return e;
}

const void* stage_id() { return reinterpret_cast<const void*>(&stage_kernel); }

struct Case {
  const char* rule;
  const char* name;
  cudaError_t (*run)();
  int want;               // the cudaError_t (or kWrongResult) the case must report; -1: a fault
  const char* fault;      // for want == -1: text the fault message must contain
};

const Case kCases[] = {
    // R1: dynamic shared memory above the (kernel, device) attribute
    {"R1", "48 KiB needs no opt-in", [] { return run_stage(48 * 1024); }, cudaSuccess, nullptr},
    {"R1", "64 KiB after set_max_dynamic_smem(64 KiB)",
     [] {
       const cudaError_t e = set_max_dynamic_smem(stage_id(), 64 * 1024);
       return e != cudaSuccess ? e : run_stage(64 * 1024);
     },
     cudaSuccess, nullptr},
    {"R1", "PLANTED: 64 KiB without an opt-in", [] { return run_stage(64 * 1024); }, cudaErrorInvalidValue, nullptr},
    {"R1", "56 KiB then 96 KiB through set_max_dynamic_smem (device_info.cu)",
     [] {
       cudaError_t e = set_max_dynamic_smem(stage_id(), 57344);
       if (e == cudaSuccess) e = run_stage(57344);
       if (e == cudaSuccess) e = set_max_dynamic_smem(stage_id(), 98304);
       if (e == cudaSuccess) e = run_stage(98304);
       if (e == cudaSuccess) e = set_max_dynamic_smem(stage_id(), 65536);  // smaller: still 96 KiB
       return e != cudaSuccess ? e : run_stage(98304);
     },
     cudaSuccess, nullptr},
    {"R1", "PLANTED: opt-in cached per kernel whatever the bytes (issue 13), 56 KiB then 96 KiB",
     [] {
       cudaError_t e = set_once_per_kernel(stage_id(), 57344);
       if (e == cudaSuccess) e = run_stage(57344);
       if (e == cudaSuccess) e = set_once_per_kernel(stage_id(), 98304);
       return e != cudaSuccess ? e : run_stage(98304);
     },
     cudaErrorInvalidValue, nullptr},
    {"R1", "PLANTED: opted in on device 0, launched on device 1",
     [] {
       cudaError_t e = rt::set_max_dynamic_smem_attribute(stage_id(), 64 * 1024);
       if (e == cudaSuccess) e = aecomp_emu::set_device(1);
       return e != cudaSuccess ? e : run_stage(64 * 1024);
     },
     cudaErrorInvalidValue, nullptr},
    {"R1", "set_max_dynamic_smem per device: device 0 then device 1",
     [] {
       cudaError_t e = set_max_dynamic_smem(stage_id(), 64 * 1024);
       if (e == cudaSuccess) e = run_stage(64 * 1024);
       if (e == cudaSuccess) e = aecomp_emu::set_device(1);
       if (e == cudaSuccess) e = set_max_dynamic_smem(stage_id(), 64 * 1024);
       return e != cudaSuccess ? e : run_stage(64 * 1024);
     },
     cudaSuccess, nullptr},
    // R2: the device maximum
    {"R2", "227 KiB opt-in and launch",
     [] {
       const cudaError_t e = set_max_dynamic_smem(stage_id(), 232448);
       return e != cudaSuccess ? e : run_stage(232448);
     },
     cudaSuccess, nullptr},
    {"R2", "PLANTED: opt-in one byte over 227 KiB",
     [] { return set_max_dynamic_smem(stage_id(), 232449); }, cudaErrorInvalidValue, nullptr},
    {"R2", "PLANTED: 16 KiB static + 220 KiB dynamic",
     [] {
       auto kfn = &static_smem_kernel;
       cudaError_t e = set_max_dynamic_smem(reinterpret_cast<const void*>(kfn), 220 * 1024);
       if (e != cudaSuccess) return e;
       AE_LAUNCH(kfn, dim3(1), dim3(64), 220 * 1024, nullptr, size_t{16 * 1024}, g_out.data());
       return last_launch_error();
     },
     -1, "static (16384) + dynamic"},
    // R3: static shared memory
    {"R3", "48 KiB static",
     [] {
       auto kfn = &static_smem_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(64), 0, nullptr, size_t{48 * 1024}, g_out.data());
       return last_launch_error();
     },
     cudaSuccess, nullptr},
    {"R3", "PLANTED: 48 KiB + 4 bytes static",
     [] {
       auto kfn = &static_smem_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(64), 0, nullptr, size_t{48 * 1024 + 4}, g_out.data());
       return last_launch_error();
     },
     -1, "static shared memory over"},
    // R4: grid and block limits
    {"R4", "PLANTED: grid.y = 65536",
     [] {
       auto kfn = &stage_kernel;
       AE_LAUNCH(kfn, dim3(1, 65536), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0);
       return last_launch_error();
     },
     cudaErrorInvalidConfiguration, nullptr},
    {"R4", "PLANTED: grid.z = 65536",
     [] {
       auto kfn = &stage_kernel;
       AE_LAUNCH(kfn, dim3(1, 1, 65536), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0);
       return last_launch_error();
     },
     cudaErrorInvalidConfiguration, nullptr},
    {"R4", "PLANTED: a block of 1056 threads",
     [] {
       auto kfn = &stage_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(1056), 1024, nullptr, g_in.data(), g_out.data(), 0);
       return last_launch_error();
     },
     cudaErrorInvalidConfiguration, nullptr},
    {"R4", "PLANTED: an empty grid (M = 0 launched)",
     [] {
       auto kfn = &stage_kernel;
       AE_LAUNCH(kfn, dim3(0), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0);
       return last_launch_error();
     },
     cudaErrorInvalidConfiguration, nullptr},
    // R5: the last error. A failed opt-in, then an unrelated good launch checked with
    // last_launch_error(): the real set_max_dynamic_smem clears what it returned...
    {"R5", "failed opt-in through set_max_dynamic_smem, then a good launch",
     [] {
       if (set_max_dynamic_smem(stage_id(), 300000) != cudaErrorInvalidValue) return cudaErrorUnknown;
       return run_stage(1024);
     },
     cudaSuccess, nullptr},
    // ... a launcher that calls the runtime directly and returns without clearing leaves it.
    {"R5", "PLANTED: failed cudaFuncSetAttribute not cleared, then a good launch",
     [] {
       if (rt::set_max_dynamic_smem_attribute(stage_id(), 300000) != cudaErrorInvalidValue) return cudaErrorUnknown;
       return run_stage(1024);
     },
     cudaErrorInvalidValue, nullptr},
    {"R5", "cudaGetLastError resets the error",
     [] {
       (void)rt::set_max_dynamic_smem_attribute(stage_id(), 300000);
       if (rt::get_last_error() != cudaErrorInvalidValue) return cudaErrorUnknown;
       return rt::get_last_error();
     },
     cudaSuccess, nullptr},
    // R6: cp.async
    {"R6", "aligned cp.async, waited",
     [] {
       auto kfn = &cp_async_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0, 0, true, true);
       const cudaError_t e = last_launch_error();
       return e != cudaSuccess ? e : check_out(g_in);
     },
     cudaSuccess, nullptr},
    {"R6", "PLANTED: global source 4 bytes off 16",
     [] {
       auto kfn = &cp_async_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 4, 0, true, true);
       return last_launch_error();
     },
     -1, "global address"},
    {"R6", "PLANTED: shared destination 8 bytes off 16",
     [] {
       auto kfn = &cp_async_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0, 8, true, true);
       return last_launch_error();
     },
     -1, "not 16-byte aligned"},
    {"R6", "PLANTED: stage read before cp.async.wait_group",
     [] {
       auto kfn = &cp_async_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0, 0, false, true);
       const cudaError_t e = last_launch_error();
       return e != cudaSuccess ? e : check_out(g_in);
     },
     kWrongResult, nullptr},
    {"R6", "PLANTED: thread exits with copies never waited for",
     [] {
       auto kfn = &cp_async_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_in.data(), g_out.data(), 0, 0, false, false);
       return last_launch_error();
     },
     -1, "never waited for"},
    // R7: ldmatrix
    {"R7", "ldmatrix on aligned rows",
     [] {
       auto kfn = &ldmatrix_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 4096, nullptr, g_out.data(), 16);
       return last_launch_error();
     },
     cudaSuccess, nullptr},
    {"R7", "PLANTED: ldmatrix rows 8 bytes off 16",
     [] {
       auto kfn = &ldmatrix_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 4096, nullptr, g_out.data(), 8);
       return last_launch_error();
     },
     -1, "ldmatrix: shared address"},
    {"R7", "PLANTED: ldmatrix rows past the end of shared memory",
     [] {
       auto kfn = &ldmatrix_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 4096, nullptr, g_out.data(), 4096 - 256);
       return last_launch_error();
     },
     -1, "outside shared memory"},
    // R8: barriers, warp collectives, uninitialised shared memory
    {"R8", "barrier, shuffle and shared memory used correctly",
     [] {
       auto kfn = &control_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_out.data(), 0);
       const cudaError_t e = last_launch_error();
       std::vector<float> want(kN);
       for (int i = 0; i < kN; ++i) want[i] = static_cast<float>((i + 1) % kN);
       return e != cudaSuccess ? e : check_out(want);
     },
     cudaSuccess, nullptr},
    {"R8", "PLANTED: __syncthreads after half the block returned",
     [] {
       auto kfn = &control_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_out.data(), 1);
       return last_launch_error();
     },
     -1, "__syncthreads reached after"},
    {"R8", "PLANTED: lanes of a warp at different shuffles",
     [] {
       auto kfn = &control_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_out.data(), 2);
       return last_launch_error();
     },
     -1, "deadlock"},
    {"R8", "PLANTED: shared memory read before any write",
     [] {
       auto kfn = &control_kernel;
       AE_LAUNCH(kfn, dim3(1), dim3(kN), 1024, nullptr, g_out.data(), 3);
       const cudaError_t e = last_launch_error();
       std::vector<float> want(kN);
       for (int i = 0; i < kN; ++i) want[i] = static_cast<float>((i + 1) % kN);
       return e != cudaSuccess ? e : check_out(want);
     },
     kWrongResult, nullptr},
};

}  // namespace

// The exit status a child reports a case's result with.
int exit_code(int r) { return r == kWrongResult ? 254 : (r & 0xff); }

int main() {
  for (int i = 0; i < kN; ++i) g_in[i] = 0.25f * static_cast<float>(i + 1);
  int failures = 0, n = 0;
  for (const Case& c : kCases) {
    ++n;
    int pipefd[2];
    if (pipe(pipefd) != 0) return 2;
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {  // child: the runtime as a fresh process has it, stderr into the pipe
      close(pipefd[0]);
      dup2(pipefd[1], 2);
      _exit(exit_code(static_cast<int>(c.run())));
    }
    close(pipefd[1]);
    std::string err;
    char buf[512];
    ssize_t k;
    while ((k = read(pipefd[0], buf, sizeof buf)) > 0) err.append(buf, static_cast<size_t>(k));
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const bool faulted = WIFSIGNALED(status) && err.find("EMULATOR FAULT") != std::string::npos;
    std::string what = faulted ? err.substr(0, err.find('\n'))
                       : WIFEXITED(status) ? "reported " + std::to_string(WEXITSTATUS(status))
                                           : "crashed: " + err.substr(0, 200);
    const bool ok = c.want == -1 ? faulted && err.find(c.fault) != std::string::npos
                                 : WIFEXITED(status) && WEXITSTATUS(status) == exit_code(c.want);
    std::printf("%s %s %s: %s (want %s)\n", ok ? "ok" : "FAIL", c.rule, c.name, what.c_str(),
                c.want == -1 ? c.fault : std::to_string(exit_code(c.want)).c_str());
    failures += !ok;
  }
  std::printf("%d cases, %d failures\n", n, failures);
  return failures == 0 ? 0 : 1;
}
