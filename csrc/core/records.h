// Where a dataset's records lie, read in place from its shards' own index bytes (the layout of
// docs/format.md, "Index"), so that nothing per record is copied into a process: a gather
// finds record i from the index where it is mapped. No Python.
//
// The index bytes are untrusted here as everywhere: every count is checked against the bytes
// that hold it when a shard is added, and every place computed from them is checked against
// its block before it is used, so a damaged table places no record outside its block.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "bounds.h"
#include "gather.h"

namespace fastload {

// The format's sizes (format/spec.py).
constexpr uint64_t kBlockEntryBytes = 48;
constexpr uint64_t kRecordEntryBytes = 16;
constexpr uint64_t kChecksumBytes = 4;
constexpr uint64_t kRecordAlign = 8;
constexpr uint64_t kMaxRecordBytes = uint64_t{1} << 31;  // no block is larger, raw
constexpr uint8_t kCodecNone = 0;

// One entry of a block table, as the core needs it.
struct BlockInfo {
  uint64_t offset;       // of its stored bytes, from the start of the shard file
  uint64_t stored_size;  // bytes on disk
  uint64_t raw_size;     // after decompression
  uint64_t first_record;
  uint32_t n_records;
  uint8_t codec;
};

// A shard's index as stored: the block table (48-byte entries) and the record table, either
// one 16-byte entry per record (block, offset, length, checksum: u32 each) or, for a shard
// of fixed-size records, one u32 checksum per record, its block, offset and length computed
// from the block table: record r is record r % per_block of block r / per_block, at
// (r % per_block) * stride in the block's raw bytes, where stride is record_size rounded up
// to 8 and every block but the last holds per_block records.
//
// Small fixed-size records may share checksums (group > 1): the records of each block, from
// its first, in groups of `group` (the block's last group may hold fewer), one u32 checksum
// per group over the group's bytes, from its first record's start to its last one's end.
// Block b's groups are checksums b * groups_per_block on.
struct ShardIndex {
  ByteSpan blocks{nullptr, 0};
  ByteSpan records{nullptr, 0};
  uint64_t n_blocks = 0;
  uint64_t n_records = 0;
  bool fixed = false;
  uint64_t record_size = 0;  // fixed layout only, as are the four below
  uint64_t stride = 0;
  uint64_t per_block = 0;
  uint64_t group = 1;  // records per checksum
  uint64_t groups_per_block = 0;

  BlockInfo block(uint64_t b) const;  // b < n_blocks (the caller's check)
};

// The index of a shard from its block table and record table bytes (`group`: records per
// checksum, fixed layout only). Throws BoundsError when the bytes do not hold `n_blocks` and
// `n_records` entries (or their groups' checksums), or, for the fixed layout, the blocks do
// not hold the records as it lays them out (counts, first records, raw sizes).
ShardIndex shard_index(ByteSpan blocks, uint64_t n_blocks, ByteSpan records, uint64_t n_records,
                       bool fixed, uint64_t record_size, uint64_t group = 1);

// Record r of a shard: its block, where it starts in the block's raw bytes, its length and
// its checksum (the low 32 bits of the xxh64 of its bytes, or of its group's: check_offset
// and check_length in the block's raw bytes; 0 for a record checked alone).
struct RecordPlace {
  uint64_t block;
  uint64_t offset;
  uint64_t length;
  uint32_t checksum;
  uint64_t check_offset = 0;
  uint64_t check_length = 0;
};

// Where record r lies; false when r is out of range or the table places it outside its
// block (an index the reader did not check).
bool place_record(const ShardIndex& shard, uint64_t r, RecordPlace* out);

// The records of a dataset, shard after shard: dataset record i is record i - starts[s] of
// shard s, for starts[s] <= i < starts[s + 1]; the blocks of shard s are numbered dataset-wide
// from block_base[s]. Shards are added as a process opens them, each once; a shard not added
// places none of its records. Adding one while another thread reads the map is safe: a slot
// is filled before it is published, and never changed after.
class RecordMap {
 public:
  // starts and block_base: n_shards + 1 non-decreasing entries each, from 0.
  RecordMap(std::vector<uint64_t> starts, std::vector<uint64_t> block_base);

  size_t n_shards() const { return shards_.size(); }
  uint64_t n_records() const { return starts_.back(); }
  uint64_t n_blocks() const { return block_base_.back(); }

  // Publishes shard s. Throws BoundsError if s is out of range, added already, or its counts
  // are not those of starts and block_base.
  void add(size_t s, const ShardIndex& shard);
  bool added(size_t s) const;

  // The shard of dataset record i and the record's index in it; false when i is out of range
  // or its shard is not added.
  bool find(int64_t i, size_t* s, uint64_t* r) const;
  const ShardIndex& shard(size_t s) const { return shards_[s]; }
  uint64_t block_base(size_t s) const { return block_base_[s]; }

 private:
  std::vector<uint64_t> starts_;
  std::vector<uint64_t> block_base_;
  std::vector<ShardIndex> shards_;
  std::unique_ptr<std::atomic<bool>[]> added_;
};

// The dataset-wide number of the block holding each of dataset records idx[0..n), or -1 where
// it is not known here (an index out of range, a shard not added).
void block_numbers(const RecordMap& map, const int64_t* idx, size_t n, int64_t* out);

enum class PlaceIn {
  // source = the shard's number, offset from the start of its file: records of blocks stored
  // raw only (a record of a compressed block is not in the file as it is).
  kShardFiles,
  // source = the dataset-wide number of the record's block, offset in its raw bytes.
  kBlocks,
};

// Places rows idx[0..n) (dataset records). Returns -1, or the first row that cannot be placed
// (an index out of range, a shard not added, a record of a compressed block in kShardFiles).
int64_t place_rows(const RecordMap& map, const int64_t* idx, size_t n, PlaceIn where,
                   Place* out);

}  // namespace fastload
