// XXH64 (https://github.com/Cyan4973/xxHash, public algorithm), portable C++, no Python.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bounds.h"

namespace fastload {

// XXH64 of data[0:len]; equals xxhash.xxh64_intdigest(data, seed).
uint64_t xxh64(const void* data, size_t len, uint64_t seed) noexcept;

// out[i] = xxh64(data[offsets[i] : offsets[i] + lengths[i]], seed).
// Every slice is checked first; throws BoundsError before touching any byte.
void xxh64_slices(ByteSpan data, const uint64_t* offsets, const uint64_t* lengths, size_t n,
                  uint64_t seed, uint64_t* out);

// Index of the first slice whose low 32 bits of xxh64 (seed 0) differ from expected[i],
// or -1 when all match. Bounds are checked first, as in xxh64_slices.
int64_t check_slices(ByteSpan data, const uint64_t* offsets, const uint64_t* lengths,
                     const uint32_t* expected, size_t n);

}  // namespace fastload
