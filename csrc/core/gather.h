// Batch byte gathers, no Python. Every index/offset/length is checked before any copy,
// so a bad batch throws BoundsError and leaves `out` untouched.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bounds.h"

namespace fastload {

// out[out_offsets[i] : +lengths[i]] = sources[source_index[i]][offsets[i] : +lengths[i]]
// for i in [0, n), in order (a later item wins where destinations overlap).
void gather(const ByteSpan* sources, size_t n_sources, const uint32_t* source_index,
            const uint64_t* offsets, const uint64_t* lengths, const uint64_t* out_offsets,
            size_t n, MutByteSpan out);

// out[i*size : (i+1)*size] = source[offsets[i] : offsets[i] + size] for i in [0, n).
void gather_fixed(ByteSpan source, const uint64_t* offsets, size_t n, uint64_t size,
                  MutByteSpan out);

}  // namespace fastload
