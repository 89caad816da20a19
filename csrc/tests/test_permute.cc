// The keyed permutation is a bijection of [0, n) for every n and key (the table for small n,
// the Feistel network with cycle-walking above it), its inverse undoes it, and bad positions
// are refused.
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "core/permute.h"

namespace {

using fastload::BoundsError;
using fastload::FeistelPermutation;

const uint64_t kKeys[] = {0, 1, 0xDEADBEEFULL, 0x9E3779B97F4A7C15ULL,
                          std::numeric_limits<uint64_t>::max()};
// Both sides of the table/network switch (256), powers of two and their neighbours (the
// network's domain is the next power of two), and sizes with long cycle-walks (2^k + 1).
const uint64_t kSizes[] = {1, 2, 3, 7, 16, 255, 256, 257, 1000, 1024, 1025, 4096, 65537, 300001};

FL_TEST(every_position_maps_to_a_distinct_value_below_n) {
  for (uint64_t n : kSizes) {
    for (uint64_t key : kKeys) {
      std::vector<uint64_t> values(n);
      fastload::permute_range(n, key, 0, n, values.data());
      std::vector<bool> seen(n, false);
      bool ok = true;
      for (uint64_t v : values) {
        if (v >= n || seen[v]) ok = false;
        if (v < n) seen[v] = true;
      }
      CHECK(ok);
      if (!ok) return;  // one report per broken size is enough
    }
  }
}

FL_TEST(the_inverse_undoes_the_permutation) {
  for (uint64_t n : kSizes) {
    for (uint64_t key : kKeys) {
      std::vector<uint64_t> positions(n), values(n), back(n);
      for (uint64_t i = 0; i < n; ++i) positions[i] = i;
      fastload::permute(n, key, positions.data(), n, values.data());
      fastload::permute_inverse(n, key, values.data(), n, back.data());
      CHECK(back == positions);
      const FeistelPermutation p(n, key);  // the one-at-a-time path agrees with the batched one
      for (uint64_t i = 0; i < n; i += 1 + n / 97) {
        CHECK_EQ(p(i), values[i]);
        CHECK_EQ(p.inverse(values[i]), i);
      }
    }
  }
}

FL_TEST(ranges_agree_with_single_positions) {
  const uint64_t n = 100003, key = 42;
  std::vector<uint64_t> whole(n), part(1000);
  fastload::permute_range(n, key, 0, n, whole.data());
  fastload::permute_range(n, key, 5000, 1000, part.data());
  for (size_t i = 0; i < part.size(); ++i) CHECK_EQ(part[i], whole[5000 + i]);
}

FL_TEST(keys_and_sizes_change_the_order) {
  const uint64_t n = 1000;
  std::vector<uint64_t> a(n), b(n), c(n + 1);
  fastload::permute_range(n, 1, 0, n, a.data());
  fastload::permute_range(n, 2, 0, n, b.data());
  fastload::permute_range(n + 1, 1, 0, n, c.data());
  size_t same_key = 0, same_size = 0;
  for (uint64_t i = 0; i < n; ++i) {
    same_key += a[i] == b[i];
    same_size += a[i] == c[i];
  }
  CHECK(same_key < 20);  // about 1 in n positions agree by chance
  CHECK(same_size < 20);
}

FL_TEST(huge_n_stays_in_range) {
  const uint64_t sizes[] = {uint64_t{1} << 40, (uint64_t{1} << 62) + 3,
                            std::numeric_limits<uint64_t>::max()};
  for (uint64_t n : sizes) {
    const uint64_t positions[] = {0, 1, n / 2, n - 2, n - 1};
    uint64_t values[5], back[5];
    fastload::permute(n, 7, positions, 5, values);
    fastload::permute_inverse(n, 7, values, 5, back);
    for (int i = 0; i < 5; ++i) {
      CHECK(values[i] < n);
      CHECK_EQ(back[i], positions[i]);
    }
  }
}

FL_TEST(bad_positions_and_sizes_are_refused) {
  uint64_t out[2] = {11, 11};
  const uint64_t positions[] = {3, 10};
  CHECK_THROWS(fastload::permute(10, 0, positions, 2, out), BoundsError);
  CHECK_THROWS(fastload::permute_inverse(10, 0, positions, 2, out), BoundsError);
  CHECK(out[0] == 11 && out[1] == 11);  // checked before anything is written
  CHECK_THROWS(fastload::permute(0, 0, positions, 0, out), std::invalid_argument);
  CHECK_THROWS(FeistelPermutation(0, 1), std::invalid_argument);
  CHECK_THROWS(fastload::check_range(10, 5, 6), BoundsError);
  CHECK_THROWS(fastload::check_range(10, 11, 0), BoundsError);
  CHECK_THROWS(fastload::check_range(10, 2, std::numeric_limits<uint64_t>::max()), BoundsError);
  fastload::check_range(10, 10, 0);  // an empty range at the end is fine
  fastload::check_range(10, 0, 10);
}

}  // namespace
