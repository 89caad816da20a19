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

// Where each record of a dataset lies: record r is sources[source[r]][offset[r] : +length[r]],
// and the low 32 bits of its xxh64 are checksum[r].
struct RecordTable {
  const uint32_t* source;
  const uint64_t* offset;
  const uint64_t* length;
  const uint32_t* checksum;
  size_t n;
};

// Where a row of a batch lies: sources[source][offset : +length], whose xxh64's low 32 bits
// are checksum; or, where a checksum covers a group of records (records.h), the low 32 bits of
// the xxh64 of sources[source][check_offset : +check_length], which holds the record.
struct Place {
  uint64_t source;
  uint64_t offset;
  uint64_t length;
  uint32_t checksum;
  uint64_t check_offset = 0;
  uint64_t check_length = 0;  // 0: the checksum is the record's own

  uint64_t checked_at() const { return check_length ? check_offset : offset; }
  uint64_t checked_length() const { return check_length ? check_length : length; }
};

// One batch of fixed-size fields, straight from whole records: for row i (record idx[i]) and
// field f, out[f][i*field_size[f] : +field_size[f]] = the record's bytes
// [field_at[f] : +field_size[f]]. With `verify`, each record's checksum is checked just before
// its fields are copied (one pass over its bytes, the copy reads them from cache).
// Returns -1, or the first row whose record cannot be read this way (index out of range,
// shorter than a field, failed checksum): rows before it are copied, the rest are not, and the
// caller's general path names what is wrong. A table that points outside a source, or an out
// too small for n rows, throws BoundsError before anything is copied.
int64_t gather_records(const ByteSpan* sources, size_t n_sources, const RecordTable& table,
                       const int64_t* idx, size_t n, bool verify, const uint64_t* field_at,
                       const uint64_t* field_size, const MutByteSpan* out, size_t n_fields);

// Throws BoundsError when out[f] cannot hold n rows of field_size[f] bytes, for some f.
void check_out_rows(const uint64_t* field_size, const MutByteSpan* out, size_t n_fields, size_t n);

// gather_records of rows already placed (row i is places[i]): the same checks, copies and
// result, for a caller that found the records another way (records.h: from shards' indexes).
int64_t gather_placed(const ByteSpan* sources, size_t n_sources, const Place* places, size_t n,
                      bool verify, const uint64_t* field_at, const uint64_t* field_size,
                      const MutByteSpan* out, size_t n_fields);

}  // namespace fastload
