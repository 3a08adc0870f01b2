// The Qwen2-VL image processor's per-image work (RGB conversion, smart-resize, Pillow resampling,
// rescale + normalise, temporal duplication and merge-ordered patch flattening), written straight
// into rows of one preallocated float32 buffer.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "image_view.h"
#include "pillow_resample.h"

namespace tte {

struct QwenParams {
  int64_t patch_size = 14;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;
  int64_t min_pixels = 56 * 56;
  int64_t max_pixels = 28 * 28 * 1280;
  bool do_resize = true;
  Filter filter = Filter::kBicubic;
  PassOrder pass_order = PassOrder::kPillow13;  // match the Pillow the reference processor runs on
  // lut[c][v]: the float32 value a resized byte v of channel c becomes (rescale then normalise).
  std::array<std::array<float, 256>, 3> lut{};

  int64_t row_size() const { return 3 * temporal_patch_size * patch_size * patch_size; }
};

// The lookup table for the HF float32 order of operations:
// x = float32(float64(v) * rescale_factor) when rescaling, else float32(v);
// then (x - float32(mean[c])) / float32(std[c]) in float32 when normalising.
std::array<std::array<float, 256>, 3> value_lut(bool do_rescale, double rescale_factor, bool do_normalize,
                                                const std::array<double, 3>& mean,
                                                const std::array<double, 3>& std);

// (height, width) after resizing; throws std::invalid_argument for zero-size images, sides over
// kMaxSide, aspect ratios over 200, or (without resizing) sizes that are not multiples of
// patch_size * merge_size.
std::pair<int64_t, int64_t> target_size(const ImageView& image, const QwenParams& params);

// Output rows per parallel task: a multiple of patch_size * merge_size (whole merge blocks), near
// 128 rows, so a batch of a few large images still spreads over many threads.
int64_t band_rows(const QwenParams& params);

// The resize of one image (nullptr when its size does not change).
std::unique_ptr<ResamplePlan> plan_image(const ImageView& image, const QwenParams& params, int64_t out_h,
                                         int64_t out_w);

// Output rows [y0, y1) of one image (y0, y1 multiples of patch_size * merge_size): its rows of
// patches, written at `out`, the image's first row of params.row_size() floats. `temporal_slot` < 0
// (an image) writes each patch into every temporal copy; >= 0 (a video frame) into that copy only.
void preprocess_band(const ImageView& image, const QwenParams& params, const ResamplePlan* plan, int64_t out_w,
                     int64_t y0, int64_t y1, float* out, int64_t temporal_slot = -1);

}  // namespace tte
