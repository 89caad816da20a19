#include "gather.h"

#include <cstring>

namespace fastload {
namespace {

// memmove everywhere: a source may alias `out`. With a compile-time size the compiler
// lowers it to a few loads and stores.
template <size_t K>
void copy_fixed(const uint8_t* src, const uint64_t* offsets, size_t n, uint8_t* dst) {
  for (size_t i = 0; i < n; ++i, dst += K) std::memmove(dst, src + offsets[i], K);
}

}  // namespace

void gather(const ByteSpan* sources, size_t n_sources, const uint32_t* source_index,
            const uint64_t* offsets, const uint64_t* lengths, const uint64_t* out_offsets,
            size_t n, MutByteSpan out) {
  for (size_t i = 0; i < n; ++i) {
    check_source_slice(sources, n_sources, i, source_index[i], offsets[i], lengths[i]);
    if (!in_bounds(out_offsets[i], lengths[i], out.size)) {
      throw_out_of_bounds(i, "out_offset", out_offsets[i], "length", lengths[i], "out", out.size);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (lengths[i] == 0) continue;  // the buffer pointer of an empty object may be null
    std::memmove(out.data + out_offsets[i], sources[source_index[i]].data + offsets[i],
                 static_cast<size_t>(lengths[i]));
  }
}

void gather_fixed(ByteSpan source, const uint64_t* offsets, size_t n, uint64_t size,
                  MutByteSpan out) {
  if (n != 0 && (size > out.size / n)) {  // n * size > out.size, without overflow
    throw BoundsError("out holds " + std::to_string(out.size) + " bytes, too small for " +
                      std::to_string(n) + " items of size " + std::to_string(size));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!in_bounds(offsets[i], size, source.size)) {
      throw_out_of_bounds(i, "offset", offsets[i], "size", size, "source", source.size);
    }
  }
  if (n == 0 || size == 0) return;
  const uint8_t* src = source.data;
  uint8_t* dst = out.data;
  switch (size) {
    case 1: return copy_fixed<1>(src, offsets, n, dst);
    case 2: return copy_fixed<2>(src, offsets, n, dst);
    case 4: return copy_fixed<4>(src, offsets, n, dst);
    case 8: return copy_fixed<8>(src, offsets, n, dst);
    case 16: return copy_fixed<16>(src, offsets, n, dst);
    default:
      for (size_t i = 0; i < n; ++i, dst += size) {
        std::memmove(dst, src + offsets[i], static_cast<size_t>(size));
      }
  }
}

}  // namespace fastload
