#include "finish.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fastload::cuda {
namespace {

using finish::Index;
using finish::Layout;
using finish::Real;

constexpr int kBlock = 256;
constexpr int64_t kMaxGridX = 4096;   // blocks along a row of pixels; more loop
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y; more images loop

[[noreturn]] void fail(const std::string& what, cudaError_t error) {
  throw std::runtime_error("fastload: " + what + " failed: " + cudaGetErrorName(error) + ": " +
                           cudaGetErrorString(error));
}

// Makes `device` current for its lifetime (a kernel runs on the current device), and checks
// that `stream` belongs to it where the runtime can tell.
class DeviceScope {
 public:
  DeviceScope(int device, uintptr_t stream) {
    cudaError_t e = cudaGetDevice(&previous_);
    if (e != cudaSuccess) fail("cudaGetDevice", e);
    if (previous_ != device) {
      e = cudaSetDevice(device);
      if (e != cudaSuccess) fail("cudaSetDevice(" + std::to_string(device) + ")", e);
    }
    device_ = device;
#if CUDART_VERSION >= 12080
    int stream_device = -1;
    if (stream != 0 &&
        cudaStreamGetDevice(reinterpret_cast<cudaStream_t>(stream), &stream_device) ==
            cudaSuccess &&
        stream_device != device) {
      restore();
      throw std::invalid_argument("the stream belongs to CUDA device " +
                                  std::to_string(stream_device) + " but the tensors are on " +
                                  std::to_string(device));
    }
    cudaGetLastError();  // a stream the query could not place is left to the launch to judge
#else
    (void)stream;
#endif
  }
  ~DeviceScope() { restore(); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  void restore() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
    previous_ = -1;
  }
  int previous_ = -1;
  int device_ = -1;
};

void check_launch(const char* kernel, int device) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail(std::string("launching ") + kernel + " on CUDA device " +
                             std::to_string(device), e);
}

struct ChannelParams {
  float mean[kMaxChannels];
  float std[kMaxChannels];
};

// Grid: x along an image's pixels, y along the batch's images; each thread finishes every
// channel of its pixels. The layouts are arguments, not template parameters: the branch is
// the same for every thread (no divergence), and three kernels compile in a third of the time
// of twelve.
template <Real R>
__global__ void finish_images_kernel(const uint8_t* __restrict__ in, Layout in_layout,
                                     typename finish::RealStorage<R>::type* __restrict__ out,
                                     Layout out_layout, int64_t images, int channels,
                                     int64_t pixels, ChannelParams params) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = blockIdx.y; n < images; n += gridDim.y) {
    const uint8_t* src = in + n * channels * pixels;
    auto* dst = out + n * channels * pixels;
    for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < pixels;
         s += step) {
#pragma unroll
      for (int c = 0; c < kMaxChannels; ++c) {  // unrolled: the params stay in registers
        if (c >= channels) break;
        dst[finish::element_index(out_layout, c, s, channels, pixels)] = finish::finish_pixel<R>(
            src[finish::element_index(in_layout, c, s, channels, pixels)], params.mean[c],
            params.std[c]);
      }
    }
  }
}

dim3 grid_for(int64_t rows, int64_t row_length) {
  const int64_t x = std::min<int64_t>(kMaxGridX, (row_length + kBlock - 1) / kBlock);
  const int64_t y = std::min<int64_t>(kMaxGridY, rows);
  return dim3(static_cast<unsigned>(std::max<int64_t>(x, 1)), static_cast<unsigned>(y), 1);
}

template <Real R>
void launch_images(const uint8_t* in, Layout in_layout, void* out, Layout out_layout,
                   const ImageBatchShape& shape, const ChannelParams& params,
                   cudaStream_t stream) {
  using T = typename finish::RealStorage<R>::type;
  const int64_t pixels = shape.h * shape.w;
  finish_images_kernel<R><<<grid_for(shape.n, pixels), kBlock, 0, stream>>>(
      in, in_layout, static_cast<T*>(out), out_layout, shape.n, static_cast<int>(shape.c),
      pixels, params);
}

// Grid: x along a row's output tokens, y along the rows.
template <class In, Index O>
__global__ void finish_tokens_kernel(const In* __restrict__ in,
                                     typename finish::IndexStorage<O>::type* __restrict__ inputs,
                                     typename finish::IndexStorage<O>::type* __restrict__ targets,
                                     int64_t rows, int64_t in_len, bool shift) {
  const int64_t out_len = shift ? in_len - 1 : in_len;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < out_len;
         j += step) {
      inputs[r * out_len + j] = finish::to_index<O>(finish::token_at(in, r, j, in_len, 0));
      if (shift) {
        targets[r * out_len + j] = finish::to_index<O>(finish::token_at(in, r, j, in_len, 1));
      }
    }
  }
}

template <class In, Index O>
void launch_tokens(const void* in, int64_t rows, int64_t in_len, bool shift, void* inputs,
                   void* targets, cudaStream_t stream) {
  using T = typename finish::IndexStorage<O>::type;
  const int64_t out_len = shift ? in_len - 1 : in_len;
  finish_tokens_kernel<In, O><<<grid_for(rows, out_len), kBlock, 0, stream>>>(
      static_cast<const In*>(in), static_cast<T*>(inputs), static_cast<T*>(targets), rows,
      in_len, shift);
}

}  // namespace

void finish_images(const uint8_t* in, Layout in_layout, void* out, Layout out_layout,
                   Real out_type, const ImageBatchShape& shape, const float* mean,
                   const float* std, int device, uintptr_t stream) {
  check_image_finish(shape, mean, std);
  if (shape.n == 0 || shape.h == 0 || shape.w == 0) return;
  ChannelParams params{};
  for (int64_t c = 0; c < shape.c; ++c) {
    params.mean[c] = mean[c];
    params.std[c] = std[c];
  }
  DeviceScope scope(device, stream);
  cudaGetLastError();  // start from a clean slate: report this launch's error, not an old one
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (out_type) {
    case Real::kFloat32:
      launch_images<Real::kFloat32>(in, in_layout, out, out_layout, shape, params, s);
      break;
    case Real::kFloat16:
      launch_images<Real::kFloat16>(in, in_layout, out, out_layout, shape, params, s);
      break;
    case Real::kBFloat16:
      launch_images<Real::kBFloat16>(in, in_layout, out, out_layout, shape, params, s);
      break;
  }
  check_launch("the image finishing kernel", device);
}

void finish_tokens(const void* in, int in_bytes, int64_t rows, int64_t in_len, bool shift,
                   void* inputs, void* targets, Index out_type, int device, uintptr_t stream) {
  check_token_finish(in_bytes, rows, in_len, shift, out_type);
  if (rows == 0 || in_len == 0) return;
  DeviceScope scope(device, stream);
  cudaGetLastError();
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  if (in_bytes == 2 && out_type == Index::kInt64) {
    launch_tokens<uint16_t, Index::kInt64>(in, rows, in_len, shift, inputs, targets, s);
  } else if (in_bytes == 2) {
    launch_tokens<uint16_t, Index::kInt32>(in, rows, in_len, shift, inputs, targets, s);
  } else {
    launch_tokens<uint32_t, Index::kInt64>(in, rows, in_len, shift, inputs, targets, s);
  }
  check_launch("the token finishing kernel", device);
}

}  // namespace fastload::cuda
