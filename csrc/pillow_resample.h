// Pillow's convolution resampling on uint8 images, reproduced bit for bit.
//
// Pillow (src/libImaging/Resample.c) builds per-output-pixel filter weights in double precision,
// normalises them to sum 1, rounds them to 22-bit fixed point, and runs a horizontal pass then a
// vertical pass, each accumulating int32 sums (starting at half a unit) and clipping to 0..255.
// The intermediate image is uint8, so both passes must be reproduced exactly, in the same order:
// Pillow 13 runs the vertical pass first when the height shrinks, by more than twice as many pixels
// as the width shrinks (Pillow PR #9549); older versions always run the horizontal pass first.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace tte {

// Values of PIL.Image.Resampling; NEAREST is not a convolution and is not handled here.
enum class Filter : int { kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

bool is_convolution_filter(int resample);

// The AVX2 horizontal pass is used when the CPU has AVX2; switching it off (tests do, to check the
// portable path against Pillow on the same machine) changes speed only, never the bytes.
void set_avx2_enabled(bool enabled);
bool avx2_enabled();
// Rows the AVX2 code has processed since load (resampling blocks and RGBX conversion): lets tests
// see that the AVX2 path really ran, not only that it was switched on.
void count_avx2_rows(int64_t rows);
int64_t avx2_rows();

enum class PassOrder : int {
  kHorizontalFirst = 0,  // Pillow <= 12
  kPillow13 = 1,         // vertical first iff out_h < in_h and in_h - out_h > 2 * (in_w - out_w)
};

// Per output pixel along one axis: first input index, tap count and ksize int32 weights (Pillow's
// precompute_coeffs followed by normalize_coeffs_8bpc, for the full-image box).
struct ResampleCoeffs {
  int64_t ksize = 0;
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<int32_t> weights;
};

// One resize as Pillow does it: which passes run, in which order, with which weights. Output rows
// depend only on a band of source rows, so bands can be resampled independently (in parallel) and
// give the bytes of the whole-image resize.
class ResamplePlan {
 public:
  ResamplePlan(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, Filter filter, PassOrder order);

  // Source rows [first, last) that output rows [y0, y1) are computed from.
  std::pair<int64_t, int64_t> source_rows(int64_t y0, int64_t y1) const;

  // Output rows [y0, y1) of a contiguous HxWxC image (C = 1, 3 or 4), written to dst (contiguous).
  // src points at source row source_rows(y0, y1).first. scratch holds the intermediate rows.
  void run(const uint8_t* src, int channels, int64_t y0, int64_t y1, uint8_t* dst,
           std::vector<uint8_t>& scratch) const;

  // True when only the horizontal pass reads the source: it may then be strided (run_strided).
  bool reads_source_horizontally() const { return horizontal_ && !(vertical_ && vertical_first_); }

  // run() on a source whose pixels (C adjacent channels) lie pixel_stride bytes apart and rows
  // row_stride bytes apart, e.g. Pillow's RGBX memory, read without a packed copy.
  void run_strided(const uint8_t* src, int64_t row_stride, int64_t pixel_stride, int channels, int64_t y0,
                   int64_t y1, uint8_t* dst, std::vector<uint8_t>& scratch) const;

  int64_t in_h, in_w, out_h, out_w;

 private:
  template <int C>
  void run_rows(const uint8_t* src, int64_t row_stride, int64_t pixel_stride, int64_t y0, int64_t y1, uint8_t* dst,
                std::vector<uint8_t>& scratch) const;

  bool horizontal_, vertical_, vertical_first_;
  ResampleCoeffs horiz_, vert_;
};

// The whole image: exactly the bytes of PIL's Image.resize((out_w, out_h), filter).
void resample_interleaved(const uint8_t* src, int64_t in_h, int64_t in_w, int channels, uint8_t* dst,
                          int64_t out_h, int64_t out_w, Filter filter, PassOrder order,
                          std::vector<uint8_t>& scratch);

}  // namespace tte
