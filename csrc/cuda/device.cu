#include "device.h"

#include <cuda_runtime.h>

namespace fastload::cuda {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later runtime calls do not see it
    return 0;
  }
  return n;
}

}  // namespace fastload::cuda
