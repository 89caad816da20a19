// Batch finishing on the CPU, no Python: uint8 images to normalized float32/float16/bfloat16,
// uint16/uint32 token rows to int32/int64 (optionally shifted into inputs and targets). The
// per-element math is finish_math.h's, shared with the CUDA kernels (csrc/cuda/finish.cu).
#pragma once

#include <cstddef>
#include <cstdint>

#include "finish_math.h"

namespace fastload {

// A batch of n images of c channels, h x w pixels (the same for input and output; only the
// position of the channel axis differs).
struct ImageBatchShape {
  int64_t n, c, h, w;
};

// The most channels an image may have (RGBA).
constexpr int64_t kMaxChannels = 4;

// Throws std::invalid_argument unless every extent is >= 0, 1 <= c <= kMaxChannels, every
// mean is finite and every std is finite and > 0 (c values each).
void check_image_finish(const ImageBatchShape& shape, const float* mean, const float* std);

// out = (in - mean[c]) / std[c] per channel, converted to `out_type` (round to nearest even),
// in one pass: in is (n, h, w, c) or (n, c, h, w) as `in_layout` says, C-contiguous, and out
// likewise as `out_layout` says. Runs on up to `threads` threads (< 1 counts as 1); each
// thread gets at least kMinThreadElements elements. Checks as check_image_finish first.
void finish_images(const uint8_t* in, finish::Layout in_layout, void* out,
                   finish::Layout out_layout, finish::Real out_type,
                   const ImageBatchShape& shape, const float* mean, const float* std,
                   int threads);

// Token rows (rows x in_len tokens of `in_bytes` = 2 or 4 bytes, unsigned, C-contiguous) to
// `out_type`. Without `shift`: inputs (rows x in_len) = in. With it: inputs (rows x in_len-1)
// = each row but its last token, targets (same shape) = each row but its first; in_len >= 2.
// Throws std::invalid_argument for bad sizes and for 4-byte tokens into int32 (a token over
// 2^31 - 1 would wrap).
void finish_tokens(const void* in, int in_bytes, int64_t rows, int64_t in_len, bool shift,
                   void* inputs, void* targets, finish::Index out_type, int threads);

// Shared with the CUDA side: the same argument checks before a launch.
void check_token_finish(int in_bytes, int64_t rows, int64_t in_len, bool shift,
                        finish::Index out_type);

// Below this many output elements a thread is not worth starting.
constexpr int64_t kMinThreadElements = int64_t{1} << 18;

}  // namespace fastload
