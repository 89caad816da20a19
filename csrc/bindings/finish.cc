// Bindings: finish_images, finish_tokens (CPU arrays, or CUDA ones where the core has CUDA).
// Arrays arrive by DLPack or the buffer protocol (torch tensors, numpy arrays); the checks
// here are of shapes, dtypes, devices and contiguity, the core checks the values.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/finish.h"
#include "common.h"

#ifdef FASTLOAD_HAS_CUDA
#include "../cuda/finish.h"
#endif

namespace fastload::bind {
namespace {

using finish::Index;
using finish::Layout;
using finish::Real;
using AnyArray = nb::ndarray<>;
using ReadArray = nb::ndarray<nb::ro>;

namespace dl = nb::dlpack;

template <class A>
std::string shape_of(const A& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_name(dl::dtype t) {
  const char* kind = "?";
  switch (static_cast<dl::dtype_code>(t.code)) {
    case dl::dtype_code::Int: kind = "int"; break;
    case dl::dtype_code::UInt: kind = "uint"; break;
    case dl::dtype_code::Float: kind = "float"; break;
    case dl::dtype_code::Bfloat: kind = "bfloat"; break;
    case dl::dtype_code::Complex: kind = "complex"; break;
    case dl::dtype_code::Bool: return "bool";
    default: break;
  }
  return std::string(kind) + std::to_string(t.bits);
}

bool is_dtype(dl::dtype t, dl::dtype_code code, int bits) {
  return t.code == static_cast<uint8_t>(code) && t.bits == bits && t.lanes == 1;
}

// C-contiguous, ignoring the strides of extent-1 axes (torch gives those any stride).
template <class A>
bool c_contiguous(const A& a) {
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) == 0) return true;
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

template <class A>
void check_array(const A& a, const char* name, size_t ndim, const char* expected_shape) {
  if (a.ndim() != ndim) {
    throw nb::value_error((std::string(name) + " must be " + expected_shape + ", got shape " +
                           shape_of(a))
                              .c_str());
  }
  if (!c_contiguous(a)) {
    throw nb::value_error((std::string(name) + " must be C-contiguous (call .contiguous() "
                                               "first); its shape is " + shape_of(a))
                              .c_str());
  }
}

Layout parse_layout(const std::string& s, const char* name) {
  if (s == "HWC") return Layout::kHWC;
  if (s == "CHW") return Layout::kCHW;
  throw nb::value_error((std::string(name) + " must be 'HWC' or 'CHW', got '" + s + "'").c_str());
}

// Where two arrays live: both on the CPU, or both on one CUDA device. Returns the CUDA device
// index, or -1 for the CPU.
template <class A, class B>
int common_device(const A& a, const char* a_name, const B& b, const char* b_name) {
  const auto where = [](int type, int id) {
    if (type == nb::device::cpu::value) return std::string("cpu");
    if (type == nb::device::cuda::value) return "cuda:" + std::to_string(id);
    return "device type " + std::to_string(type);
  };
  const int ta = a.device_type(), tb = b.device_type();
  const bool ok = ta == tb && (ta == nb::device::cpu::value ||
                               (ta == nb::device::cuda::value && a.device_id() == b.device_id()));
  if (!ok || (ta != nb::device::cpu::value && ta != nb::device::cuda::value)) {
    throw nb::value_error((std::string(a_name) + " is on " + where(ta, a.device_id()) + " and " +
                           b_name + " on " + where(tb, b.device_id()) +
                           ": both must be on the CPU or on the same CUDA device")
                              .c_str());
  }
  return ta == nb::device::cuda::value ? a.device_id() : -1;
}

// The array behind `obj` (DLPack or the buffer protocol), or TypeError naming it. The bindings
// take plain objects, so that the stub can type them as any such array (torch tensors too).
template <class A>
A as_array(nb::handle obj, const char* name) {
  A a;
  if (!nb::try_cast(obj, a, false)) {
    throw nb::type_error((std::string(name) + " must be an array exporting DLPack or the buffer "
                                              "protocol (a torch tensor, a numpy array), got " +
                          nb::inst_name(obj).c_str())
                             .c_str());
  }
  return a;
}

[[noreturn]] void no_cuda() {
  throw nb::value_error(
      "these arrays are on a CUDA device but fastload._core was built without CUDA (no nvcc "
      "was found when it was built); rebuild it where nvcc is installed, or pass CPU tensors");
}

// (n, c, h, w) of an image batch of physical layout `layout`.
template <class A>
ImageBatchShape image_shape(const A& a, Layout layout) {
  const auto d = [&](size_t i) { return static_cast<int64_t>(a.shape(i)); };
  return layout == Layout::kHWC ? ImageBatchShape{d(0), d(3), d(1), d(2)}
                                : ImageBatchShape{d(0), d(1), d(2), d(3)};
}

std::string describe(const ImageBatchShape& s, Layout layout) {
  const auto n = std::to_string(s.n), c = std::to_string(s.c), h = std::to_string(s.h),
             w = std::to_string(s.w);
  return layout == Layout::kHWC ? "(" + n + ", " + h + ", " + w + ", " + c + ")"
                                : "(" + n + ", " + c + ", " + h + ", " + w + ")";
}

void finish_images(nb::handle images, nb::handle out_obj, const std::string& layout_in,
                   const std::string& layout_out, const std::vector<float>& mean,
                   const std::vector<float>& std, uintptr_t stream, int num_threads) {
  const auto src = as_array<ReadArray>(images, "images");
  const auto out = as_array<AnyArray>(out_obj, "out");
  const Layout in_layout = parse_layout(layout_in, "layout_in");
  const Layout out_layout = parse_layout(layout_out, "layout_out");
  const char* in_shape = in_layout == Layout::kHWC ? "(N, H, W, C)" : "(N, C, H, W)";
  const char* out_shape = out_layout == Layout::kHWC ? "(N, H, W, C)" : "(N, C, H, W)";
  check_array(src, "the images", 4, in_shape);
  check_array(out, "out", 4, out_shape);
  if (!is_dtype(src.dtype(), dl::dtype_code::UInt, 8)) {
    throw nb::type_error(("the images must be uint8, got " + dtype_name(src.dtype())).c_str());
  }
  Real out_type;
  if (is_dtype(out.dtype(), dl::dtype_code::Float, 32)) {
    out_type = Real::kFloat32;
  } else if (is_dtype(out.dtype(), dl::dtype_code::Float, 16)) {
    out_type = Real::kFloat16;
  } else if (is_dtype(out.dtype(), dl::dtype_code::Bfloat, 16)) {
    out_type = Real::kBFloat16;
  } else {
    throw nb::type_error(
        ("out must be float32, float16 or bfloat16, got " + dtype_name(out.dtype())).c_str());
  }
  const ImageBatchShape shape = image_shape(src, in_layout);
  const ImageBatchShape out_dims = image_shape(out, out_layout);
  if (out_dims.n != shape.n || out_dims.c != shape.c || out_dims.h != shape.h ||
      out_dims.w != shape.w) {
    throw nb::value_error(("out must be " + describe(shape, out_layout) + " for images " +
                           shape_of(src) + " (" + layout_in + " in, " + layout_out +
                           " out), got " + shape_of(out))
                              .c_str());
  }
  if (mean.size() != static_cast<size_t>(shape.c) || std.size() != static_cast<size_t>(shape.c)) {
    throw nb::value_error(("mean and std need one value per channel (" +
                           std::to_string(shape.c) + "), got " + std::to_string(mean.size()) +
                           " and " + std::to_string(std.size()))
                              .c_str());
  }
  check_image_finish(shape, mean.data(), std.data());  // channels, finite values, std > 0
  const int device = common_device(src, "the images", out, "out");
  const auto* in = static_cast<const uint8_t*>(src.data());
  if (device < 0) {
    const uint64_t elements = static_cast<uint64_t>(shape.n * shape.c * shape.h * shape.w);
    MaybeReleaseGil nogil(worth_releasing(elements));
    fastload::finish_images(in, in_layout, out.data(), out_layout, out_type, shape, mean.data(),
                            std.data(), num_threads);
    return;
  }
#ifdef FASTLOAD_HAS_CUDA
  fastload::cuda::finish_images(in, in_layout, out.data(), out_layout, out_type, shape,
                                mean.data(), std.data(), device, stream);
#else
  (void)stream;
  no_cuda();
#endif
}

Index index_type(const AnyArray& a, const char* name) {
  if (is_dtype(a.dtype(), dl::dtype_code::Int, 64)) return Index::kInt64;
  if (is_dtype(a.dtype(), dl::dtype_code::Int, 32)) return Index::kInt32;
  throw nb::type_error(
      (std::string(name) + " must be int64 or int32, got " + dtype_name(a.dtype())).c_str());
}

void finish_tokens(nb::handle rows_obj, nb::handle inputs_obj, nb::handle targets_obj,
                   uintptr_t stream, int num_threads) {
  const auto src = as_array<ReadArray>(rows_obj, "rows");
  const auto inputs = as_array<AnyArray>(inputs_obj, "inputs");
  std::optional<AnyArray> targets;
  if (!targets_obj.is_none()) targets = as_array<AnyArray>(targets_obj, "targets");
  check_array(src, "the token rows", 2, "(rows, length)");
  check_array(inputs, "inputs", 2, "(rows, length)");
  int in_bytes;
  if (is_dtype(src.dtype(), dl::dtype_code::UInt, 16)) {
    in_bytes = 2;
  } else if (is_dtype(src.dtype(), dl::dtype_code::UInt, 32)) {
    in_bytes = 4;
  } else {
    throw nb::type_error(
        ("the token rows must be uint16 or uint32, got " + dtype_name(src.dtype())).c_str());
  }
  const Index out_type = index_type(inputs, "inputs");
  const bool shift = targets.has_value();
  const auto rows = static_cast<int64_t>(src.shape(0));
  const auto in_len = static_cast<int64_t>(src.shape(1));
  check_token_finish(in_bytes, rows, in_len, shift, out_type);
  const int64_t out_len = shift ? in_len - 1 : in_len;
  const std::string want = "(" + std::to_string(rows) + ", " + std::to_string(out_len) + ")";
  if (static_cast<int64_t>(inputs.shape(0)) != rows ||
      static_cast<int64_t>(inputs.shape(1)) != out_len) {
    throw nb::value_error(("inputs must be " + want + " for token rows " + shape_of(src) +
                           (shift ? " with the shift" : "") + ", got " + shape_of(inputs))
                              .c_str());
  }
  int device = common_device(src, "the token rows", inputs, "inputs");
  void* target_data = nullptr;
  if (shift) {
    const AnyArray& t = *targets;
    check_array(t, "targets", 2, "(rows, length)");
    if (index_type(t, "targets") != out_type) {
      throw nb::type_error("targets must have the dtype of inputs");
    }
    if (static_cast<int64_t>(t.shape(0)) != rows || static_cast<int64_t>(t.shape(1)) != out_len) {
      throw nb::value_error(("targets must be " + want + ", got " + shape_of(t)).c_str());
    }
    common_device(inputs, "inputs", t, "targets");
    target_data = t.data();
  }
  if (device < 0) {
    const uint64_t tokens = static_cast<uint64_t>(rows * in_len);
    MaybeReleaseGil nogil(worth_releasing(tokens * static_cast<uint64_t>(in_bytes)));
    fastload::finish_tokens(src.data(), in_bytes, rows, in_len, shift, inputs.data(),
                            target_data, out_type, num_threads);
    return;
  }
#ifdef FASTLOAD_HAS_CUDA
  fastload::cuda::finish_tokens(src.data(), in_bytes, rows, in_len, shift, inputs.data(),
                                target_data, out_type, device, stream);
#else
  (void)stream;
  no_cuda();
#endif
}

}  // namespace

void register_finish(nb::module_& m) {
  m.def("finish_images", &finish_images, nb::arg("images"), nb::arg("out"),
        nb::arg("layout_in"), nb::arg("layout_out"), nb::arg("mean"), nb::arg("std"),
        nb::arg("stream") = 0, nb::arg("num_threads") = 1,
        "``out = (images - mean[c]) / std[c]`` per channel, converted to ``out``'s dtype\n"
        "(float32, float16 or bfloat16; rounded to nearest even), in one pass.\n\n"
        "``images``: uint8 ``(N, H, W, C)`` for ``layout_in='HWC'`` or ``(N, C, H, W)`` for\n"
        "``'CHW'``, 1 to 4 channels; ``out`` likewise for ``layout_out``. Both C-contiguous and\n"
        "on the CPU or on one CUDA device; ``mean``/``std`` in pixel units (0..255), one per\n"
        "channel, finite, std > 0. CPU: the GIL is released and large batches are split over\n"
        "``num_threads`` threads. CUDA: the kernel is launched on ``stream`` (a cudaStream_t as\n"
        "an int, 0 the legacy default stream) and not waited for; RuntimeError if it cannot\n"
        "launch. TypeError for a wrong dtype, ValueError for wrong shapes, devices or values\n"
        "(checked before anything is written). fastload.decode.finish_images is the API.");
  m.def("finish_tokens", &finish_tokens, nb::arg("rows"), nb::arg("inputs"),
        nb::arg("targets") = nb::none(), nb::arg("stream") = 0, nb::arg("num_threads") = 1,
        "uint16/uint32 token ``rows`` ``(B, L)`` widened into ``inputs`` (int32 or int64).\n\n"
        "Without ``targets``, ``inputs`` is ``(B, L)``; with them (the next-token shift), both\n"
        "are ``(B, L - 1)``: ``inputs = rows[:, :-1]``, ``targets = rows[:, 1:]``. uint32 into\n"
        "int32 is refused (ValueError: a token over 2**31 - 1 would wrap). Devices, ``stream``\n"
        "and ``num_threads`` as finish_images; fastload.decode.finish_tokens is the API.");
}

}  // namespace fastload::bind
