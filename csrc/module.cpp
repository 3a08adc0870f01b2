// pybind11 entry point of tte_fast._C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "amx_linear.h"
#include "decode_attention.h"
#include "decoder_ops.h"
#include "frame_slots.h"
#include "image_view.h"
#include "parallel.h"
#include "pillow_resample.h"
#include "qwen_preprocess.h"
#include "smart_resize.h"

namespace py = pybind11;

namespace {

// Largest pixel budget accepted: keeps every size computation far from integer overflow.
constexpr int64_t kMaxPixelBudget = tte::kMaxPixels;

[[noreturn]] void raise_memory_error(const std::string& message) {
  PyErr_SetString(PyExc_MemoryError, message.c_str());
  throw py::error_already_set();
}

// Re-raises a worker's exception as the matching Python exception, prefixed with the image index.
[[noreturn]] void raise_for_image(int64_t index, const std::exception_ptr& error) {
  const std::string prefix = "image " + std::to_string(index) + ": ";
  try {
    std::rethrow_exception(error);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(prefix + e.what());
  } catch (const std::bad_alloc&) {
    raise_memory_error(prefix + "out of memory while preprocessing");
  } catch (const std::exception& e) {
    throw std::runtime_error(prefix + e.what());
  }
}

// A strided view of a uint8 HxW or HxWxC (C in 1, 3, 4) array; raises naming the image index.
tte::ImageView view_of(const py::array& array, int64_t index) {
  const std::string prefix = "image " + std::to_string(index) + ": ";
  if (array.dtype().kind() != 'u' || array.itemsize() != 1) {
    throw py::type_error(prefix + "expected a uint8 array, got dtype " + std::string(py::str(array.dtype())));
  }
  if (array.ndim() != 2 && array.ndim() != 3) {
    throw py::value_error(prefix + "expected an HxW or HxWxC array, got " + std::to_string(array.ndim()) +
                          " dimensions");
  }
  tte::ImageView v;
  v.data = static_cast<const uint8_t*>(array.data());
  v.height = array.shape(0);
  v.width = array.shape(1);
  v.stride_h = array.strides(0);
  v.stride_w = array.strides(1);
  v.channels = array.ndim() == 3 ? array.shape(2) : 1;
  v.stride_c = array.ndim() == 3 ? array.strides(2) : 0;
  if (v.channels != 1 && v.channels != 3 && v.channels != 4) {
    throw py::value_error(prefix + "expected 1, 3 or 4 channels, got " + std::to_string(v.channels));
  }
  return v;
}

void check_filter(int resample) {
  if (!tte::is_convolution_filter(resample)) {
    throw py::value_error("resample must be one of PIL's convolution filters (LANCZOS=1, BILINEAR=2, "
                          "BICUBIC=3, BOX=4, HAMMING=5), got " + std::to_string(resample));
  }
}

void check_pass_order(int pass_order) {
  if (pass_order != 0 && pass_order != 1) {
    throw py::value_error("pass_order must be 0 (horizontal first) or 1 (Pillow 13 rule), got " +
                          std::to_string(pass_order));
  }
}

std::array<double, 3> three_values(const std::vector<double>& values, const char* name) {
  if (values.size() != 3) {
    throw py::value_error(std::string(name) + " must have 3 values (one per RGB channel), got " +
                          std::to_string(values.size()));
  }
  return {values[0], values[1], values[2]};
}

tte::QwenParams make_params(int64_t patch_size, int64_t temporal_patch_size, int64_t merge_size,
                            int64_t min_pixels, int64_t max_pixels, bool do_resize, int resample,
                            bool do_rescale, double rescale_factor, bool do_normalize,
                            const std::vector<double>& image_mean, const std::vector<double>& image_std,
                            int pass_order) {
  auto check_positive = [](int64_t value, const char* name, int64_t limit) {
    if (value <= 0 || value > limit) {
      throw py::value_error(std::string(name) + " must be in [1, " + std::to_string(limit) + "], got " +
                            std::to_string(value));
    }
  };
  check_positive(patch_size, "patch_size", 1 << 12);
  check_positive(temporal_patch_size, "temporal_patch_size", 1 << 8);
  check_positive(merge_size, "merge_size", 1 << 8);
  check_positive(max_pixels, "max_pixels", kMaxPixelBudget);
  if (min_pixels < 0 || min_pixels > kMaxPixelBudget) {
    throw py::value_error("min_pixels must be in [0, " + std::to_string(kMaxPixelBudget) + "], got " +
                          std::to_string(min_pixels));
  }
  if (do_resize) check_filter(resample);
  check_pass_order(pass_order);
  tte::QwenParams p;
  p.pass_order = static_cast<tte::PassOrder>(pass_order);
  p.patch_size = patch_size;
  p.temporal_patch_size = temporal_patch_size;
  p.merge_size = merge_size;
  p.min_pixels = min_pixels;
  p.max_pixels = max_pixels;
  p.do_resize = do_resize;
  p.filter = static_cast<tte::Filter>(do_resize ? resample : static_cast<int>(tte::Filter::kBicubic));
  p.lut = tte::value_lut(do_rescale, rescale_factor, do_normalize, three_values(image_mean, "image_mean"),
                         three_values(image_std, "image_std"));
  return p;
}

// A caller-given output size (video frames: Qwen3-VL sizes a video by its frame count too); raises
// unless both sides are positive multiples of patch_size * merge_size within the pixel budget.
std::pair<int64_t, int64_t> given_size(const py::handle& size, const tte::QwenParams& params, int64_t index) {
  const std::string prefix = "image " + std::to_string(index) + ": ";
  std::pair<int64_t, int64_t> hw;
  try {
    hw = size.cast<std::pair<int64_t, int64_t>>();
  } catch (const py::cast_error&) {
    throw py::type_error(prefix + "target size must be a (height, width) pair of ints");
  }
  const int64_t factor = params.patch_size * params.merge_size;
  if (hw.first <= 0 || hw.second <= 0 || hw.first % factor != 0 || hw.second % factor != 0 ||
      hw.first > kMaxPixelBudget / hw.second) {
    throw py::value_error(prefix + "target size must be positive multiples of patch_size * merge_size = " +
                          std::to_string(factor) + " within the pixel budget, got " + std::to_string(hw.first) +
                          "x" + std::to_string(hw.second));
  }
  return hw;
}

// Video frames' (row offset, temporal slot) pairs, one per image; raises naming the image.
std::vector<tte::FrameSlot> frame_slots_of(const py::object& frame_slots, int64_t n) {
  if (static_cast<int64_t>(py::len(frame_slots)) != n) {
    throw py::value_error("frame_slots must hold one (row offset, slot) per image: got " +
                          std::to_string(py::len(frame_slots)) + " for " + std::to_string(n) + " images");
  }
  std::vector<tte::FrameSlot> slots;
  for (int64_t i = 0; i < n; i++) {
    try {
      const auto pair = frame_slots[py::int_(i)].cast<std::pair<int64_t, int64_t>>();
      slots.push_back({pair.first, pair.second});
    } catch (const py::cast_error&) {
      throw py::type_error("image " + std::to_string(i) + ": a frame slot must be a (row offset, slot) pair of ints");
    }
  }
  return slots;
}

py::tuple preprocess_batch(const py::sequence& images, const tte::QwenParams& params, int64_t num_threads,
                           const py::object& target_sizes, const py::object& frame_slots) {
  const int64_t n = static_cast<int64_t>(py::len(images));
  if (n == 0) throw py::value_error("no images given");
  if (!target_sizes.is_none() && static_cast<int64_t>(py::len(target_sizes)) != n) {
    throw py::value_error("target_sizes must hold one (height, width) per image: got " +
                          std::to_string(py::len(target_sizes)) + " for " + std::to_string(n) + " images");
  }
  if (num_threads < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(num_threads));
  std::vector<py::array> arrays;  // keeps every input alive while the GIL is released
  std::vector<tte::ImageView> views;
  std::vector<std::pair<int64_t, int64_t>> sizes;
  std::vector<int64_t> row_offsets{0};
  for (int64_t i = 0; i < n; i++) {
    py::object item = images[static_cast<size_t>(i)];
    if (!py::isinstance<py::array>(item)) {
      throw py::type_error("image " + std::to_string(i) + ": expected a numpy array, got " +
                           std::string(py::str(py::type::of(item))));
    }
    arrays.push_back(py::reinterpret_borrow<py::array>(item));
    views.push_back(view_of(arrays.back(), i));
    try {
      sizes.push_back(tte::target_size(views.back(), params));
      if (!target_sizes.is_none()) sizes.back() = given_size(target_sizes[py::int_(i)], params, i);
    } catch (const std::invalid_argument& e) {
      throw py::value_error("image " + std::to_string(i) + ": " + e.what());
    }
    const int64_t patches = (sizes.back().first / params.patch_size) * (sizes.back().second / params.patch_size);
    row_offsets.push_back(row_offsets.back() + patches);
  }
  // Video frames write their own temporal copy of rows they share with their temporal patch.
  std::vector<tte::FrameSlot> slots;
  int64_t rows = row_offsets.back();
  if (!frame_slots.is_none()) {
    slots = frame_slots_of(frame_slots, n);
    std::vector<int64_t> patches(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) patches[i] = row_offsets[i + 1] - row_offsets[i];
    try {
      rows = tte::check_frame_slots(slots, patches, params.temporal_patch_size);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
    for (int64_t i = 0; i < n; i++) row_offsets[i] = slots[i].row_offset;
  }
  py::array_t<float> pixel_values({rows, params.row_size()});
  py::array_t<int64_t> grid_thw({n, int64_t{3}});
  float* out = pixel_values.mutable_data();
  auto grid = grid_thw.mutable_unchecked<2>();
  for (int64_t i = 0; i < n; i++) {
    grid(i, 0) = 1;
    grid(i, 1) = sizes[i].first / params.patch_size;
    grid(i, 2) = sizes[i].second / params.patch_size;
  }
  // Tasks are bands of output rows, so a few large images still keep every thread busy.
  struct Band {
    int64_t image, y0, y1;
  };
  std::vector<Band> bands;
  const int64_t band = tte::band_rows(params);
  for (int64_t i = 0; i < n; i++) {
    for (int64_t y0 = 0; y0 < sizes[i].first; y0 += band) {
      bands.push_back({i, y0, std::min(y0 + band, sizes[i].first)});
    }
  }
  std::vector<std::unique_ptr<tte::ResamplePlan>> plans(static_cast<size_t>(n));
  tte::TaskFailure failure;
  {
    py::gil_scoped_release release;
    failure = tte::parallel_for(n, num_threads, [&](int64_t i) {
      plans[i] = tte::plan_image(views[i], params, sizes[i].first, sizes[i].second);
    });
    if (failure.index < 0) {
      failure = tte::parallel_for(static_cast<int64_t>(bands.size()), num_threads, [&](int64_t b) {
        const Band& t = bands[b];
        tte::preprocess_band(views[t.image], params, plans[t.image].get(), sizes[t.image].second, t.y0, t.y1,
                             out + row_offsets[t.image] * params.row_size(), slots.empty() ? -1 : slots[t.image].slot);
      });
      if (failure.index >= 0) failure.index = bands[failure.index].image;
    }
  }
  if (failure.index >= 0) raise_for_image(failure.index, failure.error);
  return py::make_tuple(pixel_values, grid_thw);
}

py::array_t<uint8_t> resize_uint8(const py::array& image, int64_t height, int64_t width, int resample,
                                  int pass_order) {
  tte::ImageView v = view_of(image, 0);
  if (v.channels == 4) throw py::value_error("resize_uint8 takes grey or RGB images, got 4 channels");
  // Division, not height * width: the product of two huge sides would overflow before the test.
  if (v.height <= 0 || v.width <= 0 || v.height > tte::kMaxSide || v.width > tte::kMaxSide || height <= 0 ||
      width <= 0 || height > kMaxPixelBudget / width) {
    throw py::value_error("resize_uint8: bad sizes " + std::to_string(v.height) + "x" + std::to_string(v.width) +
                          " -> " + std::to_string(height) + "x" + std::to_string(width));
  }
  check_filter(resample);
  check_pass_order(pass_order);
  const int channels = static_cast<int>(v.channels);
  std::vector<uint8_t> copy;
  const uint8_t* source = v.data;
  if (!(v.stride_c == 1 || channels == 1) || v.stride_w != channels || v.stride_h != v.width * channels) {
    copy.resize(static_cast<size_t>(v.height * v.width * channels));
    for (int64_t y = 0, i = 0; y < v.height; y++)
      for (int64_t x = 0; x < v.width; x++)
        for (int c = 0; c < channels; c++) copy[i++] = v.at(y, x, c);
    source = copy.data();
  }
  std::vector<ssize_t> shape{height, width};
  if (image.ndim() == 3) shape.push_back(channels);
  py::array_t<uint8_t> result(shape);
  uint8_t* dst = result.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<uint8_t> scratch;
    tte::resample_interleaved(source, v.height, v.width, channels, dst, height, width,
                              static_cast<tte::Filter>(resample),
                              static_cast<tte::PassOrder>(pass_order), scratch);
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tte_fast C++ extension: batched Qwen-VL image preprocessing, CPU decode attention and decoder ops";
  tte::register_decode_attention(m);
  tte::register_decoder_ops(m);
  tte::register_amx_linear(m);
  m.def(
      "smart_resize",
      [](long height, long width, long factor, long min_pixels, long max_pixels) {
        auto hw = tte::smart_resize(height, width, factor, min_pixels, max_pixels);
        return py::make_tuple(hw.first, hw.second);
      },
      py::arg("height"), py::arg("width"), py::arg("factor") = 28, py::arg("min_pixels") = 56 * 56,
      py::arg("max_pixels") = 28 * 28 * 1280,
      "Qwen-VL smart resize: (height, width) rounded to multiples of factor within the pixel budget.");
  m.def(
      "preprocess_batch",
      [](const py::sequence& images, int64_t patch_size, int64_t temporal_patch_size, int64_t merge_size,
         int64_t min_pixels, int64_t max_pixels, bool do_resize, int resample, bool do_rescale,
         double rescale_factor, bool do_normalize, const std::vector<double>& image_mean,
         const std::vector<double>& image_std, int pass_order, int64_t num_threads,
         const py::object& target_sizes, const py::object& frame_slots) {
        const tte::QwenParams params =
            make_params(patch_size, temporal_patch_size, merge_size, min_pixels, max_pixels, do_resize, resample,
                        do_rescale, rescale_factor, do_normalize, image_mean, image_std, pass_order);
        return preprocess_batch(images, params, num_threads, target_sizes, frame_slots);
      },
      py::arg("images"), py::kw_only(), py::arg("patch_size"), py::arg("temporal_patch_size"),
      py::arg("merge_size"), py::arg("min_pixels"), py::arg("max_pixels"), py::arg("do_resize"),
      py::arg("resample"), py::arg("do_rescale"), py::arg("rescale_factor"), py::arg("do_normalize"),
      py::arg("image_mean"), py::arg("image_std"), py::arg("pass_order"), py::arg("num_threads"),
      py::arg("target_sizes") = py::none(), py::arg("frame_slots") = py::none(),
      "Qwen2-VL preprocessing of uint8 HxW / HxWxC arrays (C in 1, 3, 4) on num_threads threads with the "
      "GIL released; target_sizes (one (height, width) per image, multiples of patch_size * merge_size) replace "
      "smart-resize's sizes (the image checks still apply); frame_slots (one (row offset, temporal slot) per image, "
      "tiling the output in temporal patches of equal-size frames) writes video frames into their temporal copy "
      "of shared rows instead of duplicating each image. Returns (pixel_values float32 [patches, 3*T*P*P], image_grid_thw int64 [n, 3]).");
  m.def("set_avx2_enabled", &tte::set_avx2_enabled, py::arg("enabled"),
        "Use (True, the default where the CPU has it) or skip the AVX2 resampling path; outputs are equal.");
  m.def("avx2_enabled", &tte::avx2_enabled, "Whether the AVX2 resampling path is in use.");
  m.def("avx2_rows", &tte::avx2_rows, "Rows the AVX2 code has processed since the module loaded.");
  m.def("resize_uint8", &resize_uint8, py::arg("image"), py::arg("height"), py::arg("width"),
        py::arg("resample") = 3, py::arg("pass_order") = 1,
        "Resize a uint8 HxW or HxWx3 array exactly as PIL's Image.resize((width, height), resample); "
        "pass_order 1 follows Pillow >= 13, 0 older Pillow (always horizontal pass first).");
}
