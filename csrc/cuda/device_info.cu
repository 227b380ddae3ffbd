// Cached device properties for the launchers' choices (tile sizes, split counts, shared memory).
#include <atomic>
#include <mutex>
#include <set>
#include <utility>

#include "cuda_common.cuh"

namespace aecomp_cuda {
namespace {

constexpr int kMaxDevices = 64;
std::atomic<int> g_sm_count[kMaxDevices];  // 0: not queried yet
std::atomic<int> g_cc_major[kMaxDevices];
std::atomic<int> g_smem_optin[kMaxDevices];

int current_device() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
  return dev;
}

int cached_attribute(std::atomic<int>* cache, cudaDeviceAttr attr, int fallback) {
  const int dev = current_device();
  int v = (dev >= 0 && dev < kMaxDevices) ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (v > 0) return v;
  if (cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess || v <= 0) return fallback;
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

}  // namespace

int device_sm_count() { return cached_attribute(g_sm_count, cudaDevAttrMultiProcessorCount, 1); }
int device_cc_major() { return cached_attribute(g_cc_major, cudaDevAttrComputeCapabilityMajor, 0); }
int device_smem_optin() { return cached_attribute(g_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024); }

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  const int dev = current_device();
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, dev}) != 0) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done.insert({kernel, dev});
  return e;
}

}  // namespace aecomp_cuda
