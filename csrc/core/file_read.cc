#include "file_read.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "xxh64.h"

#ifndef _WIN32
#include <unistd.h>
#endif

namespace fastload {
namespace {

// Fills buf[0 : length) from the file at `offset`; false at the end of the file or on an
// error. A read may return fewer bytes than asked (a signal, a network file system).
bool read_fully(int fd, uint8_t* buf, uint64_t length, uint64_t offset) {
#ifdef _WIN32
  (void)fd, (void)buf, (void)length, (void)offset;
  return false;  // no pread: the caller's general path reads it
#else
  while (length > 0) {
    const ssize_t got = ::pread(fd, buf, static_cast<size_t>(length), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buf += got;
    length -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
#endif
}

// The bytes row p needs read: its record, or (checked) the bytes its checksum covers, which
// hold the record.
uint64_t read_at(const Place& p, bool verify) { return verify ? p.checked_at() : p.offset; }
uint64_t read_end(const Place& p, bool verify) {
  return read_at(p, verify) + (verify ? p.checked_length() : p.length);
}

// The rows [i, end) one pread can fetch: the same file, each starting where or after the one
// before starts (rows of one checksum group share their bytes) and within kReadGapBytes of
// the bytes so far, kReadRunBytes at most in all. Returns end.
size_t run_end(const Place* places, size_t i, size_t n, bool verify) {
  const Place& first = places[i];
  const uint64_t start = read_at(first, verify);
  uint64_t last = start, stop = read_end(first, verify);
  size_t j = i + 1;
  for (; j < n; ++j) {
    const Place& p = places[j];
    const uint64_t at = read_at(p, verify), end = read_end(p, verify);
    if (p.source != first.source || at < last || (at > stop && at - stop > kReadGapBytes) ||
        end - start > kReadRunBytes) {
      break;
    }
    last = at;
    stop = std::max(stop, end);
  }
  return j;
}

bool fields_fit(const Place& p, const uint64_t* field_at, const uint64_t* field_size,
                size_t n_fields) {
  for (size_t f = 0; f < n_fields; ++f) {
    if (!in_bounds(field_at[f], field_size[f], p.length)) return false;
  }
  return true;
}

// Whether the bytes p's checksum covers, at `checked`, match it.
bool checks(const uint8_t* checked, const Place& p) {
  return static_cast<uint32_t>(xxh64(checked, static_cast<size_t>(p.checked_length()), 0)) ==
         p.checksum;
}

void copy_fields(const uint8_t* record, size_t row, const uint64_t* field_at,
                 const uint64_t* field_size, const MutByteSpan* out, size_t n_fields) {
  for (size_t f = 0; f < n_fields; ++f) {
    if (field_size[f] == 0) continue;
    std::memcpy(out[f].data + row * field_size[f], record + field_at[f],
                static_cast<size_t>(field_size[f]));
  }
}

// Rows [i, end), one run of one file, their fields known to fit: one pread (straight into the
// row for a lone record that is one whole field), then each record checked and its fields
// copied. Returns -1, or the first row not read.
int64_t read_run(int fd, const Place* places, size_t i, size_t end, bool verify,
                 const uint64_t* field_at, const uint64_t* field_size, const MutByteSpan* out,
                 size_t n_fields, std::vector<uint8_t>& scratch) {
  const Place& first = places[i];
  const bool alone = !verify || first.check_length == 0;  // its checksum is its own
  if (end == i + 1 && alone && n_fields == 1 && field_at[0] == 0 &&
      field_size[0] == first.length) {
    uint8_t* row = out[0].data + i * field_size[0];
    const bool ok =
        read_fully(fd, row, first.length, first.offset) && (!verify || checks(row, first));
    return ok ? -1 : static_cast<int64_t>(i);
  }
  const uint64_t start = read_at(first, verify);
  uint64_t stop = 0;
  for (size_t k = i; k < end; ++k) stop = std::max(stop, read_end(places[k], verify));
  if (scratch.size() < stop - start) scratch.resize(static_cast<size_t>(stop - start));
  if (!read_fully(fd, scratch.data(), stop - start, start)) return static_cast<int64_t>(i);
  for (size_t k = i; k < end; ++k) {
    const Place& p = places[k];
    if (verify && !checks(scratch.data() + (p.checked_at() - start), p)) {
      return static_cast<int64_t>(k);
    }
    copy_fields(scratch.data() + (p.offset - start), k, field_at, field_size, out, n_fields);
  }
  return -1;
}

// read_placed's reads of rows [0, n), their fields known to fit: -1, or the first row not read.
int64_t read_rows(const int* fds, const Place* places, size_t n, bool verify,
                  const uint64_t* field_at, const uint64_t* field_size, const MutByteSpan* out,
                  size_t n_fields, std::vector<uint8_t>& scratch) {
  for (size_t i = 0; i < n;) {
    const int fd = fds[places[i].source];
    if (fd < 0) return static_cast<int64_t>(i);
    const size_t end = run_end(places, i, n, verify);
    const int64_t stop =
        read_run(fd, places, i, end, verify, field_at, field_size, out, n_fields, scratch);
    if (stop >= 0 && static_cast<size_t>(stop) == i && end > i + 1) {
      // The run ends past the end of the file, say: find the record that does, one by one.
      for (size_t k = i; k < end; ++k) {
        if (read_run(fd, places, k, k + 1, verify, field_at, field_size, out, n_fields,
                     scratch) >= 0) {
          return static_cast<int64_t>(k);
        }
      }
    } else if (stop >= 0) {
      return stop;
    }
    i = end;
  }
  return -1;
}

}  // namespace

int64_t read_placed(const int* fds, size_t n_fds, const Place* places, size_t n, bool verify,
                    const uint64_t* field_at, const uint64_t* field_size, const MutByteSpan* out,
                    size_t n_fields) {
  check_out_rows(field_size, out, n_fields, n);
  for (size_t i = 0; i < n; ++i) {
    if (places[i].source >= n_fds) {
      throw BoundsError("item " + std::to_string(i) + ": source " +
                        std::to_string(places[i].source) + " is out of range (" +
                        std::to_string(n_fds) + " files)");
    }
  }
  // Rows whose fields do not fit their record are the caller's general path to report.
  size_t fit = 0;
  while (fit < n && fields_fit(places[fit], field_at, field_size, n_fields)) ++fit;
  thread_local std::vector<uint8_t> scratch;  // kept: an allocation this size is an mmap
  const int64_t stop = read_rows(fds, places, fit, verify, field_at, field_size, out, n_fields,
                                 scratch);
  if (scratch.size() > 4 * kReadRunBytes) std::vector<uint8_t>().swap(scratch);  // a huge record
  if (stop >= 0) return stop;
  return fit < n ? static_cast<int64_t>(fit) : -1;
}

}  // namespace fastload
