// Decode one rectangle of a JPEG through libjpeg-turbo, skipping what lies outside it. No Python.
//
// A random crop covers about half an image on average. Rows above it are entropy-decoded
// only (jpeg_skip_scanlines: no inverse DCT, no colour conversion), columns beside it are
// not transformed (jpeg_crop_scanline), and rows below it are not read at all. The pixels
// that come out are those of a whole-image decode at the same scale, bit for bit, as long
// as the caller asks for one pixel more than it uses on each side (libjpeg's chroma
// upsampling reads one neighbour, which an edge of the region does not have).
//
// Built only where libjpeg-turbo (>= 1.5, for the crop and skip calls) is found;
// jpeg_region_available() says whether it was.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastload {

enum class JpegStatus : int {
  kOk = 0,
  // Decodable, but not by this path: a colour space other than YCbCr, RGB or grayscale
  // (CMYK, YCCK), or libjpeg warned about the data (corrupt or truncated). The caller
  // decodes it another way, which decides whether it is an error.
  kNotHandled = 1,
  kSizeMismatch = 2,  // the header's size is not the one expected; nothing decoded
  kError = 3,         // libjpeg refused the data; `message` says why
  kUnavailable = 4,   // built without libjpeg-turbo
};

struct JpegRegionResult {
  JpegStatus status = JpegStatus::kError;
  int image_height = 0;  // from the header, unscaled (0 when it could not be read)
  int image_width = 0;
  // The pixels written to out: rows [row0, row0 + rows) and columns [col0, col0 + cols) of
  // the scaled image, RGB, packed (row stride cols * 3). col0 <= the left asked for and
  // col0 + cols >= the right (libjpeg widens the region to whole blocks).
  int row0 = 0, col0 = 0, rows = 0, cols = 0;
  bool indexed = false;  // decoded through the entropy index (only the MCUs around the region)
  char message[200] = {0};
};

bool jpeg_region_available();

// Decodes rows [top, bottom) and columns [left, right) of the JPEG in data[0:size] at
// 1/scale (scale 1, 2, 4 or 8), the bounds in scaled pixels and clamped to the scaled image,
// into out (capacity bytes). The image must be expect_height x expect_width (unscaled), else
// kSizeMismatch. Never throws; a region left empty by clamping, or an out too small for the
// widened region, is kError.
//
// `index` (optional): the JPEG's entropy index (jpeg_index.h). Where it fits these bytes and
// the region leaves out more than a row of MCUs, only the MCUs around the region are decoded
// instead of every row above it and the whole width of its rows; the result is the same,
// pixel for pixel.
// An index that does not fit, or a stream it makes that libjpeg does not decode cleanly, is
// set aside: the plain decode runs and its result is returned.
JpegRegionResult decode_jpeg_region(const uint8_t* data, size_t size, int scale,
                                    int expect_height, int expect_width, int top, int left,
                                    int bottom, int right, uint8_t* out, size_t capacity,
                                    const uint8_t* index = nullptr, size_t index_size = 0);

}  // namespace fastload
