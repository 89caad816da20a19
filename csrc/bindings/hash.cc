// Bindings: xxh64, xxh64_slices, check_slices.
#include <memory>
#include <string>

#include "../core/xxh64.h"
#include "common.h"

namespace fastload::bind {

void register_hash(nb::module_& m) {
  m.def(
      "xxh64",
      [](nb::handle data, uint64_t seed) {
        Buffer buf(data, false, "data");
        const ByteSpan s = buf.span();
        MaybeReleaseGil nogil(worth_releasing(s.size));
        return fastload::xxh64(s.data, static_cast<size_t>(s.size), seed);
      },
      nb::arg("data"), nb::arg("seed") = 0,
      "XXH64 of ``data``; equal to ``xxhash.xxh64_intdigest(data, seed)``.");

  m.def(
      "xxh64_slices",
      [](nb::handle data, Array<uint64_t> offsets, Array<uint64_t> lengths, uint64_t seed) {
        const size_t n = offsets.shape(0);
        check_same_length("lengths", lengths.shape(0), "offsets", n);
        Buffer buf(data, false, "data");
        auto* out = new uint64_t[n > 0 ? n : 1];
        nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint64_t*>(p); });
        {
          MaybeReleaseGil nogil(worth_releasing(lengths.data(), n));
          fastload::xxh64_slices(buf.span(), offsets.data(), lengths.data(), n, seed, out);
        }
        return nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>>(out, {n}, owner);
      },
      nb::arg("data"), nb::arg("offsets").noconvert(), nb::arg("lengths").noconvert(),
      nb::arg("seed") = 0, "XXH64 of each slice ``data[offsets[i] : offsets[i] + lengths[i]]``.\n\n"
      "Raises ValueError if the arrays differ in length or a slice is out of bounds.");

  m.def(
      "check_slices",
      [](nb::handle data, Array<uint64_t> offsets, Array<uint64_t> lengths,
         Array<uint32_t> expected) {
        const size_t n = offsets.shape(0);
        check_same_length("lengths", lengths.shape(0), "offsets", n);
        check_same_length("expected", expected.shape(0), "offsets", n);
        Buffer buf(data, false, "data");
        MaybeReleaseGil nogil(worth_releasing(lengths.data(), n));
        return fastload::check_slices(buf.span(), offsets.data(), lengths.data(),
                                      expected.data(), n);
      },
      nb::arg("data"), nb::arg("offsets").noconvert(), nb::arg("lengths").noconvert(),
      nb::arg("expected").noconvert(),
      "Index of the first slice whose checksum is wrong, or -1 when all match.\n\n"
      "The checksum of slice i is the low 32 bits of ``xxh64(data[offsets[i] : offsets[i] +\n"
      "lengths[i]], 0)``. Raises ValueError if the arrays differ in length or a slice is out of\n"
      "bounds (all slices are bounds-checked before any is hashed).");
}

}  // namespace fastload::bind
