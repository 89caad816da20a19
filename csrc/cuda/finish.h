// Batch finishing on a CUDA device, no Python: the kernels of csrc/core/finish.h, computing
// the same per-element math (csrc/core/finish_math.h). Only compiled when FASTLOAD_HAS_CUDA is
// defined.
//
// Pointers are device pointers on `device`; `stream` is a cudaStream_t as an integer (0: the
// legacy default stream). The kernels are launched on that stream and nothing is waited for:
// the caller orders later work on the stream. A failed launch (or an error left by earlier
// work on the device) throws std::runtime_error naming it; bad arguments throw
// std::invalid_argument, as the CPU functions do, before anything is launched.
#pragma once

#include <cstdint>

#include "../core/finish.h"

namespace fastload::cuda {

void finish_images(const uint8_t* in, finish::Layout in_layout, void* out,
                   finish::Layout out_layout, finish::Real out_type,
                   const ImageBatchShape& shape, const float* mean, const float* std,
                   int device, uintptr_t stream);

void finish_tokens(const void* in, int in_bytes, int64_t rows, int64_t in_len, bool shift,
                   void* inputs, void* targets, finish::Index out_type, int device,
                   uintptr_t stream);

}  // namespace fastload::cuda
