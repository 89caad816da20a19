// The gathers refuse every out-of-range index, offset or length before copying anything, and
// never write outside `out` (guard bytes around every buffer stay untouched).
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "core/gather.h"
#include "core/xxh64.h"

namespace {

using fastload::BoundsError;
using fastload::ByteSpan;
using fastload::MutByteSpan;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// A buffer of `size` bytes with 64 guard bytes on each side.
class Guarded {
 public:
  explicit Guarded(size_t size, uint8_t fill = 0) : mem_(size + 2 * kPad, kGuard) {
    for (size_t i = 0; i < size; ++i) mem_[kPad + i] = fill;
    size_ = size;
  }
  MutByteSpan span() { return {mem_.data() + kPad, size_}; }
  uint8_t* data() { return mem_.data() + kPad; }
  bool guards_intact() const {
    for (size_t i = 0; i < kPad; ++i) {
      if (mem_[i] != kGuard || mem_[kPad + size_ + i] != kGuard) return false;
    }
    return true;
  }
  bool all(uint8_t value) const {
    for (size_t i = 0; i < size_; ++i) {
      if (mem_[kPad + i] != value) return false;
    }
    return true;
  }

 private:
  static constexpr size_t kPad = 64;
  static constexpr uint8_t kGuard = 0xA5;
  std::vector<uint8_t> mem_;
  size_t size_;
};

std::vector<uint8_t> counting(size_t n, uint8_t start) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(start + i);
  return v;
}

FL_TEST(gather_copies_slices_in_order) {
  const auto a = counting(10, 0), b = counting(6, 100);
  const ByteSpan sources[] = {{a.data(), a.size()}, {b.data(), b.size()}};
  const uint32_t index[] = {1, 0, 0};
  const uint64_t offsets[] = {2, 7, 0};
  const uint64_t lengths[] = {4, 3, 0};
  const uint64_t out_offsets[] = {0, 4, 7};
  Guarded out(7);
  fastload::gather(sources, 2, index, offsets, lengths, out_offsets, 3, out.span());
  const uint8_t want[] = {102, 103, 104, 105, 7, 8, 9};
  for (size_t i = 0; i < 7; ++i) CHECK_EQ(out.data()[i], want[i]);
  CHECK(out.guards_intact());
}

FL_TEST(gather_refuses_bad_items_and_writes_nothing) {
  const auto a = counting(10, 1);
  const ByteSpan sources[] = {{a.data(), a.size()}};
  struct Bad {
    uint32_t index;
    uint64_t offset, length, out_offset;
  };
  const Bad bad[] = {
      {1, 0, 1, 0},          // source index past the sources
      {0, 0, 11, 0},         // longer than the source
      {0, 10, 1, 0},         // starts at the end
      {0, 11, 0, 0},         // starts past the end (even empty)
      {0, kMax, 2, 0},       // offset + length wraps around 2^64
      {0, 2, kMax - 1, 0},   // likewise
      {0, 0, 4, 5},          // past the end of out (8 bytes)
      {0, 0, 1, kMax},       // out offset wraps
      {0, 0, 0, 9},          // empty, but starts past the end of out
  };
  for (const Bad& b : bad) {
    const uint32_t index[] = {0, b.index};
    const uint64_t offsets[] = {0, b.offset};
    const uint64_t lengths[] = {2, b.length};
    const uint64_t out_offsets[] = {0, b.out_offset};
    Guarded out(8, 0xEE);
    CHECK_THROWS(fastload::gather(sources, 1, index, offsets, lengths, out_offsets, 2, out.span()),
                 BoundsError);
    CHECK(out.all(0xEE));  // item 0 was fine, but every item is checked before any copy
    CHECK(out.guards_intact());
  }
}

FL_TEST(gather_fixed_bounds) {
  const auto a = counting(20, 0);
  const ByteSpan source{a.data(), a.size()};
  const uint64_t offsets[] = {0, 16, 8};
  Guarded out(12);
  fastload::gather_fixed(source, offsets, 3, 4, out.span());
  const uint8_t want[] = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11};
  for (size_t i = 0; i < 12; ++i) CHECK_EQ(out.data()[i], want[i]);
  CHECK(out.guards_intact());

  Guarded small(11, 0xEE);  // one byte short of 3 x 4
  CHECK_THROWS(fastload::gather_fixed(source, offsets, 3, 4, small.span()), BoundsError);
  CHECK(small.all(0xEE) && small.guards_intact());

  const uint64_t past[] = {0, 17};  // 17 + 4 > 20
  Guarded out2(8, 0xEE);
  CHECK_THROWS(fastload::gather_fixed(source, past, 2, 4, out2.span()), BoundsError);
  CHECK(out2.all(0xEE) && out2.guards_intact());

  // n * size overflows 2^64: refused, not wrapped into a small number.
  const uint64_t zero[] = {0, 0};
  CHECK_THROWS(fastload::gather_fixed(source, zero, 2, kMax / 2 + 1, out2.span()), BoundsError);
  CHECK(out2.all(0xEE) && out2.guards_intact());
}

// Two records of 8 bytes in one source, with their checksums (low 32 bits of xxh64).
struct Records {
  std::vector<uint8_t> bytes = counting(16, 10);
  ByteSpan source{bytes.data(), bytes.size()};
  uint32_t source_of[2] = {0, 0};
  uint64_t offset[2] = {0, 8};
  uint64_t length[2] = {8, 8};
  uint32_t checksum[2];
  Records() {
    for (int r = 0; r < 2; ++r) {
      checksum[r] = static_cast<uint32_t>(fastload::xxh64(bytes.data() + offset[r], 8, 0));
    }
  }
  fastload::RecordTable table() const { return {source_of, offset, length, checksum, 2}; }
};

FL_TEST(gather_records_copies_fields_and_stops_at_a_bad_row) {
  Records rec;
  const uint64_t field_at[] = {2, 6};
  const uint64_t field_size[] = {4, 2};
  Guarded f0(3 * 4), f1(3 * 2);
  const MutByteSpan outs[] = {f0.span(), f1.span()};
  const int64_t idx[] = {1, 0, 1};
  CHECK_EQ(fastload::gather_records(&rec.source, 1, rec.table(), idx, 3, true, field_at,
                                    field_size, outs, 2),
           int64_t{-1});
  CHECK_EQ(f0.data()[0], uint8_t{20});  // record 1 starts at byte 8 (value 18); field at +2
  CHECK_EQ(f1.data()[2], uint8_t{16});  // row 1 = record 0, field at +6
  CHECK(f0.guards_intact() && f1.guards_intact());

  // An index out of range, a field past the record's end, a failed checksum: the first such
  // row is returned and nothing after it is written.
  const int64_t bad_index[] = {0, 2, 1};
  Guarded g0(12, 0xEE), g1(6, 0xEE);
  const MutByteSpan gouts[] = {g0.span(), g1.span()};
  CHECK_EQ(fastload::gather_records(&rec.source, 1, rec.table(), bad_index, 3, true, field_at,
                                    field_size, gouts, 2),
           int64_t{1});
  const int64_t negative[] = {-1};
  CHECK_EQ(fastload::gather_records(&rec.source, 1, rec.table(), negative, 1, true, field_at,
                                    field_size, gouts, 2),
           int64_t{0});
  const uint64_t too_far[] = {6};  // 6 + 4 > 8
  const uint64_t four[] = {4};
  CHECK_EQ(fastload::gather_records(&rec.source, 1, rec.table(), idx, 3, false, too_far, four,
                                    gouts, 1),
           int64_t{0});
  rec.checksum[0] ^= 1;
  Guarded h0(12, 0xEE), h1(6, 0xEE);
  const MutByteSpan houts[] = {h0.span(), h1.span()};
  CHECK_EQ(fastload::gather_records(&rec.source, 1, rec.table(), idx, 3, true, field_at,
                                    field_size, houts, 2),
           int64_t{1});
  CHECK(h0.data()[8] == 0xEE && h0.guards_intact() && h1.guards_intact());  // row 2 untouched
}

FL_TEST(gather_records_refuses_a_table_outside_its_source_or_a_small_out) {
  Records rec;
  const uint64_t field_at[] = {0};
  const uint64_t field_size[] = {4};
  const int64_t idx[] = {0, 1};
  Guarded f(8, 0xEE);
  const MutByteSpan outs[] = {f.span()};
  rec.offset[1] = 12;  // 12 + 8 > 16
  CHECK_THROWS(fastload::gather_records(&rec.source, 1, rec.table(), idx, 2, false, field_at,
                                        field_size, outs, 1),
               BoundsError);
  CHECK(f.all(0xEE) && f.guards_intact());
  rec.offset[1] = 8;
  rec.source_of[1] = 1;  // one source only
  CHECK_THROWS(fastload::gather_records(&rec.source, 1, rec.table(), idx, 2, false, field_at,
                                        field_size, outs, 1),
               BoundsError);
  rec.source_of[1] = 0;
  Guarded small(7, 0xEE);  // two rows of 4 need 8
  const MutByteSpan small_outs[] = {small.span()};
  CHECK_THROWS(fastload::gather_records(&rec.source, 1, rec.table(), idx, 2, false, field_at,
                                        field_size, small_outs, 1),
               BoundsError);
  CHECK(small.all(0xEE) && small.guards_intact());
}

}  // namespace
