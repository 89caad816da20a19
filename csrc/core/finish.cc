#include "finish.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace fastload {
namespace {

using finish::Index;
using finish::Layout;
using finish::Real;

// Runs body(lo, hi) over [0, total) split into contiguous parts, one per thread, on at most
// `threads` threads and at least kMinThreadElements / per_item items each. The calling thread
// does the first part itself. The bodies must not throw (every check is made before): an
// exception on a std::thread ends the process.
template <class Body>
void parallel_for(int64_t total, int64_t per_item, int threads, Body body) {
  const int64_t min_items =
      std::max<int64_t>(1, kMinThreadElements / std::max<int64_t>(per_item, 1));
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(std::max(threads, 1), total / min_items));
  if (parts <= 1) {
    body(int64_t{0}, total);
    return;
  }
  auto part = [&](int64_t k) { body(total * k / parts, total * (k + 1) / parts); };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(parts - 1));
  int64_t started = 1;
  try {
    for (; started < parts; ++started) pool.emplace_back(part, started);
  } catch (const std::system_error&) {
    // No more threads to be had: the calling thread does the parts not started.
  }
  for (int64_t k = started; k < parts; ++k) part(k);
  part(0);
  for (auto& t : pool) t.join();
}

// One range [p0, p1) of the batch's pixels (pixel p is pixel p % HW of image p / HW), every
// channel, through the table `lut` (lut[c * 256 + v] = finish_pixel(v, mean[c], std[c])).
template <class T, Layout In, Layout Out, int kChannels>
void images_range(const uint8_t* in, T* out, const T* lut, int64_t channels_rt, int64_t pixels,
                  int64_t p0, int64_t p1) {
  const int64_t channels = kChannels > 0 ? kChannels : channels_rt;
  for (int64_t p = p0; p < p1;) {
    const int64_t n = p / pixels;
    const int64_t s0 = p - n * pixels;
    const int64_t s1 = std::min(pixels, s0 + (p1 - p));
    const uint8_t* src = in + n * channels * pixels;
    T* dst = out + n * channels * pixels;
    if (In == Layout::kCHW && Out == Layout::kCHW) {  // plane by plane
      for (int64_t c = 0; c < channels; ++c) {
        const T* table = lut + c * 256;
        const uint8_t* plane_in = src + c * pixels;
        T* plane_out = dst + c * pixels;
        for (int64_t s = s0; s < s1; ++s) plane_out[s] = table[plane_in[s]];
      }
    } else {  // pixel by pixel, its channels together
      for (int64_t s = s0; s < s1; ++s) {
        for (int64_t c = 0; c < channels; ++c) {
          dst[finish::element_index(Out, c, s, channels, pixels)] =
              lut[c * 256 + src[finish::element_index(In, c, s, channels, pixels)]];
        }
      }
    }
    p += s1 - s0;
  }
}

template <class T, Layout In, Layout Out>
void images_dispatch_channels(const uint8_t* in, T* out, const T* lut, int64_t channels,
                              int64_t pixels, int64_t p0, int64_t p1) {
  if (channels == 3) {
    images_range<T, In, Out, 3>(in, out, lut, channels, pixels, p0, p1);
  } else {
    images_range<T, In, Out, 0>(in, out, lut, channels, pixels, p0, p1);
  }
}

template <Real R>
void finish_images_typed(const uint8_t* in, Layout in_layout, void* out_v, Layout out_layout,
                         const ImageBatchShape& shape, const float* mean, const float* std,
                         int threads) {
  using T = typename finish::RealStorage<R>::type;
  // 256 values per channel: the table costs 1024 divisions, and the pass over the batch is
  // then a lookup per byte.
  T lut[kMaxChannels * 256];
  for (int64_t c = 0; c < shape.c; ++c) {
    for (int v = 0; v < 256; ++v) {
      lut[c * 256 + v] = finish::finish_pixel<R>(static_cast<uint8_t>(v), mean[c], std[c]);
    }
  }
  T* out = static_cast<T*>(out_v);
  const int64_t pixels = shape.h * shape.w;
  const int64_t total = shape.n * pixels;
  parallel_for(total, shape.c, threads, [&](int64_t p0, int64_t p1) {
    const int64_t c = shape.c;
    if (in_layout == Layout::kHWC && out_layout == Layout::kHWC) {
      images_dispatch_channels<T, Layout::kHWC, Layout::kHWC>(in, out, lut, c, pixels, p0, p1);
    } else if (in_layout == Layout::kHWC) {
      images_dispatch_channels<T, Layout::kHWC, Layout::kCHW>(in, out, lut, c, pixels, p0, p1);
    } else if (out_layout == Layout::kHWC) {
      images_dispatch_channels<T, Layout::kCHW, Layout::kHWC>(in, out, lut, c, pixels, p0, p1);
    } else {
      images_dispatch_channels<T, Layout::kCHW, Layout::kCHW>(in, out, lut, c, pixels, p0, p1);
    }
  });
}

template <class In, Index O>
void tokens_typed(const In* in, int64_t rows, int64_t in_len, bool shift, void* inputs_v,
                  void* targets_v, int threads) {
  using T = typename finish::IndexStorage<O>::type;
  T* inputs = static_cast<T*>(inputs_v);
  T* targets = static_cast<T*>(targets_v);
  const int64_t out_len = shift ? in_len - 1 : in_len;
  parallel_for(rows, out_len * (shift ? 2 : 1), threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row_in = inputs + r * out_len;
      for (int64_t j = 0; j < out_len; ++j) {
        row_in[j] = finish::to_index<O>(finish::token_at(in, r, j, in_len, 0));
      }
      if (!shift) continue;
      T* row_tg = targets + r * out_len;
      for (int64_t j = 0; j < out_len; ++j) {
        row_tg[j] = finish::to_index<O>(finish::token_at(in, r, j, in_len, 1));
      }
    }
  });
}

template <class In>
void tokens_dispatch(const In* in, int64_t rows, int64_t in_len, bool shift, void* inputs,
                     void* targets, Index out_type, int threads) {
  if (out_type == Index::kInt64) {
    tokens_typed<In, Index::kInt64>(in, rows, in_len, shift, inputs, targets, threads);
  } else {
    tokens_typed<In, Index::kInt32>(in, rows, in_len, shift, inputs, targets, threads);
  }
}

}  // namespace

void check_image_finish(const ImageBatchShape& shape, const float* mean, const float* std) {
  if (shape.n < 0 || shape.h < 0 || shape.w < 0) {
    throw std::invalid_argument("image batch extents must be >= 0, got n=" +
                                std::to_string(shape.n) + " h=" + std::to_string(shape.h) +
                                " w=" + std::to_string(shape.w));
  }
  if (shape.c < 1 || shape.c > kMaxChannels) {
    throw std::invalid_argument("images must have 1 to " + std::to_string(kMaxChannels) +
                                " channels, got " + std::to_string(shape.c));
  }
  for (int64_t c = 0; c < shape.c; ++c) {
    if (!std::isfinite(mean[c])) {
      throw std::invalid_argument("mean[" + std::to_string(c) + "] is not finite");
    }
    if (!std::isfinite(std[c]) || !(std[c] > 0.0f)) {
      throw std::invalid_argument("std[" + std::to_string(c) + "] = " + std::to_string(std[c]) +
                                  " must be finite and > 0");
    }
  }
}

void finish_images(const uint8_t* in, Layout in_layout, void* out, Layout out_layout,
                   Real out_type, const ImageBatchShape& shape, const float* mean,
                   const float* std, int threads) {
  check_image_finish(shape, mean, std);
  if (shape.n == 0 || shape.h == 0 || shape.w == 0) return;
  switch (out_type) {
    case Real::kFloat32:
      return finish_images_typed<Real::kFloat32>(in, in_layout, out, out_layout, shape, mean,
                                                 std, threads);
    case Real::kFloat16:
      return finish_images_typed<Real::kFloat16>(in, in_layout, out, out_layout, shape, mean,
                                                 std, threads);
    case Real::kBFloat16:
      return finish_images_typed<Real::kBFloat16>(in, in_layout, out, out_layout, shape, mean,
                                                  std, threads);
  }
  throw std::invalid_argument("unknown output type");
}

void check_token_finish(int in_bytes, int64_t rows, int64_t in_len, bool shift, Index out_type) {
  if (in_bytes != 2 && in_bytes != 4) {
    throw std::invalid_argument("tokens must be uint16 or uint32, got " +
                                std::to_string(in_bytes) + "-byte items");
  }
  if (in_bytes == 4 && out_type == Index::kInt32) {
    throw std::invalid_argument(
        "uint32 tokens cannot be finished as int32 (a token over 2**31 - 1 would wrap); use int64");
  }
  if (rows < 0 || in_len < 0) {
    throw std::invalid_argument("token rows must have extents >= 0, got " + std::to_string(rows) +
                                " x " + std::to_string(in_len));
  }
  if (shift && in_len < 2) {
    throw std::invalid_argument("the next-token shift needs rows of at least 2 tokens, got " +
                                std::to_string(in_len));
  }
}

void finish_tokens(const void* in, int in_bytes, int64_t rows, int64_t in_len, bool shift,
                   void* inputs, void* targets, Index out_type, int threads) {
  check_token_finish(in_bytes, rows, in_len, shift, out_type);
  if (rows == 0 || in_len == 0) return;
  if (in_bytes == 2) {
    tokens_dispatch(static_cast<const uint16_t*>(in), rows, in_len, shift, inputs, targets,
                    out_type, threads);
  } else {
    tokens_dispatch(static_cast<const uint32_t*>(in), rows, in_len, shift, inputs, targets,
                    out_type, threads);
  }
}

}  // namespace fastload
