// Records read from open files with pread(2) instead of through a memory map. No Python.
//
// A process that reads records at random from mapped files faults once per record and keeps
// every page it touched mapped: bounding that (letting the maps go) makes every read fault
// again. A pread copies the record out of the page cache in one system call, maps nothing,
// and costs the same however much of the data the process has read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bounds.h"
#include "gather.h"

namespace fastload {

// Reads that lie within this many bytes of each other in one file are one pread; a run is at
// most kReadRunBytes long (rows in file order, as an unshuffled batch is, cost one system call
// per run instead of one per record).
constexpr uint64_t kReadGapBytes = 4096;
constexpr uint64_t kReadRunBytes = 256 * 1024;

// gather_placed with place.source = a file descriptor's index in fds and place.offset = where
// the record starts in that file: for row i and field f, out[f][i*field_size[f] :
// +field_size[f]] = the record's bytes [field_at[f] : +field_size[f]], each record checked
// against its checksum first when `verify`.
// Returns -1, or the first row not read: its file is not open (fds[source] < 0), the file
// ends before the record (a short read) or cannot be read (errno other than EINTR), the record
// is shorter than a field, or its checksum fails. Rows before it are read; nothing is promised
// of the rest (a row that fails may be half-written). Throws BoundsError, before anything is
// read, for a source outside fds or an out too small for n rows.
int64_t read_placed(const int* fds, size_t n_fds, const Place* places, size_t n, bool verify,
                    const uint64_t* field_at, const uint64_t* field_size, const MutByteSpan* out,
                    size_t n_fields);

}  // namespace fastload
