// Bindings: RecordMap, a dataset's records placed from its shards' index bytes in place.
#include <deque>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "../core/file_read.h"
#include "../core/records.h"
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>

#include "common.h"

namespace fastload::bind {
namespace {

using I64Array = nb::ndarray<nb::numpy, int64_t, nb::ndim<1>>;
using U64Array = nb::ndarray<nb::numpy, uint64_t, nb::ndim<1>>;
using U32Array = nb::ndarray<nb::numpy, uint32_t, nb::ndim<1>>;

// An owned array of `count` items for numpy (count may be 0).
template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> new_array(size_t count, T** data) {
  T* out = new T[count > 0 ? count : 1];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  *data = out;
  return nb::ndarray<nb::numpy, T, nb::ndim<1>>(out, {count}, owner);
}

std::vector<uint64_t> offsets_of(Array<int64_t> values, const char* what) {
  std::vector<uint64_t> out(values.shape(0));
  for (size_t i = 0; i < out.size(); ++i) {
    if (values.data()[i] < 0) throw nb::value_error((std::string(what) + " must be >= 0").c_str());
    out[i] = static_cast<uint64_t>(values.data()[i]);
  }
  return out;
}

// A RecordMap that holds the buffers its shards' tables lie in for as long as it lives (a
// mapped shard stays mapped while a view of it is exported).
class PyRecordMap {
 public:
  PyRecordMap(Array<int64_t> starts, Array<int64_t> block_base)
      : map_(offsets_of(starts, "starts"), offsets_of(block_base, "block_base")) {}

  void add(size_t s, nb::handle blocks, nb::handle records, uint64_t n_blocks, uint64_t n_records,
           std::optional<uint64_t> record_size, uint64_t group) {
    auto b = std::make_unique<Buffer>(blocks, false, "blocks");
    auto r = std::make_unique<Buffer>(records, false, "records");
    const ShardIndex index = shard_index(b->span(), n_blocks, r->span(), n_records,
                                         record_size.has_value(), record_size.value_or(0), group);
    map_.add(s, index);
    held_.push_back(std::move(b));
    held_.push_back(std::move(r));
  }

  bool added(size_t s) const { return map_.added(s); }

  I64Array block_numbers(Array<int64_t> indices) const {
    const size_t n = indices.shape(0);
    int64_t* out;
    I64Array result = new_array<int64_t>(n, &out);
    MaybeReleaseGil nogil(n >= kReleaseItems);
    fastload::block_numbers(map_, indices.data(), n, out);
    return result;
  }

  // place_rows into new arrays: (first row not placed or -1, sources, offsets, lengths,
  // checked offsets, checked lengths, checksums); rows from the first not placed on are zero.
  std::tuple<int64_t, U64Array, U64Array, U64Array, U64Array, U64Array, U32Array> places(
      Array<int64_t> indices, bool in_blocks) const {
    const size_t n = indices.shape(0);
    uint64_t *source, *offset, *length, *check_offset, *check_length;
    uint32_t* checksum;
    U64Array sources = new_array<uint64_t>(n, &source), offsets = new_array<uint64_t>(n, &offset),
             lengths = new_array<uint64_t>(n, &length),
             check_offsets = new_array<uint64_t>(n, &check_offset),
             check_lengths = new_array<uint64_t>(n, &check_length);
    U32Array checksums = new_array<uint32_t>(n, &checksum);
    std::vector<Place> placed(n);
    const int64_t stop = place_rows(map_, indices.data(), n,
                                    in_blocks ? PlaceIn::kBlocks : PlaceIn::kShardFiles,
                                    placed.data());
    const size_t rows = stop < 0 ? n : static_cast<size_t>(stop);
    for (size_t i = 0; i < n; ++i) {
      const Place p = i < rows ? placed[i] : Place{0, 0, 0, 0};
      source[i] = p.source;
      offset[i] = p.offset;
      length[i] = p.length;
      check_offset[i] = i < rows ? p.checked_at() : 0;
      check_length[i] = i < rows ? p.checked_length() : 0;
      checksum[i] = p.checksum;
    }
    return {stop, sources, offsets, lengths, check_offsets, check_lengths, checksums};
  }

  int64_t gather(nb::sequence sources, Array<int64_t> indices, bool verify,
                 Array<uint64_t> field_at, Array<uint64_t> field_size, nb::sequence outs,
                 bool in_blocks) const {
    const size_t n = indices.shape(0), n_fields = field_at.shape(0);
    check_same_length("field_size", field_size.shape(0), "field_at", n_fields);
    check_same_length("outs", nb::len(outs), "field_at", n_fields);
    std::vector<Place> places(n);
    const int64_t stop = place_rows(map_, indices.data(), n,
                                    in_blocks ? PlaceIn::kBlocks : PlaceIn::kShardFiles,
                                    places.data());
    if (stop >= 0) return stop;
    // Only the sources this batch reads are acquired (a dataset may have thousands of shards
    // or blocks), with the GIL held; deque never moves its elements.
    const size_t n_sources = nb::len(sources);
    std::vector<ByteSpan> spans(n_sources, ByteSpan{nullptr, 0});
    std::vector<bool> acquired(n_sources, false);
    std::deque<Buffer> held;
    for (const Place& p : places) {
      if (p.source < n_sources && !acquired[p.source]) {
        const std::string what = "sources[" + std::to_string(p.source) + "]";
        spans[p.source] = held.emplace_back(sources[p.source], false, what.c_str()).span();
        acquired[p.source] = true;
      }
    }
    std::deque<Buffer> out_held;
    std::vector<MutByteSpan> out_spans;
    uint64_t row_bytes = 0;
    for (size_t f = 0; f < n_fields; ++f) {
      const std::string what = "outs[" + std::to_string(f) + "]";
      out_spans.push_back(out_held.emplace_back(outs[f], true, what.c_str()).mut_span());
      row_bytes += field_size.data()[f];
    }
    MaybeReleaseGil nogil(n >= kReleaseItems || (n != 0 && row_bytes >= kReleaseBytes / n));
    return gather_placed(spans.data(), n_sources, places.data(), n, verify, field_at.data(),
                         field_size.data(), out_spans.data(), n_fields);
  }

  // gather of records of raw blocks read from the shards' open files (fds[s] for shard s, -1
  // where not open) with pread instead of from maps.
  int64_t read(Array<int32_t> fds, Array<int64_t> indices, bool verify, Array<uint64_t> field_at,
               Array<uint64_t> field_size, nb::sequence outs) const {
    const size_t n = indices.shape(0), n_fields = field_at.shape(0);
    check_same_length("field_size", field_size.shape(0), "field_at", n_fields);
    check_same_length("outs", nb::len(outs), "field_at", n_fields);
    std::vector<Place> places(n);
    const int64_t stop =
        place_rows(map_, indices.data(), n, PlaceIn::kShardFiles, places.data());
    if (stop >= 0) return stop;
    std::deque<Buffer> out_held;
    std::vector<MutByteSpan> out_spans;
    for (size_t f = 0; f < n_fields; ++f) {
      const std::string what = "outs[" + std::to_string(f) + "]";
      out_spans.push_back(out_held.emplace_back(outs[f], true, what.c_str()).mut_span());
    }
    // Always without the GIL: a read may wait on the disk.
    nb::gil_scoped_release nogil;
    return read_placed(fds.data(), fds.shape(0), places.data(), n, verify, field_at.data(),
                       field_size.data(), out_spans.data(), n_fields);
  }

 private:
  RecordMap map_;
  std::vector<std::unique_ptr<Buffer>> held_;
};

}  // namespace

void register_records(nb::module_& m) {
  nb::class_<PyRecordMap>(
      m, "RecordMap",
      "Where the records of a dataset lie, read from its shards' index bytes in place.\n\n"
      "Dataset record i is record ``i - starts[s]`` of shard s, for ``starts[s] <= i <\n"
      "starts[s + 1]``; the blocks of shard s are numbered dataset-wide from ``block_base[s]``.\n"
      "Shards are added as they are opened; nothing per record is copied (a shard's tables are\n"
      "held, as buffers, for as long as the map lives). Safe to read from several threads while\n"
      "shards are added.")
      .def(nb::init<Array<int64_t>, Array<int64_t>>(), nb::arg("starts").noconvert(),
           nb::arg("block_base").noconvert(),
           "``starts`` and ``block_base``: int64 arrays of n_shards + 1 entries, non-decreasing\n"
           "from 0. Raises ValueError otherwise.")
      .def("add", &PyRecordMap::add, nb::arg("shard"), nb::arg("blocks"), nb::arg("records"),
           nb::arg("n_blocks"), nb::arg("n_records"), nb::arg("record_size").none(),
           nb::arg("group") = 1,
           "Add shard ``shard``: ``blocks``, its block table's bytes (48 per block);\n"
           "``records``, its record table's bytes: 16 per record, or, with ``record_size`` (the\n"
           "fixed layout), the records' checksums (4 bytes each), one per ``group`` records of\n"
           "a block where ``group`` > 1.\n\n"
           "Raises ValueError when the bytes do not hold the counts, the counts are not the\n"
           "shard's in the map, the shard was added already, or (fixed layout) the blocks do\n"
           "not hold the records as that layout lays them out.")
      .def("added", &PyRecordMap::added, nb::arg("shard"), "Whether shard ``shard`` was added.")
      .def("block_numbers", &PyRecordMap::block_numbers, nb::arg("indices").noconvert(),
           "The dataset-wide block number of each of dataset records ``indices`` (int64), or\n"
           "-1 where it is not known here (out of range, its shard not added).")
      .def("places", &PyRecordMap::places, nb::arg("indices").noconvert(), nb::arg("in_blocks"),
           "Where dataset records ``indices`` lie: ``(stop, sources, offsets, lengths,\n"
           "check_offsets, check_lengths, checksums)``, as :meth:`gather` would read them\n"
           "(``in_blocks``: sources are dataset-wide block numbers and offsets in their raw\n"
           "bytes; else shard numbers and offsets in their files, raw blocks only). A checksum\n"
           "covers ``source[check_offset : +check_length]``: the record, or its group. ``stop``\n"
           "is -1, or the first row that cannot be placed (index out of range, its shard not\n"
           "added, a compressed block's record in a file); that row and the ones after it are\n"
           "zero.")
      .def("gather", &PyRecordMap::gather, nb::arg("sources"), nb::arg("indices").noconvert(),
           nb::arg("verify"), nb::arg("field_at").noconvert(), nb::arg("field_size").noconvert(),
           nb::arg("outs"), nb::arg("in_blocks"),
           "``gather_records`` of dataset records ``indices``, placed from the shards' tables.\n\n"
           "``in_blocks`` False: ``sources[s]`` is shard s's whole file, and only records of\n"
           "blocks stored raw are read; True: ``sources[g]`` is the raw bytes of the dataset's\n"
           "block g. Only the sources the batch reads are acquired.\n\n"
           "Returns -1, or the first row that cannot be read this way (index out of range, its\n"
           "shard not added, a compressed block's record from a file, shorter than a field,\n"
           "failed checksum; earlier rows may be copied). Raises ValueError for a record outside\n"
           "its source or an out too small for the rows, TypeError for a source that is not a\n"
           "buffer (a block not at hand, say).")
      .def("read", &PyRecordMap::read, nb::arg("fds").noconvert(), nb::arg("indices").noconvert(),
           nb::arg("verify"), nb::arg("field_at").noconvert(), nb::arg("field_size").noconvert(),
           nb::arg("outs"),
           ":meth:`gather` of records of raw blocks, read from the shards' files with pread\n"
           "instead of from maps: ``fds[s]`` (int32) is an open descriptor of shard s's file, or\n"
           "-1. Reads of neighbouring records (an unshuffled batch) are joined into one. The GIL\n"
           "is released.\n\n"
           "Returns -1, or the first row not read (index out of range, its shard not added or\n"
           "its file not open, a compressed block's record, the file ending before the record,\n"
           "a read error, shorter than a field, failed checksum; earlier rows are read). Raises\n"
           "ValueError for a shard outside ``fds`` or an out too small for the rows.");
}

}  // namespace fastload::bind
