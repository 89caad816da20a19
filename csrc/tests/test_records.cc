// Records placed from shards' index bytes as stored (both layouts): the places are those the
// tables say, a damaged table is refused when the shard is added or places nothing outside
// its block, and a gather from placed rows copies the right bytes (checked by checksum).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "check.h"
#include "core/gather.h"
#include "core/records.h"
#include "core/xxh64.h"

namespace {

using fastload::BoundsError;
using fastload::ByteSpan;
using fastload::MutByteSpan;
using fastload::Place;
using fastload::PlaceIn;
using fastload::RecordMap;
using fastload::RecordPlace;
using fastload::ShardIndex;

template <class T>
void put(std::vector<uint8_t>& out, T value) {
  uint8_t bytes[sizeof value];
  std::memcpy(bytes, &value, sizeof value);
  out.insert(out.end(), bytes, bytes + sizeof value);
}

struct Block {
  uint64_t offset, stored_size, raw_size, first_record;
  uint32_t n_records;
  uint8_t codec;
};

// A block table as stored, at an odd address (tables lie wherever the index starts).
struct Bytes {
  std::vector<uint8_t> mem;
  ByteSpan span() const { return {mem.data() + 1, mem.size() - 1}; }
};

Bytes block_table(const std::vector<Block>& blocks) {
  Bytes t{{0}};
  for (const Block& b : blocks) {
    put(t.mem, b.offset);
    put(t.mem, b.stored_size);
    put(t.mem, b.raw_size);
    put(t.mem, b.first_record);
    put(t.mem, b.n_records);
    t.mem.push_back(b.codec);
    t.mem.insert(t.mem.end(), 3, 0);
    put(t.mem, uint64_t{0});  // the block's checksum: not the core's business
  }
  return t;
}

Bytes checksums(const std::vector<uint32_t>& values) {
  Bytes t{{0}};
  for (uint32_t v : values) put(t.mem, v);
  return t;
}

Bytes entries(const std::vector<RecordPlace>& records) {
  Bytes t{{0}};
  for (const RecordPlace& r : records) {
    put(t.mem, static_cast<uint32_t>(r.block));
    put(t.mem, static_cast<uint32_t>(r.offset));
    put(t.mem, static_cast<uint32_t>(r.length));
    put(t.mem, r.checksum);
  }
  return t;
}

// A fixed-layout shard: 7 records of 5 bytes (stride 8), 3 per block, blocks raw in a file.
struct FixedShard {
  std::vector<uint8_t> file;
  std::vector<uint32_t> sums;
  Bytes blocks, records;
  ShardIndex index;

  FixedShard() {
    file.assign(32, 0xEE);  // a header's worth
    std::vector<Block> table;
    for (uint32_t b = 0; b < 3; ++b) {
      const uint32_t count = b < 2 ? 3 : 1;
      const uint64_t raw = (count - 1) * 8 + 5;
      table.push_back({file.size(), raw, raw, b * 3u, count, 0});
      for (uint32_t k = 0; k < count; ++k) {
        const uint8_t first = static_cast<uint8_t>(10 * (b * 3 + k));
        const uint8_t rec[5] = {first, uint8_t(first + 1), uint8_t(first + 2), uint8_t(first + 3),
                                uint8_t(first + 4)};
        file.insert(file.end(), rec, rec + 5);
        sums.push_back(static_cast<uint32_t>(fastload::xxh64(rec, 5, 0)));
        if (k + 1 < count) file.insert(file.end(), 3, 0);  // padding to the stride
      }
    }
    blocks = block_table(table);
    records = checksums(sums);
    index = fastload::shard_index(blocks.span(), 3, records.span(), 7, true, 5);
  }
};

FL_TEST(fixed_layout_places_records_end_to_end) {
  FixedShard shard;
  CHECK_EQ(shard.index.per_block, uint64_t{3});
  CHECK_EQ(shard.index.stride, uint64_t{8});
  for (uint64_t r = 0; r < 7; ++r) {
    RecordPlace p;
    CHECK(fastload::place_record(shard.index, r, &p));
    CHECK_EQ(p.block, r / 3);
    CHECK_EQ(p.offset, (r % 3) * 8);
    CHECK_EQ(p.length, uint64_t{5});
    CHECK_EQ(p.checksum, shard.sums[r]);
  }
  RecordPlace p;
  CHECK(!fastload::place_record(shard.index, 7, &p));
  CHECK(!fastload::place_record(shard.index, std::numeric_limits<uint64_t>::max(), &p));
}

FL_TEST(full_layout_places_records_as_their_entries_say) {
  const Bytes blocks = block_table({{32, 40, 40, 0, 2, 0}, {72, 30, 100, 2, 1, 1}});
  const Bytes records = entries({{0, 0, 12, 7}, {0, 16, 24, 8}, {1, 96, 4, 9}});
  const ShardIndex index = fastload::shard_index(blocks.span(), 2, records.span(), 3, false, 0);
  RecordPlace p;
  CHECK(fastload::place_record(index, 1, &p));
  CHECK_EQ(p.block, uint64_t{0});
  CHECK_EQ(p.offset, uint64_t{16});
  CHECK_EQ(p.length, uint64_t{24});
  CHECK_EQ(p.checksum, uint32_t{8});
  CHECK(fastload::place_record(index, 2, &p));
  CHECK_EQ(p.block, uint64_t{1});
  CHECK(!fastload::place_record(index, 3, &p));
}

FL_TEST(full_layout_places_nothing_outside_its_block) {
  const Bytes blocks = block_table({{32, 40, 40, 0, 3, 0}});
  const Bytes records = entries({
      {1, 0, 4, 0},                 // a block past the table
      {0, 38, 4, 0},                // ends past the block's raw bytes
      {0, 0xFFFFFFFF, 0xFFFFFFFF, 0},  // wraps, if added carelessly
  });
  const ShardIndex index = fastload::shard_index(blocks.span(), 1, records.span(), 3, false, 0);
  RecordPlace p;
  for (uint64_t r = 0; r < 3; ++r) CHECK(!fastload::place_record(index, r, &p));
}

FL_TEST(counts_the_bytes_cannot_hold_are_refused) {
  FixedShard shard;
  const ByteSpan b = shard.blocks.span(), r = shard.records.span();
  const uint64_t huge = std::numeric_limits<uint64_t>::max() / 4 + 2;  // * 48 or * 4 wraps
  CHECK_THROWS(fastload::shard_index(b, 4, r, 7, true, 5), BoundsError);
  CHECK_THROWS(fastload::shard_index(b, huge, r, 7, true, 5), BoundsError);
  CHECK_THROWS(fastload::shard_index(b, 3, r, 8, true, 5), BoundsError);
  CHECK_THROWS(fastload::shard_index(b, 3, r, huge, true, 5), BoundsError);
  CHECK_THROWS(fastload::shard_index(b, 3, r, 2, false, 0), BoundsError);  // 28 bytes < 2 * 16
}

FL_TEST(fixed_layout_refuses_blocks_that_do_not_hold_its_records) {
  const auto refused = [](std::vector<Block> table, uint64_t n, uint64_t size) {
    const Bytes blocks = block_table(table);
    const Bytes records = checksums(std::vector<uint32_t>(n, 0));
    bool thrown = false;
    try {
      fastload::shard_index(blocks.span(), table.size(), records.span(), n, true, size);
    } catch (const BoundsError&) {
      thrown = true;
    }
    return thrown;
  };
  // accepted: 2 full blocks of 3 records of 5 bytes (21 raw bytes each), one of 1
  CHECK(!refused({{0, 21, 21, 0, 3, 0}, {0, 21, 21, 3, 3, 0}, {0, 5, 5, 6, 1, 0}}, 7, 5));
  CHECK(refused({{0, 21, 21, 0, 3, 0}, {0, 21, 21, 3, 2, 0}, {0, 13, 13, 5, 2, 0}}, 7, 5));
  CHECK(refused({{0, 21, 21, 0, 3, 0}, {0, 21, 21, 2, 3, 0}, {0, 5, 5, 6, 1, 0}}, 7, 5));
  CHECK(refused({{0, 21, 21, 0, 3, 0}, {0, 20, 20, 3, 3, 0}, {0, 5, 5, 6, 1, 0}}, 7, 5));
  CHECK(refused({{0, 21, 21, 0, 3, 0}, {0, 21, 21, 3, 3, 0}}, 7, 5));  // too few blocks
  CHECK(refused({{0, 21, 21, 0, 0, 0}}, 7, 5));                         // none per block
  CHECK(refused({{0, 0, 0, 0, 0, 0}}, 0, 5));                           // blocks, no records
  CHECK(refused({}, 3, 5));                                             // records, no blocks
  CHECK(refused({{0, 8, 8, 0, 1, 0}}, 1, (uint64_t{1} << 31) + 1));     // too large a record
  CHECK(!refused({}, 0, 5));                                            // an empty shard
}

FL_TEST(checksum_groups_cover_each_group_of_a_blocks_records) {
  FixedShard shard;
  // The same records, a checksum per 2 of a block's: (0 1) (2) | (3 4) (5) | (6).
  const uint64_t block_at[] = {32, 53, 74}, counts[] = {3, 3, 1};
  std::vector<uint32_t> sums;
  for (size_t b = 0; b < 3; ++b) {
    for (uint64_t first = 0; first < counts[b]; first += 2) {
      const uint64_t span = (std::min<uint64_t>(2, counts[b] - first) - 1) * 8 + 5;
      const uint8_t* at = shard.file.data() + block_at[b] + first * 8;
      sums.push_back(static_cast<uint32_t>(fastload::xxh64(at, span, 0)));
    }
  }
  const Bytes records = checksums(sums);
  const ShardIndex index =
      fastload::shard_index(shard.blocks.span(), 3, records.span(), 7, true, 5, 2);
  CHECK_EQ(index.groups_per_block, uint64_t{2});
  RecordPlace p;
  CHECK(fastload::place_record(index, 1, &p));
  CHECK_EQ(p.offset, uint64_t{8});
  CHECK_EQ(p.check_offset, uint64_t{0});
  CHECK_EQ(p.check_length, uint64_t{13});
  CHECK_EQ(p.checksum, sums[0]);
  CHECK(fastload::place_record(index, 5, &p));
  CHECK_EQ(p.block, uint64_t{1});
  CHECK_EQ(p.check_offset, uint64_t{16});
  CHECK_EQ(p.check_length, uint64_t{5});
  CHECK_EQ(p.checksum, sums[3]);
  CHECK(fastload::place_record(index, 6, &p));
  CHECK_EQ(p.checksum, sums[4]);

  // One checksum more or fewer than the groups, or no records per checksum: refused.
  const Bytes short_table = checksums({sums[0], sums[1], sums[2], sums[3]});
  CHECK_THROWS(fastload::shard_index(shard.blocks.span(), 3, short_table.span(), 7, true, 5, 2),
               BoundsError);
  CHECK_THROWS(fastload::shard_index(shard.blocks.span(), 3, records.span(), 7, true, 5, 0),
               BoundsError);
  CHECK_THROWS(fastload::shard_index(shard.blocks.span(), 3, records.span(), 7, false, 5, 2),
               BoundsError);

  // A gather checks each row's group: a flipped byte of record 1 fails record 0's row.
  RecordMap map({0, 7}, {0, 3});
  map.add(0, index);
  const int64_t idx[] = {6, 0};
  Place places[2];
  CHECK_EQ(fastload::place_rows(map, idx, 2, PlaceIn::kShardFiles, places), int64_t{-1});
  CHECK_EQ(places[1].check_offset, uint64_t{32});
  CHECK_EQ(places[1].check_length, uint64_t{13});
  const ByteSpan file{shard.file.data(), shard.file.size()};
  const uint64_t field_at[] = {0}, field_size[] = {5};
  std::vector<uint8_t> out(10, 0);
  const MutByteSpan outs[] = {{out.data(), out.size()}};
  CHECK_EQ(fastload::gather_placed(&file, 1, places, 2, true, field_at, field_size, outs, 1),
           int64_t{-1});
  CHECK_EQ(out[5], uint8_t{0});  // record 0's first byte
  shard.file[32 + 8 + 4] ^= 1;   // record 1's last byte
  CHECK_EQ(fastload::gather_placed(&file, 1, places, 2, true, field_at, field_size, outs, 1),
           int64_t{1});
  CHECK_EQ(fastload::gather_placed(&file, 1, places, 2, false, field_at, field_size, outs, 1),
           int64_t{-1});
}

FL_TEST(record_map_finds_dataset_records_in_added_shards) {
  FixedShard shard;
  // shards: 7 records (3 blocks), none, 7 records (3 blocks)
  RecordMap map({0, 7, 7, 14}, {0, 3, 3, 6});
  size_t s;
  uint64_t r;
  CHECK(!map.find(0, &s, &r));  // nothing added yet
  map.add(2, shard.index);
  CHECK(map.find(7, &s, &r));
  CHECK_EQ(s, size_t{2});
  CHECK_EQ(r, uint64_t{0});
  CHECK(map.find(13, &s, &r));
  CHECK_EQ(r, uint64_t{6});
  CHECK(!map.find(14, &s, &r));
  CHECK(!map.find(-1, &s, &r));
  CHECK(!map.find(3, &s, &r));
  CHECK_THROWS(map.add(2, shard.index), BoundsError);  // once
  CHECK_THROWS(map.add(1, shard.index), BoundsError);  // counts of another shard
  CHECK_THROWS(map.add(3, shard.index), BoundsError);
  CHECK_THROWS(RecordMap({0, 5, 3}, {0, 1, 2}), BoundsError);
  CHECK_THROWS(RecordMap({0, 5}, {0, 1, 2}), BoundsError);
  CHECK_THROWS(RecordMap({}, {}), BoundsError);

  const int64_t idx[] = {8, 0, 13, -1, 99, 11};
  int64_t out[6];
  fastload::block_numbers(map, idx, 6, out);
  const int64_t want[] = {3, -1, 5, -1, -1, 4};
  for (size_t i = 0; i < 6; ++i) CHECK_EQ(out[i], want[i]);
}

FL_TEST(rows_placed_in_shard_files_and_in_blocks_gather_the_right_bytes) {
  FixedShard shard;
  RecordMap map({0, 7}, {0, 3});
  map.add(0, shard.index);
  const int64_t idx[] = {6, 0, 4};
  Place places[3];
  CHECK_EQ(fastload::place_rows(map, idx, 3, PlaceIn::kShardFiles, places), int64_t{-1});
  const ByteSpan file{shard.file.data(), shard.file.size()};
  const uint64_t field_at[] = {1}, field_size[] = {3};
  std::vector<uint8_t> out(9, 0);
  const MutByteSpan outs[] = {{out.data(), out.size()}};
  CHECK_EQ(fastload::gather_placed(&file, 1, places, 3, true, field_at, field_size, outs, 1),
           int64_t{-1});
  const uint8_t want[] = {61, 62, 63, 1, 2, 3, 41, 42, 43};
  for (size_t i = 0; i < 9; ++i) CHECK_EQ(out[i], want[i]);

  // The same rows from the blocks' own bytes (as held decompressed): block numbers, offsets.
  CHECK_EQ(fastload::place_rows(map, idx, 3, PlaceIn::kBlocks, places), int64_t{-1});
  CHECK_EQ(places[0].source, uint64_t{2});
  CHECK_EQ(places[0].offset, uint64_t{0});
  CHECK_EQ(places[2].source, uint64_t{1});
  CHECK_EQ(places[2].offset, uint64_t{8});

  // A flipped byte fails its record's checksum: the row is reported.
  shard.file[shard.file.size() - 1] ^= 1;  // record 6, the last byte
  CHECK_EQ(fastload::place_rows(map, idx, 3, PlaceIn::kShardFiles, places), int64_t{-1});
  CHECK_EQ(fastload::gather_placed(&file, 1, places, 3, true, field_at, field_size, outs, 1),
           int64_t{0});
}

FL_TEST(place_rows_stops_at_the_first_row_it_cannot_place) {
  FixedShard shard;
  RecordMap map({0, 7, 14}, {0, 3, 6});
  map.add(0, shard.index);
  Place places[3];
  const int64_t past[] = {1, 2, 14};
  CHECK_EQ(fastload::place_rows(map, past, 3, PlaceIn::kBlocks, places), int64_t{2});
  const int64_t closed[] = {1, 8, 2};  // shard 1 not added
  CHECK_EQ(fastload::place_rows(map, closed, 3, PlaceIn::kBlocks, places), int64_t{1});

  // A compressed block's records are not in the file as they are.
  std::vector<Block> table = {{32, 21, 21, 0, 3, 1}};
  const Bytes blocks = block_table(table);
  const Bytes records = checksums({0, 0, 0});
  RecordMap zstd({0, 3}, {0, 1});
  zstd.add(0, fastload::shard_index(blocks.span(), 1, records.span(), 3, true, 5));
  const int64_t one[] = {1};
  CHECK_EQ(fastload::place_rows(zstd, one, 1, PlaceIn::kShardFiles, places), int64_t{0});
  CHECK_EQ(fastload::place_rows(zstd, one, 1, PlaceIn::kBlocks, places), int64_t{-1});
}

FL_TEST(gather_placed_refuses_places_outside_their_source) {
  const std::vector<uint8_t> a(16, 1);
  const ByteSpan source{a.data(), a.size()};
  const uint64_t field_at[] = {0}, field_size[] = {4};
  std::vector<uint8_t> out(8, 0);
  const MutByteSpan outs[] = {{out.data(), out.size()}};
  const Place outside[] = {{0, 0, 4, 0}, {0, 14, 4, 0}};
  CHECK_THROWS(fastload::gather_placed(&source, 1, outside, 2, false, field_at, field_size, outs, 1),
               BoundsError);
  const Place elsewhere[] = {{0, 0, 4, 0}, {1, 0, 4, 0}};
  CHECK_THROWS(
      fastload::gather_placed(&source, 1, elsewhere, 2, false, field_at, field_size, outs, 1),
      BoundsError);
  for (uint8_t v : out) CHECK_EQ(v, uint8_t{0});  // nothing copied
}

}  // namespace
