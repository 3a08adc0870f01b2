// Qwen-VL smart resize, with the same rounding and errors as transformers' smart_resize.
#pragma once
#include <utility>

namespace tte {

constexpr long kMaxSide = 2147483647;  // Pillow's int sizes; the resampler rounds in int as Pillow does
constexpr long kMaxFactor = 1L << 20;
constexpr long kMaxPixels = 1L << 40;

// Returns the resized (height, width); throws std::invalid_argument on a zero-size image or an
// aspect ratio over 200 (the messages match the HF processor's), and on sides, factor or pixel
// budgets beyond the bounds above.
std::pair<long, long> smart_resize(long height, long width, long factor, long min_pixels, long max_pixels);

}  // namespace tte
