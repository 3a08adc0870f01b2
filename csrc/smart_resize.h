// Qwen-VL smart resize, with the same rounding and errors as transformers' smart_resize.
#pragma once
#include <utility>

namespace tte {

// Returns the resized (height, width); throws std::invalid_argument on a zero-size image or an
// aspect ratio over 200 (the messages match the HF processor's).
std::pair<long, long> smart_resize(long height, long width, long factor, long min_pixels, long max_pixels);

}  // namespace tte
