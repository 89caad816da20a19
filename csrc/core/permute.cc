#include "permute.h"

#include <stdexcept>
#include <string>

namespace fastload {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void check_positions(uint64_t n, const uint64_t* positions, size_t count, const char* what) {
  for (size_t i = 0; i < count; ++i) {
    if (positions[i] >= n) {
      throw BoundsError(std::string(what) + "[" + std::to_string(i) + "] = " +
                        std::to_string(positions[i]) + " is not below n = " + std::to_string(n));
    }
  }
}

}  // namespace

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t key) : n_(n) {
  if (n == 0) throw std::invalid_argument("a permutation needs n >= 1, got n = 0");
  int k = 1;  // only n > kTableMax runs the network, so in use k >= 9
  while (k < 64 && (uint64_t{1} << k) < n) ++k;
  bits_[0] = (k + 1) / 2;
  bits_[1] = k / 2;
  // n is part of the key: with the same domain, sizes n and n + 1 would otherwise give
  // nearly the same order (cycle-walking changes only the values that land past the end).
  uint64_t state = key;
  uint64_t n_state = n;
  state ^= splitmix64(n_state);
  for (uint64_t& round_key : keys_) round_key = splitmix64(state);
  if (n > kTableMax) return;
  for (uint64_t i = 0; i < n; ++i) table_[i] = static_cast<uint8_t>(i);
  for (uint64_t i = n - 1; i > 0; --i) {  // modulo bias <= 2^-56: negligible
    const uint64_t j = splitmix64(state) % (i + 1);
    const uint8_t t = table_[i];
    table_[i] = table_[j];
    table_[j] = t;
  }
  for (uint64_t i = 0; i < n; ++i) inverse_[table_[i]] = static_cast<uint8_t>(i);
}

void permute(uint64_t n, uint64_t key, const uint64_t* positions, size_t count, uint64_t* out) {
  const FeistelPermutation p(n, key);
  check_positions(n, positions, count, "positions");
  p.map<false>([positions](size_t i) { return positions[i]; }, count, out);
}

void permute_inverse(uint64_t n, uint64_t key, const uint64_t* values, size_t count,
                     uint64_t* out) {
  const FeistelPermutation p(n, key);
  check_positions(n, values, count, "values");
  p.map<true>([values](size_t i) { return values[i]; }, count, out);
}

void check_range(uint64_t n, uint64_t start, uint64_t count) {
  if (n == 0) throw std::invalid_argument("a permutation needs n >= 1, got n = 0");
  if (!in_bounds(start, count, n)) {
    throw BoundsError("start " + std::to_string(start) + " + count " + std::to_string(count) +
                      " is past n = " + std::to_string(n));
  }
}

void permute_range(uint64_t n, uint64_t key, uint64_t start, uint64_t count, uint64_t* out) {
  check_range(n, start, count);
  const FeistelPermutation p(n, key);
  p.map<false>([start](size_t i) { return start + i; }, static_cast<size_t>(count), out);
}

}  // namespace fastload
