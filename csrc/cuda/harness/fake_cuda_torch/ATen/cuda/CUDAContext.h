// Test stand-in for ATen/cuda/CUDAContext.h (see glue_on_cpu.cpp): the two calls the glue makes.
#pragma once

#include <cuda_runtime_api.h>

namespace at {
namespace cuda {
struct EmulatedStream {
  cudaStream_t stream() const { return nullptr; }
};
inline EmulatedStream getCurrentCUDAStream() { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp props = [] {
    cudaDeviceProp p{};
    p.major = 9;
    p.minor = 0;
    return p;
  }();
  return &props;
}
}  // namespace cuda
}  // namespace at
