// Cached device properties for the launchers' choices (tile sizes, split counts, shared memory),
// and the dynamic shared memory opt-in. Also compiled into the CPU emulator harnesses (with
// AECOMP_EMULATE), where the runtime calls go to the emulator's model of them (rt:: in
// cuda_common.cuh) and the attributes come from its configuration.
#include <map>
#include <mutex>
#include <utility>

#ifndef AECOMP_EMULATE
#include <atomic>
#endif

#include "cuda_common.cuh"

namespace aecomp_cuda {
namespace {

int current_device() {
  int dev = 0;
  if (rt::get_device(&dev) != cudaSuccess) {
    (void)rt::get_last_error();  // not ours to report in the next launch check
    dev = 0;
  }
  return dev;
}

#ifndef AECOMP_EMULATE
constexpr int kMaxDevices = 64;
std::atomic<int> g_sm_count[kMaxDevices];  // 0: not queried yet
std::atomic<int> g_cc_major[kMaxDevices];
std::atomic<int> g_smem_optin[kMaxDevices];

int cached_attribute(std::atomic<int>* cache, cudaDeviceAttr attr, int fallback) {
  const int dev = current_device();
  int v = (dev >= 0 && dev < kMaxDevices) ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (v > 0) return v;
  if (rt::device_attribute(&v, attr, dev) != cudaSuccess || v <= 0) {
    (void)rt::get_last_error();  // a failed query must not surface as the next launch's error
    return fallback;
  }
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}
#endif

}  // namespace

#ifndef AECOMP_EMULATE
int device_sm_count() { return cached_attribute(g_sm_count, cudaDevAttrMultiProcessorCount, 1); }
int device_cc_major() { return cached_attribute(g_cc_major, cudaDevAttrComputeCapabilityMajor, 0); }
int device_smem_optin() { return cached_attribute(g_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024); }
#endif

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;  // the default attribute
  const int dev = current_device();
  static std::mutex mu;
  // The attribute set so far per (kernel, device). A kernel whose need grows (the chain kernels
  // take more shared memory for a wider inner layer) is raised again; a smaller need is covered.
  static std::map<std::pair<const void*, int>, int> granted;
  std::lock_guard<std::mutex> lock(mu);
  auto it = granted.find({kernel, dev});
  if (it != granted.end() && it->second >= bytes) return cudaSuccess;
  const cudaError_t e = rt::set_max_dynamic_smem_attribute(kernel, bytes);
  if (e != cudaSuccess) {
    (void)rt::get_last_error();  // returned to the caller; not left for the next launch check
    return e;
  }
  granted[{kernel, dev}] = bytes;
  return cudaSuccess;
}

#ifndef AECOMP_EMULATE
namespace {
// Compiled with the same -gencode flags as every other kernel, so it has a kernel image for the
// current GPU exactly when they do.
__global__ void kernel_image_probe_kernel() {}
}  // namespace

cudaError_t kernel_image_status() {
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(&kernel_image_probe_kernel));
  if (e != cudaSuccess) (void)rt::get_last_error();
  return e;
}
#else
cudaError_t kernel_image_status() { return cudaSuccess; }
#endif

}  // namespace aecomp_cuda
