// Bindings: cuda_available, cuda_device_count, core_has_cuda.
#include "common.h"

#ifdef FASTLOAD_HAS_CUDA
#include "../cuda/device.h"
#endif

namespace fastload::bind {

namespace {
int device_count() {
#ifdef FASTLOAD_HAS_CUDA
  nb::gil_scoped_release nogil;  // the first call loads and initialises the driver
  return fastload::cuda::device_count();
#else
  return 0;
#endif
}
}  // namespace

void register_cuda(nb::module_& m) {
#ifdef FASTLOAD_HAS_CUDA
  m.attr("core_has_cuda") = true;
#else
  m.attr("core_has_cuda") = false;
#endif
  m.def("cuda_device_count", &device_count,
        "Number of visible CUDA devices; 0 without CUDA support, a driver or a device.");
  m.def(
      "cuda_available", [] { return device_count() > 0; },
      "True when the core was built with CUDA and at least one device is usable. Never raises.");
}

}  // namespace fastload::bind
