// Bounds checks shared by the core routines. Header-only, no Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastload {

// A read-only / writable byte range. size is in bytes.
struct ByteSpan {
  const uint8_t* data;
  uint64_t size;
};
struct MutByteSpan {
  uint8_t* data;
  uint64_t size;
};

// Thrown for any offset/length/index outside its buffer (bound to ValueError).
class BoundsError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// [offset, offset + length) lies within [0, size). Written so that offset + length
// never has to be computed: it may wrap around 2**64.
inline bool in_bounds(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

// "item 3: offset 100 + length 50 is past the end of source 2 (120 bytes)"
[[noreturn]] inline void throw_out_of_bounds(size_t item, const char* offset_name, uint64_t offset,
                                             const char* length_name, uint64_t length,
                                             const std::string& buffer_name, uint64_t size) {
  throw BoundsError("item " + std::to_string(item) + ": " + offset_name + " " +
                    std::to_string(offset) + " + " + length_name + " " + std::to_string(length) +
                    " is past the end of " + buffer_name + " (" + std::to_string(size) + " bytes)");
}

// Item i of a gather over several sources: source_index < n_sources, and the slice
// [offset, offset + length) lies within that source.
inline void check_source_slice(const ByteSpan* sources, size_t n_sources, size_t i,
                               uint32_t source_index, uint64_t offset, uint64_t length) {
  if (source_index >= n_sources) {
    throw BoundsError("item " + std::to_string(i) + ": source_index " +
                      std::to_string(source_index) + " is out of range (" +
                      std::to_string(n_sources) + " sources)");
  }
  if (!in_bounds(offset, length, sources[source_index].size)) {
    throw_out_of_bounds(i, "offset", offset, "length", length,
                        "source " + std::to_string(source_index), sources[source_index].size);
  }
}

}  // namespace fastload
