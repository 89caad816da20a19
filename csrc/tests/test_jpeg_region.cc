// The JPEG region decoder on JPEGs this test encodes with libjpeg itself: a region's pixels
// are the whole image's at every scale and chroma layout, with or without the JPEG's entropy
// index (jpeg_index.h); truncated, damaged and mismatched data, a bad scale, an empty region
// and a small buffer each get their status, never a crash (every byte of a JPEG, and of its
// index, flipped in turn, under ASan). Built without libjpeg-turbo, the decoder says so.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "core/jpeg_index.h"
#include "core/jpeg_region.h"

#ifdef FASTLOAD_HAS_JPEG
#include <jpeglib.h>
#endif

namespace {

using fastload::decode_jpeg_region;
using fastload::JpegRegionResult;
using fastload::JpegStatus;

constexpr int kH = 61, kW = 83;  // partial blocks at the right and bottom

#ifdef FASTLOAD_HAS_JPEG

// A busy RGB picture (so every block has detail) encoded with h x v luma sampling.
std::vector<uint8_t> encode(int h_samp, int v_samp, int restart_interval = 0,
                            bool progressive = false) {
  std::vector<uint8_t> rgb(static_cast<size_t>(kH) * kW * 3);
  for (int y = 0; y < kH; ++y)
    for (int x = 0; x < kW; ++x)
      for (int c = 0; c < 3; ++c)
        rgb[(static_cast<size_t>(y) * kW + x) * 3 + c] =
            static_cast<uint8_t>((x * (7 + c) + y * (3 + 2 * c) + (x * y) % (11 + c)) * 5);
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &mem, &size);
  cinfo.image_width = kW;
  cinfo.image_height = kH;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  cinfo.comp_info[0].h_samp_factor = h_samp;
  cinfo.comp_info[0].v_samp_factor = v_samp;
  cinfo.restart_interval = static_cast<unsigned int>(restart_interval);
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = &rgb[static_cast<size_t>(cinfo.next_scanline) * kW * 3];
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::vector<uint8_t> out(mem, mem + size);
  jpeg_destroy_compress(&cinfo);
  free(mem);
  return out;
}

int scaled(int n, int scale) { return (n + scale - 1) / scale; }

struct Decode {
  JpegRegionResult r;
  std::vector<uint8_t> px;
};

Decode region(const std::vector<uint8_t>& jpeg, int scale, int top, int left, int bottom,
              int right, size_t capacity = static_cast<size_t>(kH) * kW * 3,
              const std::vector<uint8_t>* index = nullptr) {
  Decode d;
  d.px.assign(capacity, 0);
  d.r = decode_jpeg_region(jpeg.data(), jpeg.size(), scale, kH, kW, top, left, bottom, right,
                           d.px.data(), d.px.size(), index ? index->data() : nullptr,
                           index ? index->size() : 0);
  return d;
}

FL_TEST(region_pixels_equal_the_whole_images) {
  const int layouts[][2] = {{1, 1}, {2, 1}, {2, 2}};
  for (const auto& layout : layouts) {
    const std::vector<uint8_t> jpeg = encode(layout[0], layout[1]);
    for (int scale : {1, 2, 4, 8}) {
      const int rows = scaled(kH, scale), cols = scaled(kW, scale);
      const Decode whole = region(jpeg, scale, 0, 0, rows, cols);
      CHECK(whole.r.status == JpegStatus::kOk);
      CHECK_EQ(whole.r.rows, rows);
      CHECK_EQ(whole.r.cols, cols);
      for (int top = 0; top < rows; top += 3) {
        for (int left = 0; left < cols; left += 5) {
          const int bottom = top + 1 + (top * 7 + left) % (rows - top);
          const int right = left + 1 + (left * 3 + top) % (cols - left);
          const Decode part = region(jpeg, scale, top - 1, left - 1, bottom + 1, right + 1);
          CHECK(part.r.status == JpegStatus::kOk);
          CHECK(part.r.col0 <= left && part.r.col0 + part.r.cols >= right);
          CHECK(part.r.row0 <= top && part.r.row0 + part.r.rows >= bottom);
          int differ = 0;
          for (int y = top; y < bottom; ++y)
            for (int x = left; x < right; ++x)
              for (int c = 0; c < 3; ++c) {
                const size_t at =
                    (static_cast<size_t>(y - part.r.row0) * part.r.cols + (x - part.r.col0)) * 3;
                differ += part.px[at + c] != whole.px[(static_cast<size_t>(y) * cols + x) * 3 + c];
              }
          CHECK_EQ(differ, 0);
        }
      }
    }
  }
}

FL_TEST(bad_input_gets_its_status) {
  const std::vector<uint8_t> jpeg = encode(2, 2);
  const std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + static_cast<long>(jpeg.size() / 2));
  CHECK(region(cut, 1, 0, 0, kH, kW).r.status == JpegStatus::kNotHandled);  // libjpeg warned
  const std::vector<uint8_t> junk = {0xFF, 0xD8, 0xFF, 'j', 'u', 'n', 'k'};
  const Decode refused = region(junk, 1, 0, 0, kH, kW);
  CHECK(refused.r.status == JpegStatus::kError);
  CHECK(refused.r.message[0] != 0);
  CHECK(region({}, 1, 0, 0, kH, kW).r.status == JpegStatus::kError);
  Decode mismatch;
  mismatch.px.assign(100, 0);
  mismatch.r = decode_jpeg_region(jpeg.data(), jpeg.size(), 1, kH + 1, kW, 0, 0, kH, kW,
                                  mismatch.px.data(), mismatch.px.size());
  CHECK(mismatch.r.status == JpegStatus::kSizeMismatch);
  CHECK_EQ(mismatch.r.image_height, kH);
  CHECK(region(jpeg, 3, 0, 0, kH, kW).r.status == JpegStatus::kError);
  CHECK(region(jpeg, 1, kH, 0, kH + 4, kW).r.status == JpegStatus::kError);  // empty
  CHECK(region(jpeg, 1, 0, 0, kH, kW, 100).r.status == JpegStatus::kError);  // small out
}

FL_TEST(every_flipped_byte_is_survived) {
  const std::vector<uint8_t> jpeg = encode(2, 2);
  int decoded = 0;
  for (size_t i = 0; i < jpeg.size(); ++i) {
    std::vector<uint8_t> bad = jpeg;
    bad[i] ^= 0x5A;
    const Decode d = region(bad, 1, 10, 10, 50, 70);
    decoded += d.r.status == JpegStatus::kOk;
    if (d.r.status == JpegStatus::kOk) CHECK(d.r.rows * d.r.cols * 3 <= kH * kW * 3);
  }
  CHECK(decoded < static_cast<int>(jpeg.size()));  // damage is noticed somewhere
}

FL_TEST(indexed_regions_equal_plain_ones) {
  const int layouts[][2] = {{1, 1}, {2, 1}, {2, 2}};
  for (const auto& layout : layouts) {
    const std::vector<uint8_t> jpeg = encode(layout[0], layout[1]);
    std::vector<uint8_t> index, one_at_a_time;
    CHECK(fastload::build_jpeg_index(jpeg.data(), jpeg.size(), &index));
    CHECK(fastload::build_jpeg_index(jpeg.data(), jpeg.size(), &one_at_a_time, false));
    CHECK(index == one_at_a_time);  // runs of symbols per lookup read the same bits
    int indexed = 0, compared = 0;
    for (int scale : {1, 2, 4, 8}) {
      const int rows = scaled(kH, scale), cols = scaled(kW, scale);
      for (int top = 0; top < rows; top += 2) {
        for (int left = 0; left < cols; left += 3) {
          const int bottom = top + 1 + (top * 7 + left) % (rows - top);
          const int right = left + 1 + (left * 3 + top) % (cols - left);
          const Decode plain = region(jpeg, scale, top, left, bottom, right);
          const Decode fast = region(jpeg, scale, top, left, bottom, right,
                                     static_cast<size_t>(kH) * kW * 3, &index);
          CHECK(plain.r.status == JpegStatus::kOk && fast.r.status == JpegStatus::kOk);
          CHECK(!plain.r.indexed);
          indexed += fast.r.indexed;
          ++compared;
          CHECK_EQ(fast.r.row0, plain.r.row0);
          CHECK_EQ(fast.r.col0, plain.r.col0);
          CHECK_EQ(fast.r.rows, plain.r.rows);
          CHECK_EQ(fast.r.cols, plain.r.cols);
          const size_t n = static_cast<size_t>(plain.r.rows) * plain.r.cols * 3;
          CHECK(std::equal(plain.px.begin(), plain.px.begin() + static_cast<long>(n),
                           fast.px.begin()));
        }
      }
    }
    CHECK(indexed > compared / 4);  // the index path is taken, not only the plain one
  }
}

FL_TEST(what_the_index_is_not_made_for_gets_none) {
  std::vector<uint8_t> index = {1, 2, 3};
  const std::vector<uint8_t> restarts = encode(2, 2, 3);
  CHECK(!fastload::build_jpeg_index(restarts.data(), restarts.size(), &index));
  CHECK(index.empty());
  const std::vector<uint8_t> progressive = encode(2, 2, 0, true);
  CHECK(!fastload::build_jpeg_index(progressive.data(), progressive.size(), &index));
  const std::vector<uint8_t> jpeg = encode(2, 2);
  const std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + static_cast<long>(jpeg.size() / 2));
  CHECK(!fastload::build_jpeg_index(cut.data(), cut.size(), &index));  // data runs out
  CHECK(!fastload::build_jpeg_index(nullptr, 0, &index));
}

FL_TEST(an_index_that_does_not_fit_is_set_aside) {
  const std::vector<uint8_t> a = encode(2, 2), b = encode(1, 1);
  std::vector<uint8_t> index_a;
  CHECK(fastload::build_jpeg_index(a.data(), a.size(), &index_a));
  // b's own pixels, through the plain path, with a's index
  const Decode plain = region(b, 1, 40, 50, 60, 80);
  const Decode other = region(b, 1, 40, 50, 60, 80, static_cast<size_t>(kH) * kW * 3, &index_a);
  CHECK(other.r.status == JpegStatus::kOk && !other.r.indexed);
  CHECK(plain.px == other.px);
  std::vector<uint8_t> short_index(index_a.begin(), index_a.end() - 1);
  CHECK(!region(a, 1, 40, 50, 60, 80, static_cast<size_t>(kH) * kW * 3, &short_index).r.indexed);
}

FL_TEST(every_flipped_byte_of_a_jpeg_or_its_index_is_survived) {
  const std::vector<uint8_t> jpeg = encode(2, 2);
  std::vector<uint8_t> index, scratch;
  CHECK(fastload::build_jpeg_index(jpeg.data(), jpeg.size(), &index));
  const size_t capacity = static_cast<size_t>(kH) * kW * 3;
  CHECK(region(jpeg, 1, 40, 50, 60, 80, capacity, &index).r.indexed);
  for (size_t i = 0; i < jpeg.size(); ++i) {
    std::vector<uint8_t> bad = jpeg;
    bad[i] ^= 0x5A;
    fastload::build_jpeg_index(bad.data(), bad.size(), &scratch);  // never reads outside
    const Decode d = region(bad, 1, 40, 50, 60, 80, capacity, &index);
    if (d.r.status == JpegStatus::kOk) CHECK(d.r.rows * d.r.cols * 3 <= kH * kW * 3);
  }
  for (size_t i = 0; i < index.size(); ++i) {
    for (uint8_t flip : {0x01, 0x5A, 0xFF}) {
      std::vector<uint8_t> bad = index;
      bad[i] ^= flip;
      const Decode d = region(jpeg, 1, 40, 50, 60, 80, capacity, &bad);
      CHECK(d.r.status == JpegStatus::kOk);  // a bad index falls back, or decodes anyway
      CHECK(d.r.rows * d.r.cols * 3 <= kH * kW * 3);
    }
  }
}

#else

FL_TEST(without_libjpeg_the_decoder_says_so) {
  CHECK(!fastload::jpeg_region_available());
  uint8_t out[4];
  const JpegRegionResult r = decode_jpeg_region(nullptr, 0, 1, 1, 1, 0, 0, 1, 1, out, 4);
  CHECK(r.status == JpegStatus::kUnavailable);
}

#endif

}  // namespace
