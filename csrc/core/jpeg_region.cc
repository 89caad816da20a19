#include "jpeg_region.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "jpeg_index.h"

#ifdef FASTLOAD_HAS_JPEG
// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <setjmp.h>
#endif

namespace fastload {

namespace {

void set_message(JpegRegionResult& r, const char* text) {
  std::snprintf(r.message, sizeof(r.message), "%s", text);
}

}  // namespace

#ifndef FASTLOAD_HAS_JPEG

bool jpeg_region_available() { return false; }

JpegRegionResult decode_jpeg_region(const uint8_t*, size_t, int, int, int, int, int, int, int,
                                    uint8_t*, size_t, const uint8_t*, size_t) {
  JpegRegionResult r;
  r.status = JpegStatus::kUnavailable;
  set_message(r, "fastload._core was built without libjpeg-turbo");
  return r;
}

#else

bool jpeg_region_available() { return true; }

namespace {

// libjpeg reports a fatal error by calling error_exit, which must not return: it jumps back
// to decode(). Warnings (corrupt or missing data that libjpeg papers over) are counted.
struct ErrorManager {
  jpeg_error_mgr base;
  jmp_buf jump;
  char text[JMSG_LENGTH_MAX];
  int warnings;
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  err->base.format_message(cinfo, err->text);
  longjmp(err->jump, 1);
}

void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) ++reinterpret_cast<ErrorManager*>(cinfo->err)->warnings;
}

// Rows are read this many at a time (libjpeg returns at most its output buffer's height).
constexpr int kRowsPerCall = 16;

// Everything between creating and destroying the decompressor: only plain C data lives here,
// so the longjmp out of on_error skips no destructor.
void decode(jpeg_decompress_struct* cinfo, ErrorManager* err, const uint8_t* data, size_t size,
            int scale, int expect_height, int expect_width, int top, int left, int bottom,
            int right, uint8_t* out, size_t capacity, JpegRegionResult* r) {
  if (setjmp(err->jump)) {
    r->status = JpegStatus::kError;
    set_message(*r, err->text);
    return;
  }
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  r->image_height = static_cast<int>(cinfo->image_height);
  r->image_width = static_cast<int>(cinfo->image_width);
  if (r->image_height != expect_height || r->image_width != expect_width) {
    r->status = JpegStatus::kSizeMismatch;
    return;
  }
  const J_COLOR_SPACE space = cinfo->jpeg_color_space;
  if (space != JCS_YCbCr && space != JCS_RGB && space != JCS_GRAYSCALE) {
    r->status = JpegStatus::kNotHandled;
    set_message(*r, "colour space other than YCbCr, RGB or grayscale");
    return;
  }
  cinfo->out_color_space = JCS_RGB;
  cinfo->scale_num = 1;
  cinfo->scale_denom = static_cast<unsigned int>(scale);
  jpeg_start_decompress(cinfo);
  const int height = static_cast<int>(cinfo->output_height);
  const int width = static_cast<int>(cinfo->output_width);
  top = top < 0 ? 0 : top;
  left = left < 0 ? 0 : left;
  bottom = bottom > height ? height : bottom;
  right = right > width ? width : right;
  if (top >= bottom || left >= right) {
    r->status = JpegStatus::kError;
    set_message(*r, "the region is empty inside the image");
    return;
  }
  JDIMENSION col0 = static_cast<JDIMENSION>(left);
  JDIMENSION cols = static_cast<JDIMENSION>(right - left);
  if (cols < cinfo->output_width) jpeg_crop_scanline(cinfo, &col0, &cols);
  const int rows = bottom - top;
  const size_t stride = static_cast<size_t>(cols) * 3;
  if (stride * static_cast<size_t>(rows) > capacity) {
    r->status = JpegStatus::kError;
    set_message(*r, "the output buffer is too small for the region");
    return;
  }
  if (top > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(top));
  int done = 0;
  JSAMPROW row_pointers[kRowsPerCall];
  while (done < rows) {
    const int want = rows - done < kRowsPerCall ? rows - done : kRowsPerCall;
    for (int k = 0; k < want; ++k) row_pointers[k] = out + static_cast<size_t>(done + k) * stride;
    const JDIMENSION got = jpeg_read_scanlines(cinfo, row_pointers, static_cast<JDIMENSION>(want));
    if (got == 0) {  // cannot happen with a memory source; never loop on it
      r->status = JpegStatus::kError;
      set_message(*r, "libjpeg returned no rows");
      return;
    }
    done += static_cast<int>(got);
  }
  r->row0 = top;
  r->col0 = static_cast<int>(col0);
  r->rows = rows;
  r->cols = static_cast<int>(cols);
  r->status = err->warnings > 0 ? JpegStatus::kNotHandled : JpegStatus::kOk;
  if (err->warnings > 0) set_message(*r, "libjpeg warned about the data (corrupt or truncated)");
}

// The region of the JPEG in data, decoded from its start.
JpegRegionResult decode_whole_stream(const uint8_t* data, size_t size, int scale,
                                     int expect_height, int expect_width, int top, int left,
                                     int bottom, int right, uint8_t* out, size_t capacity) {
  JpegRegionResult r;
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  std::memset(&cinfo, 0, sizeof(cinfo));  // so destroying it is safe however far create got
  std::memset(&err, 0, sizeof(err));
  cinfo.err = jpeg_std_error(&err.base);
  err.base.error_exit = on_error;
  err.base.emit_message = on_message;
  decode(&cinfo, &err, data, size, scale, expect_height, expect_width, top, left, bottom, right,
         out, capacity, &r);
  jpeg_destroy_decompress(&cinfo);  // also ends a decompression left half-way
  return r;
}

// The region through a stream of only the MCUs around it (jpeg_index.h), or false where the
// index does not help (a region at the top left, or almost the whole image) or does not fit
// these bytes; *r is then untouched.
bool decode_from_index(const uint8_t* data, size_t size, int scale, int expect_height,
                       int expect_width, int top, int left, int bottom, int right, uint8_t* out,
                       size_t capacity, const uint8_t* index, size_t index_size,
                       JpegRegionResult* r) {
  const JpegGrid g = jpeg_index_grid(index, index_size);
  // Two scaled pixels of margin around the region inside the window: chroma upsampling
  // reads one sample across the window's edges (and the synthetic MCUs left of it).
  if (g.step == 0 || left < 2) return false;
  const int height = (expect_height + scale - 1) / scale, width = (expect_width + scale - 1) / scale;
  top = top < 0 ? 0 : top;
  bottom = bottom > height ? height : bottom;
  right = right > width ? width : right;
  if (top >= bottom || left >= right) return false;
  const int row0 = top < 2 ? 0 : (top - 2) * scale / g.mcu_h;
  int row1 = ((bottom + 2) * scale + g.mcu_h - 1) / g.mcu_h;
  row1 = row1 > g.rows ? g.rows : row1;
  const int col0 = (left - 2) * scale / g.mcu_w / g.step * g.step;
  int col1 = ((right + 2) * scale + g.mcu_w - 1) / g.mcu_w;
  col1 = (col1 + g.step - 1) / g.step * g.step;
  col1 = col1 > g.cols ? g.cols : col1;
  // Worth it only where it leaves out more MCUs than a row of them (the synthetic column).
  const long kept = static_cast<long>(row1 - row0) * (col1 - col0 + 1);
  const long plain = static_cast<long>(row1) * g.cols;
  if (plain - kept < g.cols) return false;
  thread_local std::vector<uint8_t> stream;
  JpegWindow win;
  if (!jpeg_window(data, size, index, index_size, row0, row1, col0, col1, &stream, &win) ||
      win.image_height != expect_height || win.image_width != expect_width)
    return false;
  const int dy = win.top / scale, dx = win.left / scale;  // MCUs are whole scaled pixels
  JpegRegionResult got =
      decode_whole_stream(stream.data(), stream.size(), scale, win.height, win.width, top - dy,
                          left - dx, bottom - dy, right - dx, out, capacity);
  if (got.status != JpegStatus::kOk) return false;  // the plain decode says what is wrong
  got.row0 += dy;
  got.col0 += dx;
  got.image_height = expect_height;
  got.image_width = expect_width;
  got.indexed = true;
  *r = got;
  return true;
}

}  // namespace

JpegRegionResult decode_jpeg_region(const uint8_t* data, size_t size, int scale,
                                    int expect_height, int expect_width, int top, int left,
                                    int bottom, int right, uint8_t* out, size_t capacity,
                                    const uint8_t* index, size_t index_size) {
  JpegRegionResult r;
  if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
    set_message(r, "scale must be 1, 2, 4 or 8");
    return r;
  }
  if (index != nullptr && decode_from_index(data, size, scale, expect_height, expect_width,
                                            top, left, bottom, right, out, capacity, index,
                                            index_size, &r))
    return r;
  return decode_whole_stream(data, size, scale, expect_height, expect_width, top, left, bottom,
                             right, out, capacity);
}

#endif  // FASTLOAD_HAS_JPEG

}  // namespace fastload
