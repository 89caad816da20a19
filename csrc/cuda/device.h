// CUDA runtime queries, no Python. Only compiled when FASTLOAD_HAS_CUDA is defined.
#pragma once

namespace fastload::cuda {

// Number of visible CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count() noexcept;

}  // namespace fastload::cuda
