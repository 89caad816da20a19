// Bindings: permute, permute_inverse, permute_range (the plan's keyed bijection).
#include "../core/permute.h"
#include "common.h"

namespace fastload::bind {
namespace {

using U64Array = nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>>;

// An owned uint64 array of `count` items for numpy (count may be 0).
U64Array new_u64(size_t count, uint64_t** data) {
  auto* out = new uint64_t[count > 0 ? count : 1];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint64_t*>(p); });
  *data = out;
  return U64Array(out, {count}, owner);
}

template <void (*Fn)(uint64_t, uint64_t, const uint64_t*, size_t, uint64_t*)>
U64Array map_array(uint64_t n, uint64_t key, Array<uint64_t> items) {
  const size_t count = items.shape(0);
  uint64_t* out;
  U64Array result = new_u64(count, &out);
  MaybeReleaseGil nogil(count >= kReleaseItems);
  Fn(n, key, items.data(), count, out);
  return result;
}

}  // namespace

void register_plan(nb::module_& m) {
  m.def("permute", &map_array<fastload::permute>, nb::arg("n"), nb::arg("key"),
        nb::arg("positions").noconvert(),
        "``P(positions[i])`` for the bijection P of [0, n) keyed by ``key`` (a uint64).\n\n"
        "P is a Feistel network over the smallest 2**k >= n with cycle-walking (a keyed\n"
        "Fisher-Yates table for n <= 256): O(1) time and memory per position, the same on every\n"
        "machine. Raises ValueError for n = 0 or a position >= n (all are checked first).");

  m.def("permute_inverse", &map_array<fastload::permute_inverse>, nb::arg("n"), nb::arg("key"),
        nb::arg("values").noconvert(),
        "``P^-1(values[i])``: the position of each value in the order of :func:`permute`.");

  m.def(
      "permute_range",
      [](uint64_t n, uint64_t key, uint64_t start, uint64_t count) {
        fastload::check_range(n, start, count);  // before allocating `count` items
        uint64_t* out;
        U64Array result = new_u64(static_cast<size_t>(count), &out);
        MaybeReleaseGil nogil(count >= kReleaseItems);
        fastload::permute_range(n, key, start, count, out);
        return result;
      },
      nb::arg("n"), nb::arg("key"), nb::arg("start"), nb::arg("count"),
      "``P(start + i)`` for i in [0, count); ValueError unless ``start + count <= n`` (checked\n"
      "before anything is allocated).");
}

}  // namespace fastload::bind
