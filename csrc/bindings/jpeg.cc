// Bindings: jpeg_region_available, decode_jpeg_region, jpeg_entropy_index.
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <string>
#include <tuple>
#include <vector>

#include "../core/jpeg_index.h"
#include "../core/jpeg_region.h"
#include "common.h"

namespace fastload::bind {

void register_jpeg(nb::module_& m) {
  m.def("jpeg_region_available", &fastload::jpeg_region_available,
        "Whether this build decodes JPEG regions (it found libjpeg-turbo).");

  m.def(
      "decode_jpeg_region",
      [](nb::handle data, int scale, int expect_height, int expect_width, int top, int left,
         int bottom, int right, nb::handle out, nb::handle index) {
        Buffer src(data, false, "data");
        Buffer dst(out, true, "out");
        std::optional<Buffer> idx;
        if (!index.is_none()) idx.emplace(index, false, "index");
        const ByteSpan in = src.span();
        const MutByteSpan to = dst.mut_span();
        const ByteSpan ix = idx ? idx->span() : ByteSpan{nullptr, 0};
        JpegRegionResult r;
        {
          nb::gil_scoped_release nogil;  // a decode is always real work
          r = fastload::decode_jpeg_region(in.data, static_cast<size_t>(in.size), scale,
                                           expect_height, expect_width, top, left, bottom,
                                           right, to.data, static_cast<size_t>(to.size),
                                           ix.data, static_cast<size_t>(ix.size));
        }
        return std::make_tuple(static_cast<int>(r.status), std::string(r.message),
                               r.image_height, r.image_width, r.row0, r.col0, r.rows, r.cols,
                               r.indexed);
      },
      nb::arg("data"), nb::arg("scale"), nb::arg("expect_height"), nb::arg("expect_width"),
      nb::arg("top"), nb::arg("left"), nb::arg("bottom"), nb::arg("right"), nb::arg("out"),
      nb::arg("index").none() = nb::none(),
      "Decode rows [top, bottom) and columns [left, right) of a JPEG at 1/``scale`` (1, 2, 4\n"
      "or 8; bounds in scaled pixels, clamped to the image) into ``out`` as packed RGB.\n\n"
      "Returns (status, message, image_height, image_width, row0, col0, rows, cols, indexed):\n"
      "status 0 decoded: ``out[: rows * cols * 3]`` holds scaled rows [row0, row0 + rows) and\n"
      "columns [col0, col0 + cols) (the columns widened to whole blocks), ``indexed`` whether\n"
      "only the MCUs around the region were decoded, through ``index``; 1 not handled here\n"
      "(CMYK or YCCK, or libjpeg warned about corrupt or truncated data): decode it another\n"
      "way; 2 the header's size is not expect_height x expect_width; 3 libjpeg refused the\n"
      "data (message says why), or out is too small; 4 built without libjpeg-turbo. Pixels\n"
      "equal a whole-image decode's except on the region's outermost pixels (chroma\n"
      "upsampling at an edge): ask for one more on each side than is used. ``index``: the\n"
      "JPEG's entropy index (``jpeg_entropy_index``), with which only the MCUs around the\n"
      "region are decoded; the same pixels either way, and an index that does not fit these\n"
      "bytes is ignored. Runs with the GIL released.");

  m.def(
      "jpeg_entropy_index",
      [](nb::handle data) -> nb::object {
        Buffer src(data, false, "data");
        const ByteSpan in = src.span();
        std::vector<uint8_t> index;
        bool ok;
        {
          nb::gil_scoped_release nogil;  // one Huffman pass over the image
          ok = fastload::build_jpeg_index(in.data, static_cast<size_t>(in.size), &index);
        }
        if (!ok) return nb::none();
        return nb::bytes(reinterpret_cast<const char*>(index.data()), index.size());
      },
      nb::arg("data"),
      "The entropy index of a baseline JPEG (the bit position and DC predictors at every 4th\n"
      "MCU or so of each MCU row: ~3 KB for a 640x480 photo), or None for a JPEG it is not\n"
      "made for (progressive, arithmetic-coded, restart markers, 12-bit, other than 1 or 3\n"
      "components) or whose data does not decode. Runs with the GIL released.");
}

}  // namespace fastload::bind
