// The finishing math (finish_math.h, shared with the CUDA kernels) and the CPU batch loops
// (finish.cc): roundings against an independent reference, every layout, channel count, type
// and thread count against a plain loop, the argument checks, and no write outside `out`.
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "core/finish.h"

namespace {

namespace fm = fastload::finish;
using fastload::ImageBatchShape;
using fm::Index;
using fm::Layout;
using fm::Real;

// ---- the roundings, against a reference computed another way (in double) -------------------

// The float value of binary16 bits.
double half_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  double v;
  if (exponent == 0x1F) {
    v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                 : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    v = std::ldexp(mantissa, -24);
  } else {
    v = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return sign ? -v : v;
}

// |x| rounded to a multiple of 2^quantum_exp, ties to even, exactly (x has 24 significant
// bits, so x / 2^q and the rounding are exact in double).
double round_to_quantum(double x, int quantum_exp) {
  return std::ldexp(std::nearbyint(std::ldexp(x, -quantum_exp)), quantum_exp);
}

// Reference float -> half: round |x| to the half grid around it, then encode.
uint16_t reference_half(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7E00;
  const double a = std::fabs(static_cast<double>(f));
  if (std::isinf(f) || a >= 65520.0) return sign | 0x7C00;
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): the leading bit has weight 2^(e-1)
  const int quantum = std::max(e - 1, -14) - 10;
  const double r = round_to_quantum(a, quantum);
  if (r == 0) return sign;
  if (r < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(std::ldexp(r, 24));
  int re;
  const double m = std::frexp(r, &re);  // r = m * 2^re
  const int biased = re - 1 + 15;
  const auto mantissa = static_cast<uint16_t>(std::ldexp(m, 11) - 1024);
  return sign | static_cast<uint16_t>(biased << 10) | mantissa;
}

uint16_t reference_bfloat16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  const double a = std::fabs(static_cast<double>(f));
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isinf(f)) return sign | 0x7F80;
  if (a == 0) return sign;
  int e;
  std::frexp(a, &e);
  const int quantum = std::max(e - 1, -126) - 7;  // 8 significant bits; float's subnormals
  const double r = round_to_quantum(a, quantum);
  if (r >= std::ldexp(1.0, 128)) return sign | 0x7F80;
  const float rf = static_cast<float>(r);  // exact: r is on the bfloat16 grid
  uint32_t bits;
  std::memcpy(&bits, &rf, 4);
  return sign | static_cast<uint16_t>((bits >> 16) & 0x7FFF);
}

// Float bit patterns to try: a stride through all 2^32, and the float neighbours of every
// half value and of every midpoint between two (where ties and carries happen).
std::vector<uint32_t> float_patterns() {
  std::vector<uint32_t> bits;
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 977) bits.push_back(static_cast<uint32_t>(u));
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    const double lo = half_value(static_cast<uint16_t>(h));
    const double hi = half_value(static_cast<uint16_t>(h + 1));
    for (double v : {lo, (lo + hi) / 2}) {
      const float f = static_cast<float>(v);  // exact: a half value or midpoint fits a float
      uint32_t b;
      std::memcpy(&b, &f, 4);
      for (uint32_t d : {b - 1, b, b + 1}) {
        bits.push_back(d);
        bits.push_back(d | 0x80000000u);
      }
    }
  }
  return bits;
}

FL_TEST(half_rounding_is_nearest_even_everywhere) {
  std::fesetround(FE_TONEAREST);
  size_t wrong = 0;
  for (uint32_t b : float_patterns()) {
    const float f = fm::bits_float(b);
    const uint16_t got = fm::float_to_half_bits(f), want = reference_half(f);
    if (got != want && wrong++ < 10) {
      CHECK_EQ(got, want);
      std::fprintf(stderr, "  float bits 0x%08x\n", b);
    }
  }
  CHECK_EQ(wrong, size_t{0});
}

FL_TEST(half_rounding_edges) {
  CHECK_EQ(fm::float_to_half_bits(65504.0f), uint16_t{0x7BFF});  // the largest half
  CHECK_EQ(fm::float_to_half_bits(65519.99f), uint16_t{0x7BFF});
  CHECK_EQ(fm::float_to_half_bits(65520.0f), uint16_t{0x7C00});  // the tie goes to infinity
  CHECK_EQ(fm::float_to_half_bits(-1e9f), uint16_t{0xFC00});
  CHECK_EQ(fm::float_to_half_bits(std::ldexp(1.0f, -24)), uint16_t{0x0001});  // smallest
  CHECK_EQ(fm::float_to_half_bits(std::ldexp(1.0f, -25)), uint16_t{0x0000});  // tie to even
  CHECK_EQ(fm::float_to_half_bits(std::ldexp(1.5f, -25)), uint16_t{0x0001});
  CHECK_EQ(fm::float_to_half_bits(-0.0f), uint16_t{0x8000});
  CHECK_EQ(fm::float_to_half_bits(1.0f + std::ldexp(1.0f, -11)), uint16_t{0x3C00});  // tie, even
  CHECK_EQ(fm::float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)), uint16_t{0x3C02});
  CHECK_EQ(fm::float_to_half_bits(std::numeric_limits<float>::infinity()), uint16_t{0x7C00});
  CHECK_EQ(fm::float_to_half_bits(std::nanf("")) & 0x7FFF, 0x7E00);
}

FL_TEST(bfloat16_rounding_is_nearest_even_everywhere) {
  size_t wrong = 0;
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 769) {
    const auto b = static_cast<uint32_t>(u);
    for (uint32_t d : {b, (b & 0xFFFF0000u) | 0x8000u, (b & 0xFFFF0000u) | 0x7FFFu}) {  // ties
      const float f = fm::bits_float(d);
      const uint16_t got = fm::float_to_bfloat16_bits(f), want = reference_bfloat16(f);
      if (got != want && wrong++ < 10) {
        CHECK_EQ(got, want);
        std::fprintf(stderr, "  float bits 0x%08x\n", d);
      }
    }
  }
  CHECK_EQ(wrong, size_t{0});
  CHECK_EQ(fm::float_to_bfloat16_bits(1.0f), uint16_t{0x3F80});
  CHECK_EQ(fm::float_to_bfloat16_bits(fm::bits_float(0x3F808000u)), uint16_t{0x3F80});  // even
  CHECK_EQ(fm::float_to_bfloat16_bits(fm::bits_float(0x3F818000u)), uint16_t{0x3F82});
  CHECK_EQ(fm::float_to_bfloat16_bits(std::numeric_limits<float>::max()), uint16_t{0x7F80});
}

FL_TEST(pixel_normalization_is_the_exact_quotient) {
  const float means[] = {0.0f, 123.675f, 255.0f, -3.5f};
  const float stds[] = {1.0f, 58.395f, 255.0f, 1e-3f};
  for (int k = 0; k < 4; ++k) {
    for (int v = 0; v < 256; ++v) {
      const float want = (static_cast<float>(v) - means[k]) / stds[k];
      const auto u = static_cast<uint8_t>(v);
      CHECK_EQ(fm::finish_pixel<Real::kFloat32>(u, means[k], stds[k]), want);
      CHECK_EQ(fm::finish_pixel<Real::kFloat16>(u, means[k], stds[k]),
               fm::float_to_half_bits(want));
      CHECK_EQ(fm::finish_pixel<Real::kBFloat16>(u, means[k], stds[k]),
               fm::float_to_bfloat16_bits(want));
    }
  }
  CHECK_EQ(fm::finish_pixel<Real::kFloat32>(255, 0.0f, 255.0f), 1.0f);
  CHECK_EQ(fm::finish_pixel<Real::kFloat32>(0, 127.5f, 127.5f), -1.0f);
}

// ---- the batch loops ---------------------------------------------------------------------

size_t real_size(Real r) { return r == Real::kFloat32 ? 4 : 2; }

// The expected bytes of finish_images, element by element through finish_pixel.
std::vector<uint8_t> naive_images(const std::vector<uint8_t>& in, Layout li, Layout lo,
                                  Real type, const ImageBatchShape& s, const float* mean,
                                  const float* std) {
  const size_t esize = real_size(type);
  std::vector<uint8_t> out(in.size() * esize);
  const int64_t pixels = s.h * s.w;
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t c = 0; c < s.c; ++c) {
      for (int64_t p = 0; p < pixels; ++p) {
        const int64_t base = n * s.c * pixels;
        const uint8_t v = in[base + fm::element_index(li, c, p, s.c, pixels)];
        uint8_t* dst = out.data() + (base + fm::element_index(lo, c, p, s.c, pixels)) * esize;
        if (type == Real::kFloat32) {
          const float f = fm::finish_pixel<Real::kFloat32>(v, mean[c], std[c]);
          std::memcpy(dst, &f, 4);
        } else {
          const uint16_t h = type == Real::kFloat16
                                 ? fm::finish_pixel<Real::kFloat16>(v, mean[c], std[c])
                                 : fm::finish_pixel<Real::kBFloat16>(v, mean[c], std[c]);
          std::memcpy(dst, &h, 2);
        }
      }
    }
  }
  return out;
}

FL_TEST(images_every_layout_type_channel_count_and_thread_count) {
  const float mean[] = {123.675f, 116.28f, 103.53f, 10.0f};
  const float std[] = {58.395f, 57.12f, 57.375f, 0.5f};
  const ImageBatchShape shapes[] = {{3, 3, 5, 7}, {2, 1, 9, 4}, {1, 4, 3, 3}, {5, 2, 1, 1},
                                    {2, 3, 300, 301}};
  uint32_t gen = 12345;
  for (const ImageBatchShape& s : shapes) {
    std::vector<uint8_t> in(static_cast<size_t>(s.n * s.c * s.h * s.w));
    for (auto& v : in) v = static_cast<uint8_t>((gen = gen * 1664525u + 1013904223u) >> 24);
    for (Layout li : {Layout::kHWC, Layout::kCHW}) {
      for (Layout lo : {Layout::kHWC, Layout::kCHW}) {
        for (Real type : {Real::kFloat32, Real::kFloat16, Real::kBFloat16}) {
          const auto want = naive_images(in, li, lo, type, s, mean, std);
          for (int threads : {1, 2, 7}) {
            std::vector<uint8_t> out(want.size() + 64, 0xA5);  // 64 guard bytes after it
            fastload::finish_images(in.data(), li, out.data(), lo, type, s, mean, std, threads);
            CHECK(std::memcmp(out.data(), want.data(), want.size()) == 0);
            bool guard = true;
            for (size_t i = want.size(); i < out.size(); ++i) guard = guard && out[i] == 0xA5;
            CHECK(guard);
          }
        }
      }
    }
  }
}

FL_TEST(images_empty_batches_touch_nothing) {
  const float mean[] = {0, 0, 0}, std[] = {1, 1, 1};
  for (const ImageBatchShape& s : {ImageBatchShape{0, 3, 4, 4}, ImageBatchShape{2, 3, 0, 4},
                                   ImageBatchShape{2, 3, 4, 0}}) {
    fastload::finish_images(nullptr, Layout::kHWC, nullptr, Layout::kCHW, Real::kFloat32, s,
                            mean, std, 4);
  }
}

FL_TEST(images_bad_arguments_are_refused) {
  const float mean[] = {0, 0, 0, 0, 0}, std[] = {1, 1, 1, 1, 1};
  const float zero_std[] = {1, 0, 1}, negative_std[] = {1, -1, 1};
  const float nan[] = {std::nanf(""), 0, 0};
  const float inf[] = {1, std::numeric_limits<float>::infinity(), 1};
  uint8_t in[16] = {};
  float out[16];
  const auto run = [&](ImageBatchShape s, const float* m, const float* d) {
    fastload::finish_images(in, Layout::kHWC, out, Layout::kCHW, Real::kFloat32, s, m, d, 1);
  };
  CHECK_THROWS(run({1, 0, 2, 2}, mean, std), std::invalid_argument);
  CHECK_THROWS(run({1, 5, 1, 1}, mean, std), std::invalid_argument);
  CHECK_THROWS(run({-1, 3, 1, 1}, mean, std), std::invalid_argument);
  CHECK_THROWS(run({1, 3, 1, 1}, mean, zero_std), std::invalid_argument);
  CHECK_THROWS(run({1, 3, 1, 1}, mean, negative_std), std::invalid_argument);
  CHECK_THROWS(run({1, 3, 1, 1}, nan, std), std::invalid_argument);
  CHECK_THROWS(run({1, 3, 1, 1}, mean, inf), std::invalid_argument);
}

template <class In, class Out>
void check_tokens(Index type, bool shift, int threads) {
  const int64_t rows = 5, len = 9;
  std::vector<In> in(rows * len);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<In>(i * 7919u);
  }
  in[3] = std::numeric_limits<In>::max();  // the type's largest token survives the widening
  in[len - 1] = std::numeric_limits<In>::max();
  const int64_t out_len = shift ? len - 1 : len;
  std::vector<Out> inputs(rows * out_len + 4, -1), targets(rows * out_len + 4, -1);
  fastload::finish_tokens(in.data(), sizeof(In), rows, len, shift, inputs.data(),
                          shift ? targets.data() : nullptr, type, threads);
  bool ok = true;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < out_len; ++j) {
      ok = ok && inputs[r * out_len + j] == static_cast<Out>(in[r * len + j]);
      if (shift) ok = ok && targets[r * out_len + j] == static_cast<Out>(in[r * len + j + 1]);
    }
  }
  CHECK(ok);
  CHECK_EQ(inputs[3], static_cast<Out>(std::numeric_limits<In>::max()));
  CHECK(inputs[3] > 0);
  for (size_t i = rows * out_len; i < inputs.size(); ++i) {
    CHECK_EQ(inputs[i], Out{-1});  // nothing written past the end
    CHECK_EQ(targets[i], Out{-1});
  }
}

FL_TEST(tokens_with_and_without_the_shift) {
  for (bool shift : {false, true}) {
    for (int threads : {1, 3}) {
      check_tokens<uint16_t, int64_t>(Index::kInt64, shift, threads);
      check_tokens<uint16_t, int32_t>(Index::kInt32, shift, threads);
      check_tokens<uint32_t, int64_t>(Index::kInt64, shift, threads);
    }
  }
}

FL_TEST(tokens_bad_arguments_are_refused) {
  uint32_t in[4] = {};
  int32_t out32[4];
  int64_t out64[4], t64[4];
  CHECK_THROWS(fastload::finish_tokens(in, 4, 1, 4, false, out32, nullptr, Index::kInt32, 1),
               std::invalid_argument);  // uint32 -> int32 could wrap
  CHECK_THROWS(fastload::finish_tokens(in, 1, 1, 4, false, out64, nullptr, Index::kInt64, 1),
               std::invalid_argument);
  CHECK_THROWS(fastload::finish_tokens(in, 2, 4, 1, true, out64, t64, Index::kInt64, 1),
               std::invalid_argument);  // no next token to shift in
  CHECK_THROWS(fastload::finish_tokens(in, 2, -1, 4, false, out64, nullptr, Index::kInt64, 1),
               std::invalid_argument);
  fastload::finish_tokens(nullptr, 2, 0, 4, true, nullptr, nullptr, Index::kInt64, 1);  // empty
}

}  // namespace
