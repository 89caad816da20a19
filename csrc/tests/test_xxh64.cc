// XXH64 against published test vectors, and the checked slice functions' bounds.
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "core/xxh64.h"

namespace {

using fastload::BoundsError;
using fastload::ByteSpan;

constexpr uint64_t kPrime32 = 2654435761ULL;
constexpr uint64_t kPrime64 = 11400714785074694797ULL;

// The buffer of xxHash's own sanity check (xxhsum): byte i is the top byte of a generator
// started at PRIME32 and multiplied by PRIME64 after each byte.
std::vector<uint8_t> sanity_buffer(size_t n) {
  std::vector<uint8_t> b(n);
  uint64_t gen = kPrime32;
  for (auto& byte : b) {
    byte = static_cast<uint8_t>(gen >> 56);
    gen *= kPrime64;
  }
  return b;
}

struct Vector {
  size_t length;
  uint64_t seed;
  uint64_t hash;
};

// The first eight are xxHash's published sanity-check vectors; the others (lengths around
// the 32-byte stripe and the 8/4-byte tails) were computed with the reference implementation
// (the xxhash Python package, which wraps it).
const Vector kVectors[] = {
    {0, 0, 0xEF46DB3751D8E999ULL},      {0, kPrime32, 0xAC75FDA2929B17EFULL},
    {1, 0, 0xE934A84ADB052768ULL},      {1, kPrime32, 0x5014607643A9B4C3ULL},
    {14, 0, 0x8282DCC4994E35C8ULL},     {14, kPrime32, 0xC3BD6BF63DEB6DF0ULL},
    {222, 0, 0xB641AE8CB691C174ULL},    {222, kPrime32, 0x20CB8AB7AE10C14AULL},
    {3, 0, 0xFF7E1959CB50794AULL},      {4, 0, 0x9136A0DCA57457EEULL},
    {8, kPrime32, 0xFE0C047A5353CDACULL}, {31, 0, 0x299B39A290E6D783ULL},
    {32, 0, 0x18B216492BB44B70ULL},     {33, kPrime32, 0xE92C292F64BC3071ULL},
    {63, 0, 0xA9EFBE0FA0F3F4E7ULL},     {64, kPrime32, 0xB5EEBA99264CC44FULL},
    {100, 0, 0x4BFE019CD91D9EA4ULL},    {1024, kPrime32, 0x238CF9296898B465ULL},
    {2367, 0, 0xA82418DDEC0EA581ULL},
};

FL_TEST(xxh64_matches_the_published_vectors) {
  const std::vector<uint8_t> buffer = sanity_buffer(2367);
  for (const Vector& v : kVectors) {
    CHECK_EQ(fastload::xxh64(buffer.data(), v.length, v.seed), v.hash);
  }
}

FL_TEST(xxh64_does_not_depend_on_alignment) {
  const std::vector<uint8_t> buffer = sanity_buffer(300);
  std::vector<uint8_t> shifted(buffer.size() + 7);
  for (size_t at = 1; at < 8; ++at) {
    std::copy(buffer.begin(), buffer.end(), shifted.begin() + static_cast<long>(at));
    CHECK_EQ(fastload::xxh64(shifted.data() + at, 222, 0), 0xB641AE8CB691C174ULL);
  }
}

FL_TEST(slices_hash_each_slice) {
  const std::vector<uint8_t> buffer = sanity_buffer(2367);
  const ByteSpan data{buffer.data(), buffer.size()};
  const uint64_t offsets[] = {0, 0, 0, 5};
  const uint64_t lengths[] = {0, 14, 222, 0};
  uint64_t out[4] = {};
  fastload::xxh64_slices(data, offsets, lengths, 4, 0, out);
  CHECK_EQ(out[0], 0xEF46DB3751D8E999ULL);
  CHECK_EQ(out[1], 0x8282DCC4994E35C8ULL);
  CHECK_EQ(out[2], 0xB641AE8CB691C174ULL);
  CHECK_EQ(out[3], 0xEF46DB3751D8E999ULL);
  const uint32_t expected[] = {0x51D8E999u, 0x994E35C8u, 0xB691C174u, 0x51D8E999u};
  CHECK_EQ(fastload::check_slices(data, offsets, lengths, expected, 4), int64_t{-1});
  const uint32_t wrong[] = {0x51D8E999u, 0x994E35C8u, 0u, 0x51D8E999u};
  CHECK_EQ(fastload::check_slices(data, offsets, lengths, wrong, 4), int64_t{2});
}

FL_TEST(slices_out_of_bounds_are_refused_before_any_hash) {
  const std::vector<uint8_t> buffer = sanity_buffer(100);
  const ByteSpan data{buffer.data(), buffer.size()};
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  const uint64_t cases[][2] = {{0, 101}, {100, 1}, {101, 0}, {max, 2}, {2, max}, {50, max - 10}};
  for (const auto& c : cases) {
    const uint64_t offsets[] = {0, c[0]};
    const uint64_t lengths[] = {10, c[1]};
    uint64_t out[2] = {7, 7};
    CHECK_THROWS(fastload::xxh64_slices(data, offsets, lengths, 2, 0, out), BoundsError);
    CHECK_EQ(out[0], uint64_t{7});  // nothing written: all slices are checked first
    const uint32_t expected[2] = {0, 0};
    CHECK_THROWS(fastload::check_slices(data, offsets, lengths, expected, 2), BoundsError);
  }
  // The slice that ends exactly at the end is fine.
  const uint64_t offsets[] = {90};
  const uint64_t lengths[] = {10};
  uint64_t out[1];
  fastload::xxh64_slices(data, offsets, lengths, 1, 0, out);
  CHECK_EQ(out[0], fastload::xxh64(buffer.data() + 90, 10, 0));
}

}  // namespace
