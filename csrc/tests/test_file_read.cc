// Records read from a real temporary file with pread: straight into a row or through a joined
// run, the same bytes a copy from memory gives; a bad checksum, a file not open, a record past
// the end of the file and a field past the end of its record each stop at their row; bad
// arguments throw before anything is read.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "core/file_read.h"
#include "core/xxh64.h"

namespace {

using fastload::BoundsError;
using fastload::MutByteSpan;
using fastload::Place;

constexpr uint64_t kRecord = 40;  // bytes a record
constexpr uint64_t kStride = 48;  // where records lie in the file (8 bytes of padding between)

uint8_t byte_of(uint64_t r, uint64_t k) { return static_cast<uint8_t>(r * 31 + k * 7 + 1); }

// A file of n records at kStride, after 32 bytes of header; removed when done.
struct TempFile {
  std::string path;
  int fd = -1;
  std::vector<uint8_t> bytes;

  explicit TempFile(uint64_t n) {
    char name[] = "/tmp/fastload-file-read-XXXXXX";
    fd = mkstemp(name);
    path = name;
    bytes.assign(32 + n * kStride, 0xEE);
    for (uint64_t r = 0; r < n; ++r) {
      for (uint64_t k = 0; k < kRecord; ++k) bytes[32 + r * kStride + k] = byte_of(r, k);
    }
    CHECK_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }
  ~TempFile() {
    close(fd);
    unlink(path.c_str());
  }

  Place place(uint64_t r, uint64_t length = kRecord) const {
    const uint8_t* at = bytes.data() + 32 + r * kStride;
    return {0, 32 + r * kStride, length, static_cast<uint32_t>(fastload::xxh64(at, length, 0))};
  }
};

bool row_is(const std::vector<uint8_t>& out, size_t row, uint64_t r, uint64_t at, uint64_t size) {
  for (uint64_t k = 0; k < size; ++k) {
    if (out[row * size + k] != byte_of(r, at + k)) return false;
  }
  return true;
}

// read_placed of `places`, whole records into `out` (a row each), checked.
int64_t read_whole(const TempFile& file, const std::vector<Place>& places,
                   std::vector<uint8_t>& out) {
  const uint64_t at = 0, size = kRecord;
  const MutByteSpan spans[] = {{out.data(), out.size()}};
  return fastload::read_placed(&file.fd, 1, places.data(), places.size(), true, &at, &size,
                               spans, 1);
}

FL_TEST(whole_records_are_read_in_any_order) {
  TempFile file(100);
  const std::vector<uint64_t> records = {97, 3, 50, 4, 0, 99};  // apart: a pread each
  std::vector<Place> places;
  for (uint64_t r : records) places.push_back(file.place(r));
  std::vector<uint8_t> out(records.size() * kRecord);
  CHECK_EQ(read_whole(file, places, out), int64_t{-1});
  for (size_t i = 0; i < records.size(); ++i) CHECK(row_is(out, i, records[i], 0, kRecord));
}

FL_TEST(neighbouring_records_are_read_as_one_run_with_their_fields) {
  TempFile file(20000);  // ~1 MB: runs end at kReadRunBytes
  std::vector<Place> places;
  for (uint64_t r = 10; r < 10010; ++r) places.push_back(file.place(r));
  places.push_back(file.place(5));  // back to an earlier one: a new run
  const size_t n = places.size();
  std::vector<uint8_t> a(n * 8), b(n * 16);
  const uint64_t at[] = {0, 20}, size[] = {8, 16};
  const MutByteSpan spans[] = {{a.data(), a.size()}, {b.data(), b.size()}};
  CHECK_EQ(fastload::read_placed(&file.fd, 1, places.data(), n, true, at, size, spans, 2),
           int64_t{-1});
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = i + 1 < n ? 10 + i : 5;
    CHECK(row_is(a, i, r, 0, 8));
    CHECK(row_is(b, i, r, 20, 16));
  }
}

FL_TEST(reads_stop_at_the_first_row_that_cannot_be_read) {
  TempFile file(10);
  const uint64_t at = 0, size = kRecord;
  std::vector<uint8_t> out(4 * kRecord);
  const MutByteSpan spans[] = {{out.data(), out.size()}};
  auto read = [&](std::vector<Place> places, const int* fds, size_t n_fds, bool verify) {
    return fastload::read_placed(fds, n_fds, places.data(), places.size(), verify, &at, &size,
                                 spans, 1);
  };
  Place bad = file.place(7);
  bad.checksum ^= 1;
  CHECK_EQ(read({file.place(1), file.place(4), bad, file.place(2)}, &file.fd, 1, true),
           int64_t{2});
  CHECK(row_is(out, 0, 1, 0, kRecord) && row_is(out, 1, 4, 0, kRecord));
  CHECK_EQ(read({file.place(1), bad}, &file.fd, 1, false), int64_t{-1});  // not checked
  // Joined into one run with its neighbours, the bad record still stops at its own row.
  CHECK_EQ(read({file.place(6), bad, file.place(8)}, &file.fd, 1, true), int64_t{1});

  Place past_end = file.place(9);
  past_end.offset += kStride;  // the file ends before it: a short read
  CHECK_EQ(read({file.place(0), past_end}, &file.fd, 1, true), int64_t{1});

  const int fds[] = {file.fd, -1};  // shard 1 not open
  Place other = file.place(3);
  other.source = 1;
  CHECK_EQ(read({file.place(0), other}, fds, 2, true), int64_t{1});

  // A record shorter than the field: its row (before any read of it).
  CHECK_EQ(read({file.place(0), file.place(3, kRecord - 1)}, &file.fd, 1, true), int64_t{1});
}

FL_TEST(records_sharing_a_checksum_are_read_and_checked_with_their_group) {
  TempFile file(12);
  // Records in groups of 3 (their bytes from the first's start to the last's end).
  auto grouped = [&](uint64_t r) {
    const uint64_t first = r / 3 * 3, span = 2 * kStride + kRecord;
    Place p = file.place(r);
    p.check_offset = 32 + first * kStride;
    p.check_length = span;
    p.checksum =
        static_cast<uint32_t>(fastload::xxh64(file.bytes.data() + p.check_offset, span, 0));
    return p;
  };
  const std::vector<uint64_t> records = {10, 0, 1, 2, 7};
  std::vector<Place> places;
  for (uint64_t r : records) places.push_back(grouped(r));
  std::vector<uint8_t> out(records.size() * kRecord);
  CHECK_EQ(read_whole(file, places, out), int64_t{-1});
  for (size_t i = 0; i < records.size(); ++i) CHECK(row_is(out, i, records[i], 0, kRecord));
  // Damage to record 11 fails record 10's row: they share a checksum.
  const uint8_t flipped = static_cast<uint8_t>(byte_of(11, 3) ^ 1);
  CHECK_EQ(pwrite(file.fd, &flipped, 1, 32 + 11 * kStride + 3), ssize_t{1});
  CHECK_EQ(read_whole(file, places, out), int64_t{0});
  const std::vector<Place> others(places.begin() + 1, places.end());  // 0, 1, 2 and 7
  CHECK_EQ(read_whole(file, others, out), int64_t{-1});
}

FL_TEST(bad_arguments_throw_before_reading) {
  TempFile file(10);
  const uint64_t at = 0, size = kRecord;
  std::vector<uint8_t> out(2 * kRecord, 0xAB);
  const MutByteSpan small[] = {{out.data(), out.size() - 1}};
  std::vector<Place> places = {file.place(0), file.place(1)};
  CHECK_THROWS(fastload::read_placed(&file.fd, 1, places.data(), 2, true, &at, &size, small, 1),
               BoundsError);
  const MutByteSpan spans[] = {{out.data(), out.size()}};
  places[1].source = 1;  // one file only
  CHECK_THROWS(fastload::read_placed(&file.fd, 1, places.data(), 2, true, &at, &size, spans, 1),
               BoundsError);
  CHECK_EQ(out[0], uint8_t{0xAB});
}

}  // namespace
