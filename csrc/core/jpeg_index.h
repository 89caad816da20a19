// An entropy index of a baseline JPEG, so that a crop's decode Huffman-decodes only the
// crop's own MCUs instead of every row above it and the whole width of its rows. No libjpeg,
// no Python.
//
// A baseline JPEG's entropy-coded data cannot be entered part-way: each block's DC value is
// coded as a difference from the previous block's, and the codes run on bit boundaries. The
// index (built once, when a dataset is written) records, at every `step`-th MCU of every MCU
// row, the bit position in the file and the DC predictor of each component (~10 bytes an
// entry, ~3 KB for a 640x480 photo). From it, `jpeg_window` writes a smaller, valid JPEG of a
// window of the MCUs: one row of the window per restart interval, each led by one synthetic
// MCU that sets the DC predictors (its pixels are garbage, left of anything a caller reads).
// Decoding that stream gives the very pixels of the original inside the window, but for two
// pixels at its edges (libjpeg's chroma upsampling reads one sample across an edge): callers
// keep that margin. Between the synthetic MCU and the next restart marker are the original's
// bytes, unshifted: the synthetic MCU's bit length is chosen so that its last byte merges
// with the first original byte, and a window ends at an indexed MCU, where the original bits
// end exactly (so a decode that does not come out even is noticed: libjpeg warns).
//
// Indexed: baseline or extended sequential Huffman JPEGs (SOF0, SOF1) of 8-bit samples, with
// one interleaved scan of all their components (1 or 3), no restart interval and a height in
// the frame header. Anything else gets no index and is decoded as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastload {

// Writes the entropy index of the JPEG in data[0:size] to *out (replacing its contents) and
// returns true, or returns false (out left empty) when the JPEG is not indexable or its
// entropy-coded data does not decode. Every read is bounds-checked (untrusted bytes).
// `symbol_runs` false reads one Huffman symbol at a time instead of several per table
// lookup: the same index, slower (the tests compare the two).
bool build_jpeg_index(const uint8_t* data, size_t size, std::vector<uint8_t>* out,
                      bool symbol_runs = true);

// The MCU grid an index describes (all zero for bytes that are not an index this build reads).
struct JpegGrid {
  int mcu_h = 0, mcu_w = 0;    // MCU size in image pixels (8, 16 or 32)
  int rows = 0, cols = 0;      // MCUs down and across
  int step = 0;                // every step-th MCU of a row is indexed
};
JpegGrid jpeg_index_grid(const uint8_t* index, size_t index_size);

// What jpeg_window made: the window's place in the original image, in image pixels.
struct JpegWindow {
  int top = 0;     // original row of the new stream's row 0
  int left = 0;    // original column of the new stream's column 0 (negative: the synthetic MCU)
  int height = 0;  // the new stream's image size
  int width = 0;
  int image_height = 0;  // the original's
  int image_width = 0;
};

// Writes to *out a JPEG of MCU rows [row0, row1) and MCU columns [col0, col1) of the JPEG in
// data[0:size], through `index` (built for these bytes), led by a synthetic MCU column.
// col0 must be a multiple of the index's step, col1 one too or the row's end. Returns false
// (nothing usable in *out) where the index does not fit the data, the window is not one of
// these, or the synthetic MCUs cannot be coded with the JPEG's Huffman tables (rare: a table
// without a code they need). Never reads outside the buffers.
bool jpeg_window(const uint8_t* data, size_t size, const uint8_t* index, size_t index_size,
                 int row0, int row1, int col0, int col1, std::vector<uint8_t>* out,
                 JpegWindow* window);

}  // namespace fastload
