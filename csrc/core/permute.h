// A keyed bijection over [0, n): any position of a shuffled order in O(1) time and memory,
// so a plan over 10^9 samples needs no per-sample array. No Python.
//
// A Feistel network over the smallest 2^k >= n (so the domain is < 2n and walks are short),
// with halves of floor(k/2) and ceil(k/2) bits that alternate sides each round, a
// splitmix64-style round function keyed per round, and cycle-walking: a value >= n is pushed
// through the network again until it lands in [0, n). Every round is a bijection of [0, 2^k),
// so the walk ends and the result is a bijection of [0, n). The mean walk is 2^k / n < 2 steps.
//
// Feistel rounds over a few bits each mix poorly (with n <= 16, some orders came out far
// likelier than others), so n <= kTableMax uses a table filled by a keyed Fisher-Yates
// shuffle instead: every order equally likely, still O(1) memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bounds.h"

namespace fastload {

class FeistelPermutation {
 public:
  static constexpr int kRounds = 6;
  static constexpr uint64_t kTableMax = 256;

  // n >= 1 (throws std::invalid_argument otherwise); any 64-bit key.
  FeistelPermutation(uint64_t n, uint64_t key);

  // The value at `position` (< n; not checked here) and its inverse.
  uint64_t operator()(uint64_t position) const {
    if (n_ <= kTableMax) return table_[position];
    uint64_t x = position;
    do x = encrypt(x);
    while (x >= n_);
    return x;
  }
  uint64_t inverse(uint64_t value) const {
    if (n_ <= kTableMax) return inverse_[value];
    uint64_t x = value;
    do x = decrypt(x);
    while (x >= n_);
    return x;
  }

  // Cycle-walks `count` inputs at once: out[i] = P(input(i)) (or P^-1), keeping kLanes walks
  // in flight so that their round functions overlap; a lane that lands in [0, n) is refilled.
  template <bool Inverse, class Input>
  void map(Input input, size_t count, uint64_t* out) const;

 private:
  static uint64_t round_fn(uint64_t half, uint64_t round_key) {
    uint64_t z = half + round_key;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // One round maps x = (L << rb) | R to (R << lb) | (L ^ F(R)), lb + rb = k bits; the
  // right part of the next round therefore has lb bits, so the sides alternate.
  // Every function below runs the whole network once (no cycle-walking) on each lane.
  template <size_t L>
  void encrypt(uint64_t* x) const {
    for (int r = 0; r < kRounds; ++r) {
      const int rb = bits_[r & 1], lb = bits_[(r & 1) ^ 1];
      for (size_t l = 0; l < L; ++l) {  // independent lanes: the CPU overlaps their multiplies
        const uint64_t right = x[l] & mask(rb), left = x[l] >> rb;
        x[l] = (right << lb) | ((left ^ round_fn(right, keys_[r])) & mask(lb));
      }
    }
  }
  template <size_t L>
  void decrypt(uint64_t* y) const {
    for (int r = kRounds - 1; r >= 0; --r) {
      const int rb = bits_[r & 1], lb = bits_[(r & 1) ^ 1];
      for (size_t l = 0; l < L; ++l) {
        const uint64_t right = y[l] >> lb;
        const uint64_t left = (y[l] ^ round_fn(right, keys_[r])) & mask(lb);
        y[l] = (left << rb) | right;
      }
    }
  }
  uint64_t encrypt(uint64_t x) const {
    encrypt<1>(&x);
    return x;
  }
  uint64_t decrypt(uint64_t y) const {
    decrypt<1>(&y);
    return y;
  }
  static uint64_t mask(int bits) { return (uint64_t{1} << bits) - 1; }  // bits in [0, 32]

  static constexpr size_t kLanes = 8;
  uint64_t n_;
  int bits_[2];  // right-half widths of even and odd rounds
  uint64_t keys_[kRounds];
  uint8_t table_[kTableMax];  // n <= kTableMax only: the order and its inverse
  uint8_t inverse_[kTableMax];
};

template <bool Inverse, class Input>
void FeistelPermutation::map(Input input, size_t count, uint64_t* out) const {
  if (n_ <= kTableMax || count < kLanes) {
    for (size_t i = 0; i < count; ++i) out[i] = Inverse ? inverse(input(i)) : (*this)(input(i));
    return;
  }
  constexpr size_t kIdle = ~size_t{0};
  uint64_t x[kLanes];
  size_t at[kLanes];  // the output index of each lane's walk, kIdle once inputs run out
  size_t next = 0, busy = kLanes;
  for (size_t l = 0; l < kLanes; ++l, ++next) x[l] = input(at[l] = next);
  while (busy > 0) {
    if (Inverse) decrypt<kLanes>(x);
    else encrypt<kLanes>(x);
    for (size_t l = 0; l < kLanes; ++l) {
      if (x[l] >= n_ || at[l] == kIdle) continue;
      out[at[l]] = x[l];
      if (next < count) {
        x[l] = input(at[l] = next++);
      } else {
        at[l] = kIdle;
        --busy;
      }
    }
  }
}

// out[i] = P(positions[i]) for i in [0, count). Every position is checked (< n) before any
// is written; a bad one throws BoundsError naming it.
void permute(uint64_t n, uint64_t key, const uint64_t* positions, size_t count, uint64_t* out);

// out[i] = P^-1(values[i]); the same checks as permute.
void permute_inverse(uint64_t n, uint64_t key, const uint64_t* values, size_t count,
                     uint64_t* out);

// Throws std::invalid_argument for n = 0 and BoundsError unless start + count <= n.
void check_range(uint64_t n, uint64_t start, uint64_t count);

// out[i] = P(start + i) for i in [0, count), after check_range.
void permute_range(uint64_t n, uint64_t key, uint64_t start, uint64_t count, uint64_t* out);

}  // namespace fastload
