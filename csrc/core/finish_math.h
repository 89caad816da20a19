// The per-element math of batch finishing, written once for the CPU loops (csrc/core/finish.cc)
// and the CUDA kernels (csrc/cuda/finish.cu): the GPU computes exactly what the CPU tests check.
// Header-only, no standard library beyond <cstdint>/<cstring>, no Python.
//
// Bit-identical on both sides because every step is exactly rounded IEEE arithmetic
// (a subtraction and a division, rounded to nearest, on both; on the device through the _rn
// intrinsics, so --use_fast_math or FMA contraction cannot change them) followed by the
// float -> half/bfloat16 roundings below, done on the integer bits.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FL_HD __host__ __device__ __forceinline__
#else
#define FL_HD inline
#endif

namespace fastload::finish {

// The output element types of image finishing.
enum class Real : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// The output element types of token finishing.
enum class Index : int { kInt32 = 0, kInt64 = 1 };
// Where the channel axis of one image lies in memory: (H, W, C) or (C, H, W).
enum class Layout : int { kHWC = 0, kCHW = 1 };

FL_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

FL_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// float32 -> IEEE binary16 bits, rounded to nearest, ties to even; overflow gives infinity,
// tiny values give subnormals or signed zero, NaN gives a quiet NaN (sign kept, 0x7E00 as
// torch's portable conversion does).
FL_HD uint16_t float_to_half_bits(float value) {
  const uint32_t x = float_bits(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {  // infinity or NaN
    return static_cast<uint16_t>(sign | (ax == 0x7F800000u ? 0x7C00u : 0x7E00u));
  }
  if (ax >= 0x477FF000u) {  // >= 65520, halfway between 65504 (the largest half) and 2^16
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (ax < 0x38800000u) {      // below 2^-14, the smallest normal half: a subnormal or zero
    if (ax <= 0x33000000u) {   // <= 2^-25, half the smallest subnormal: ties to even (zero)
      return static_cast<uint16_t>(sign);
    }
    const uint32_t exponent = ax >> 23;  // 102 .. 112 here
    const uint32_t mantissa = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // the value in units of 2^-24 is mantissa >> shift
    uint32_t r = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (r & 1u))) ++r;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | r);
  }
  // Normal: rebias the exponent (127 -> 15) and keep 10 of the 23 mantissa bits.
  uint32_t r = (ax - 0x38000000u) >> 13;
  const uint32_t rest = ax & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;  // a carry moves the exponent up
  return static_cast<uint16_t>(sign | r);
}

// float32 -> bfloat16 bits, rounded to nearest, ties to even (torch's rounding); NaN gives
// 0x7FC0, as torch's.
FL_HD uint16_t float_to_bfloat16_bits(float value) {
  const uint32_t x = float_bits(value);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  const uint32_t bias = 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + bias) >> 16);
}

// One pixel value, normalized: (value - mean) / std, both exactly rounded.
FL_HD float normalize_value(uint8_t value, float mean, float std) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(__fsub_rn(static_cast<float>(value), mean), std);
#else
  return (static_cast<float>(value) - mean) / std;
#endif
}

// The storage of one output element of type `Out`: float, or the 16 bits of a half type.
template <Real Out>
struct RealStorage {
  using type = uint16_t;
};
template <>
struct RealStorage<Real::kFloat32> {
  using type = float;
};

template <Real Out>
FL_HD typename RealStorage<Out>::type to_real(float value) {
  if constexpr (Out == Real::kFloat32) {
    return value;
  } else if constexpr (Out == Real::kFloat16) {
    return float_to_half_bits(value);
  } else {
    return float_to_bfloat16_bits(value);
  }
}

// The finished value of one uint8 pixel value, as stored in the output.
template <Real Out>
FL_HD typename RealStorage<Out>::type finish_pixel(uint8_t value, float mean, float std) {
  return to_real<Out>(normalize_value(value, mean, std));
}

// Index of element (channel c, pixel s) of an image of `pixels` = H * W pixels and `channels`
// channels, laid out as `layout`.
FL_HD int64_t element_index(Layout layout, int64_t c, int64_t s, int64_t channels,
                            int64_t pixels) {
  return layout == Layout::kHWC ? s * channels + c : c * pixels + s;
}

// Token finishing: element j of output row r comes from element j + offset of input row r
// (offset 0 for the inputs, 1 for the shifted targets); rows of `in_len` tokens in, `out_len`
// out (in_len - 1 with the shift, else in_len).
template <class In>
FL_HD In token_at(const In* in, int64_t r, int64_t j, int64_t in_len, int64_t offset) {
  return in[r * in_len + j + offset];
}

template <Index Out>
struct IndexStorage {
  using type = int64_t;
};
template <>
struct IndexStorage<Index::kInt32> {
  using type = int32_t;
};

// A token widened to the output type. Callers refuse uint32 -> int32 (it could wrap), so the
// value always fits.
template <Index Out, class In>
FL_HD typename IndexStorage<Out>::type to_index(In token) {
  return static_cast<typename IndexStorage<Out>::type>(token);
}

}  // namespace fastload::finish
