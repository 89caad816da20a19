#include "xxh64.h"

#include <cstring>

namespace fastload {
namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// XXH64 is defined on little-endian words; memcpy avoids unaligned-access UB.
inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

inline uint32_t read32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

inline uint64_t round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  return rotl(acc, 31) * kP1;
}

inline uint64_t merge_round(uint64_t acc, uint64_t val) {
  acc ^= round(0, val);
  return acc * kP1 + kP4;
}

void check_bounds(ByteSpan data, const uint64_t* offsets, const uint64_t* lengths, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!in_bounds(offsets[i], lengths[i], data.size)) {
      throw_out_of_bounds(i, "offset", offsets[i], "length", lengths[i], "data", data.size);
    }
  }
}

}  // namespace

uint64_t xxh64(const void* data, size_t len, uint64_t seed) noexcept {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint8_t* const end = p + len;
  uint64_t h;

  if (len >= 32) {
    uint64_t v1 = seed + kP1 + kP2;
    uint64_t v2 = seed + kP2;
    uint64_t v3 = seed;
    uint64_t v4 = seed - kP1;
    const uint8_t* const limit = end - 32;
    do {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge_round(h, v1);
    h = merge_round(h, v2);
    h = merge_round(h, v3);
    h = merge_round(h, v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(len);

  // Tail: 8-byte words, then one 4-byte word, then single bytes.
  for (; end - p >= 8; p += 8) {
    h ^= round(0, read64(p));
    h = rotl(h, 27) * kP1 + kP4;
  }
  if (end - p >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * kP1;
    h = rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= (*p) * kP5;
    h = rotl(h, 11) * kP1;
  }

  // Avalanche.
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

void xxh64_slices(ByteSpan data, const uint64_t* offsets, const uint64_t* lengths, size_t n,
                  uint64_t seed, uint64_t* out) {
  check_bounds(data, offsets, lengths, n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = xxh64(data.data + offsets[i], static_cast<size_t>(lengths[i]), seed);
  }
}

int64_t check_slices(ByteSpan data, const uint64_t* offsets, const uint64_t* lengths,
                     const uint32_t* expected, size_t n) {
  check_bounds(data, offsets, lengths, n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t h = xxh64(data.data + offsets[i], static_cast<size_t>(lengths[i]), 0);
    if (static_cast<uint32_t>(h) != expected[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace fastload
