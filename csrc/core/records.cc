#include "records.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace fastload {
namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the index is read in place: little-endian hosts only"
#endif

// The tables lie wherever the index starts in its file, so their fields are read with memcpy
// (one plain load on the hosts we build for), never through a misaligned pointer.
template <class T>
T load(const uint8_t* at) {
  T value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

[[noreturn]] void bad_index(const std::string& why) { throw BoundsError("shard index: " + why); }

std::string str(uint64_t v) { return std::to_string(v); }

// The fixed layout's promises about the block table (see ShardIndex), checked once.
void check_fixed_blocks(const ShardIndex& s) {
  if (s.n_records == 0) {
    if (s.n_blocks != 0) bad_index("blocks without records");
    return;
  }
  const uint64_t last = s.n_records - (s.n_blocks - 1) * s.per_block;
  for (uint64_t b = 0; b < s.n_blocks; ++b) {
    const BlockInfo info = s.block(b);
    const uint64_t count = b + 1 < s.n_blocks ? s.per_block : last;
    if (info.n_records != count || info.first_record != b * s.per_block) {
      bad_index("block " + str(b) + " holds records " + str(info.first_record) + " + " +
                str(info.n_records) + ", the fixed layout puts " + str(b * s.per_block) +
                " + " + str(count) + " there");
    }
    // (count - 1) * stride + record_size <= raw_size; count <= 2^32, stride <= 2^31 + 7.
    if ((count - 1) * s.stride > info.raw_size ||
        s.record_size > info.raw_size - (count - 1) * s.stride) {
      bad_index("block " + str(b) + " (" + str(info.raw_size) + " raw bytes) cannot hold " +
                str(count) + " records of " + str(s.record_size) + " bytes");
    }
  }
}

}  // namespace

BlockInfo ShardIndex::block(uint64_t b) const {
  const uint8_t* at = blocks.data + b * kBlockEntryBytes;
  return {load<uint64_t>(at),      load<uint64_t>(at + 8),  load<uint64_t>(at + 16),
          load<uint64_t>(at + 24), load<uint32_t>(at + 32), at[36]};
}

ShardIndex shard_index(ByteSpan blocks, uint64_t n_blocks, ByteSpan records, uint64_t n_records,
                       bool fixed, uint64_t record_size, uint64_t group) {
  // Counts are checked against the bytes by division: a product could wrap around 2^64.
  if (blocks.size / kBlockEntryBytes < n_blocks) {
    bad_index(str(n_blocks) + " blocks do not fit in " + str(blocks.size) + " bytes");
  }
  if (group == 0 || (group > 1 && !fixed)) bad_index("records per checksum: " + str(group));
  const uint64_t entry = fixed ? kChecksumBytes : kRecordEntryBytes;
  if (group == 1 && records.size / entry < n_records) {
    bad_index(str(n_records) + " records do not fit in " + str(records.size) + " bytes");
  }
  ShardIndex s;
  s.blocks = blocks;
  s.records = records;
  s.n_blocks = n_blocks;
  s.n_records = n_records;
  s.fixed = fixed;
  if (!fixed) return s;
  if (record_size > kMaxRecordBytes) {
    bad_index("records of " + str(record_size) + " bytes (at most " + str(kMaxRecordBytes) + ")");
  }
  s.record_size = record_size;
  s.stride = (record_size + kRecordAlign - 1) / kRecordAlign * kRecordAlign;
  if (n_records != 0) {
    if (n_blocks == 0) bad_index("records without blocks");
    s.per_block = s.block(0).n_records;
    // Every block but the last is full, the last holds 1..per_block records.
    if (s.per_block == 0 || (n_records - 1) / s.per_block + 1 != n_blocks) {
      bad_index(str(n_records) + " records do not fill " + str(n_blocks) + " blocks of " +
                str(s.per_block));
    }
  }
  check_fixed_blocks(s);
  s.group = group;
  s.groups_per_block = (s.per_block + group - 1) / group;
  if (group > 1 && n_records != 0) {
    const uint64_t last = n_records - (n_blocks - 1) * s.per_block;
    const uint64_t groups = (n_blocks - 1) * s.groups_per_block + (last + group - 1) / group;
    if (records.size / kChecksumBytes != groups) {
      bad_index(str(groups) + " checksums of groups of " + str(group) + " records do not fit " +
                str(records.size) + " bytes");
    }
  }
  return s;
}

bool place_record(const ShardIndex& s, uint64_t r, RecordPlace* out) {
  if (r >= s.n_records) return false;
  RecordPlace p;
  if (s.fixed) {
    p.block = r / s.per_block;
    const uint64_t k = r % s.per_block;
    p.offset = k * s.stride;
    p.length = s.record_size;
    if (s.group == 1) {
      p.checksum = load<uint32_t>(s.records.data + r * kChecksumBytes);
    } else {
      const uint64_t first = k / s.group * s.group;  // the group's first record in the block
      const uint64_t in_block = p.block + 1 < s.n_blocks
                                    ? s.per_block
                                    : s.n_records - (s.n_blocks - 1) * s.per_block;
      const uint64_t count = std::min(s.group, in_block - first);
      p.check_offset = first * s.stride;
      p.check_length = (count - 1) * s.stride + s.record_size;
      const uint64_t g = p.block * s.groups_per_block + k / s.group;
      p.checksum = load<uint32_t>(s.records.data + g * kChecksumBytes);
    }
  } else {
    const uint8_t* at = s.records.data + r * kRecordEntryBytes;
    p.block = load<uint32_t>(at);
    p.offset = load<uint32_t>(at + 4);
    p.length = load<uint32_t>(at + 8);
    p.checksum = load<uint32_t>(at + 12);
  }
  if (p.block >= s.n_blocks || !in_bounds(p.offset, p.length, s.block(p.block).raw_size) ||
      !in_bounds(p.check_offset, p.check_length, s.block(p.block).raw_size)) {
    return false;
  }
  *out = p;
  return true;
}

RecordMap::RecordMap(std::vector<uint64_t> starts, std::vector<uint64_t> block_base)
    : starts_(std::move(starts)), block_base_(std::move(block_base)) {
  if (starts_.empty() || starts_.size() != block_base_.size() || starts_[0] != 0 ||
      block_base_[0] != 0 || !std::is_sorted(starts_.begin(), starts_.end()) ||
      !std::is_sorted(block_base_.begin(), block_base_.end())) {
    throw BoundsError(
        "starts and block_base must be equally long, non-decreasing, and start at 0");
  }
  shards_.resize(starts_.size() - 1);
  added_.reset(new std::atomic<bool>[shards_.size()]);
  for (size_t s = 0; s < shards_.size(); ++s) added_[s].store(false);
}

void RecordMap::add(size_t s, const ShardIndex& shard) {
  if (s >= shards_.size()) {
    throw BoundsError("shard " + str(s) + " is out of range (" + str(shards_.size()) + " shards)");
  }
  if (added(s)) throw BoundsError("shard " + str(s) + " was added already");
  if (shard.n_records != starts_[s + 1] - starts_[s] ||
      shard.n_blocks != block_base_[s + 1] - block_base_[s]) {
    throw BoundsError("shard " + str(s) + " has " + str(shard.n_records) + " records in " +
                      str(shard.n_blocks) + " blocks, the dataset expects " +
                      str(starts_[s + 1] - starts_[s]) + " in " +
                      str(block_base_[s + 1] - block_base_[s]));
  }
  shards_[s] = shard;
  added_[s].store(true, std::memory_order_release);  // readers see the slot whole
}

bool RecordMap::added(size_t s) const {
  return s < shards_.size() && added_[s].load(std::memory_order_acquire);
}

bool RecordMap::find(int64_t i, size_t* s, uint64_t* r) const {
  if (i < 0 || static_cast<uint64_t>(i) >= n_records()) return false;
  const uint64_t at = static_cast<uint64_t>(i);
  // The last start <= i: empty shards share their start with the next one.
  const size_t shard = static_cast<size_t>(
      std::upper_bound(starts_.begin(), starts_.end(), at) - starts_.begin() - 1);
  if (!added(shard)) return false;
  *s = shard;
  *r = at - starts_[shard];
  return true;
}

void block_numbers(const RecordMap& map, const int64_t* idx, size_t n, int64_t* out) {
  for (size_t i = 0; i < n; ++i) {
    size_t s;
    uint64_t r;
    RecordPlace p;
    out[i] = map.find(idx[i], &s, &r) && place_record(map.shard(s), r, &p)
                 ? static_cast<int64_t>(map.block_base(s) + p.block)
                 : -1;
  }
}

int64_t place_rows(const RecordMap& map, const int64_t* idx, size_t n, PlaceIn where,
                   Place* out) {
  for (size_t i = 0; i < n; ++i) {
    size_t s;
    uint64_t r;
    RecordPlace p;
    if (!map.find(idx[i], &s, &r) || !place_record(map.shard(s), r, &p)) {
      return static_cast<int64_t>(i);
    }
    if (where == PlaceIn::kBlocks) {
      out[i] = {map.block_base(s) + p.block, p.offset, p.length, p.checksum, p.check_offset,
                p.check_length};
      continue;
    }
    const BlockInfo block = map.shard(s).block(p.block);
    if (block.codec != kCodecNone || !in_bounds(p.offset, p.length, block.stored_size) ||
        !in_bounds(p.check_offset, p.check_length, block.stored_size) ||
        block.offset > UINT64_MAX - p.offset || block.offset > UINT64_MAX - p.check_offset) {
      return static_cast<int64_t>(i);
    }
    out[i] = {s, block.offset + p.offset, p.length, p.checksum, block.offset + p.check_offset,
              p.check_length};
  }
  return -1;
}

}  // namespace fastload
