// Helpers shared by the binding files: buffer-protocol RAII, array types, GIL policy.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <optional>
#include <string>

#include "../core/bounds.h"

namespace fastload::bind {

namespace nb = nanobind;

// Strict index arrays: 1-D, C-contiguous, CPU, exact dtype (bound with .noconvert()).
template <typename T>
using Array = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Holds a C-contiguous buffer exported by `obj` for as long as it lives, so that the
// exporter (bytearray, mmap, ...) cannot resize or close it while the GIL is released.
class Buffer {
 public:
  Buffer(nb::handle obj, bool writable, const char* what) {
    const int flags = writable ? PyBUF_WRITABLE : PyBUF_SIMPLE;
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      PyErr_Clear();
      throw nb::type_error((std::string(what) + " must be a " +
                            (writable ? "writable, " : "") +
                            "C-contiguous buffer (bytes, bytearray, memoryview, mmap, numpy "
                            "array), got " + nb::inst_name(obj).c_str())
                               .c_str());
    }
    if (!PyBuffer_IsContiguous(&view_, 'C')) {
      PyBuffer_Release(&view_);
      throw nb::type_error((std::string(what) + " must be C-contiguous").c_str());
    }
  }
  ~Buffer() { PyBuffer_Release(&view_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  ByteSpan span() const {
    return {static_cast<const uint8_t*>(view_.buf), static_cast<uint64_t>(view_.len)};
  }
  MutByteSpan mut_span() const {
    return {static_cast<uint8_t*>(view_.buf), static_cast<uint64_t>(view_.len)};
  }

 private:
  Py_buffer view_{};
};

// Releasing the GIL costs little, but getting it back can wait for another thread's
// switch interval (5 ms), so only release it for calls with real work in them.
constexpr uint64_t kReleaseBytes = 64 * 1024;
constexpr size_t kReleaseItems = 1024;

inline bool worth_releasing(uint64_t bytes) { return bytes >= kReleaseBytes; }

// Sum of lengths is an estimate of the work; stops early, and treats wrap-around as "big".
inline bool worth_releasing(const uint64_t* lengths, size_t n) {
  if (n >= kReleaseItems) return true;
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    total += lengths[i];
    if (total < lengths[i] || total >= kReleaseBytes) return true;
  }
  return false;
}

// Drops the GIL for its lifetime when `release` is true.
class MaybeReleaseGil {
 public:
  explicit MaybeReleaseGil(bool release) {
    if (release) nogil_.emplace();
  }

 private:
  std::optional<nb::gil_scoped_release> nogil_;
};

inline void check_same_length(const char* name, size_t n_name, const char* ref, size_t n_ref) {
  if (n_name != n_ref) {
    throw nb::value_error((std::string(name) + " has " + std::to_string(n_name) +
                           " entries but " + ref + " has " + std::to_string(n_ref))
                              .c_str());
  }
}

void register_hash(nb::module_& m);
void register_gather(nb::module_& m);
void register_records(nb::module_& m);
void register_cuda(nb::module_& m);
void register_plan(nb::module_& m);
void register_finish(nb::module_& m);
void register_jpeg(nb::module_& m);

}  // namespace fastload::bind
