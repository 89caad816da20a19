// Bindings: gather, gather_fixed, gather_records.
#include <deque>
#include <vector>

#include "../core/gather.h"
#include "common.h"

namespace fastload::bind {

void register_gather(nb::module_& m) {
  m.def(
      "gather",
      [](nb::sequence sources, Array<uint32_t> source_index, Array<uint64_t> offsets,
         Array<uint64_t> lengths, nb::handle out, Array<uint64_t> out_offsets) {
        const size_t n = source_index.shape(0);
        check_same_length("offsets", offsets.shape(0), "source_index", n);
        check_same_length("lengths", lengths.shape(0), "source_index", n);
        check_same_length("out_offsets", out_offsets.shape(0), "source_index", n);

        // All buffers are acquired with the GIL held; deque never moves its elements.
        std::deque<Buffer> held;
        std::vector<ByteSpan> spans;
        for (nb::handle src : sources) {
          const std::string what = "sources[" + std::to_string(spans.size()) + "]";
          spans.push_back(held.emplace_back(src, false, what.c_str()).span());
        }
        Buffer out_buf(out, true, "out");

        MaybeReleaseGil nogil(worth_releasing(lengths.data(), n));
        fastload::gather(spans.data(), spans.size(), source_index.data(), offsets.data(),
                         lengths.data(), out_offsets.data(), n, out_buf.mut_span());
      },
      nb::arg("sources"), nb::arg("source_index").noconvert(), nb::arg("offsets").noconvert(),
      nb::arg("lengths").noconvert(), nb::arg("out"), nb::arg("out_offsets").noconvert(),
      "Copy ``sources[source_index[i]][offsets[i] : +lengths[i]]`` to ``out[out_offsets[i] :\n"
      "+lengths[i]]`` for each i, in order (a later item wins where destinations overlap).\n\n"
      "Raises ValueError for a source index out of range, a slice outside its source or outside\n"
      "``out``, or arrays of different lengths; TypeError for a non-buffer or read-only ``out``.");

  m.def(
      "gather_fixed",
      [](nb::handle source, Array<uint64_t> offsets, uint64_t size, nb::handle out) {
        const size_t n = offsets.shape(0);
        Buffer src_buf(source, false, "source");
        Buffer out_buf(out, true, "out");
        // n * size may wrap; the core checks it properly, this is only a work estimate.
        const bool big = n >= kReleaseItems || (n != 0 && size >= kReleaseBytes / n);
        MaybeReleaseGil nogil(big);
        fastload::gather_fixed(src_buf.span(), offsets.data(), n, size, out_buf.mut_span());
      },
      nb::arg("source"), nb::arg("offsets").noconvert(), nb::arg("size"), nb::arg("out"),
      "Copy ``size`` bytes from ``source[offsets[i]:]`` to ``out[i * size :]`` for each i.\n\n"
      "``out`` must hold at least ``len(offsets) * size`` bytes. Raises ValueError when it does\n"
      "not or a slice is outside ``source``.");

  m.def(
      "gather_records",
      [](nb::sequence sources, Array<uint32_t> source, Array<uint64_t> offset,
         Array<uint64_t> length, Array<uint32_t> checksum, Array<int64_t> indices, bool verify,
         Array<uint64_t> field_at, Array<uint64_t> field_size, nb::sequence outs) -> int64_t {
        const size_t records = source.shape(0), n = indices.shape(0);
        check_same_length("offset", offset.shape(0), "source", records);
        check_same_length("length", length.shape(0), "source", records);
        check_same_length("checksum", checksum.shape(0), "source", records);
        const size_t n_fields = field_at.shape(0);
        check_same_length("field_size", field_size.shape(0), "field_at", n_fields);
        check_same_length("outs", nb::len(outs), "field_at", n_fields);
        // Only the sources this batch reads are acquired (a dataset may have thousands of
        // shards), with the GIL held; deque never moves its elements.
        const size_t n_sources = nb::len(sources);
        std::vector<ByteSpan> spans(n_sources, ByteSpan{nullptr, 0});
        std::vector<bool> acquired(n_sources, false);
        std::deque<Buffer> held;
        const int64_t* idx = indices.data();
        for (size_t i = 0; i < n; ++i) {
          if (idx[i] < 0 || static_cast<uint64_t>(idx[i]) >= records) return static_cast<int64_t>(i);
          const uint32_t s = source.data()[idx[i]];
          if (s < n_sources && !acquired[s]) {
            const std::string what = "sources[" + std::to_string(s) + "]";
            spans[s] = held.emplace_back(sources[s], false, what.c_str()).span();
            acquired[s] = true;
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
        const fastload::RecordTable table{source.data(), offset.data(), length.data(),
                                          checksum.data(), records};
        MaybeReleaseGil nogil(n >= kReleaseItems || (n != 0 && row_bytes >= kReleaseBytes / n));
        return fastload::gather_records(spans.data(), n_sources, table, idx, n, verify,
                                        field_at.data(), field_size.data(), out_spans.data(),
                                        n_fields);
      },
      nb::arg("sources"), nb::arg("source").noconvert(), nb::arg("offset").noconvert(),
      nb::arg("length").noconvert(), nb::arg("checksum").noconvert(),
      nb::arg("indices").noconvert(), nb::arg("verify"), nb::arg("field_at").noconvert(),
      nb::arg("field_size").noconvert(), nb::arg("outs"),
      "A batch of fixed-size fields straight from whole records, in one call.\n\n"
      "Record r lies at ``sources[source[r]][offset[r] : +length[r]]`` with ``checksum[r]`` the\n"
      "low 32 bits of its xxh64. For row i (record ``indices[i]``) and field f, copies the\n"
      "record's bytes ``[field_at[f] : +field_size[f]]`` to ``outs[f][i * field_size[f] :]``;\n"
      "with ``verify``, each record's checksum is checked just before (one pass over its bytes).\n"
      "Only the sources the batch reads are acquired.\n\n"
      "Returns -1, or the first row whose record cannot be read this way (index out of range,\n"
      "shorter than a field, failed checksum): earlier rows are copied, later ones are not.\n"
      "Raises ValueError for a table entry outside its source or an out too small for the rows.");
}

}  // namespace fastload::bind
