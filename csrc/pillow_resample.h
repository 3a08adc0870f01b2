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
#include <vector>

namespace tte {

// Values of PIL.Image.Resampling; NEAREST is not a convolution and is not handled here.
enum class Filter : int { kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

bool is_convolution_filter(int resample);

// The AVX2 horizontal pass is used when the CPU has AVX2; switching it off (tests do, to check the
// portable path against Pillow on the same machine) changes speed only, never the bytes.
void set_avx2_enabled(bool enabled);
bool avx2_enabled();

enum class PassOrder : int {
  kHorizontalFirst = 0,  // Pillow <= 12
  kPillow13 = 1,         // vertical first iff out_h < in_h and in_h - out_h > 2 * (in_w - out_w)
};

// Resize a contiguous HxWxC uint8 image (C interleaved channels) to out_h x out_w, giving exactly
// the bytes of PIL's Image.resize((out_w, out_h), filter) on the same image. `scratch` holds the
// intermediate image between the two passes and is reused across calls.
void resample_interleaved(const uint8_t* src, int64_t in_h, int64_t in_w, int channels, uint8_t* dst,
                          int64_t out_h, int64_t out_w, Filter filter, PassOrder order,
                          std::vector<uint8_t>& scratch);

}  // namespace tte
