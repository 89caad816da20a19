// Bindings: gather, gather_fixed.
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
      "Copy sources[source_index[i]][offsets[i]:+lengths[i]] to out[out_offsets[i]:+lengths[i]].");

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
      "Copy `size` bytes from source[offsets[i]:] to out[i*size:] for each i.");
}

}  // namespace fastload::bind
