#include "smart_resize.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace tte {

// Python's round() rounds half to even; std::nearbyint does the same in the default rounding mode.
static long round_half_even(double x) { return static_cast<long>(std::nearbyint(x)); }

std::pair<long, long> smart_resize(long height, long width, long factor, long min_pixels, long max_pixels) {
  if (height <= 0 || width <= 0) {
    throw std::invalid_argument("image has zero size: height=" + std::to_string(height) +
                                ", width=" + std::to_string(width));
  }
  // Bounds that keep h_bar * w_bar and the casts below inside a long (Pillow sides are ints too).
  if (height > kMaxSide || width > kMaxSide) {
    throw std::invalid_argument("image sides must be at most " + std::to_string(kMaxSide) +
                                ", got height=" + std::to_string(height) + ", width=" + std::to_string(width));
  }
  if (factor <= 0 || factor > kMaxFactor) {
    throw std::invalid_argument("factor must be in [1, " + std::to_string(kMaxFactor) + "], got " +
                                std::to_string(factor));
  }
  if (min_pixels < 0 || min_pixels > kMaxPixels || max_pixels < 1 || max_pixels > kMaxPixels) {
    throw std::invalid_argument("min_pixels must be in [0, 2^40] and max_pixels in [1, 2^40], got " +
                                std::to_string(min_pixels) + " and " + std::to_string(max_pixels));
  }
  const double ratio = static_cast<double>(std::max(height, width)) / std::min(height, width);
  if (ratio > 200.0) {
    throw std::invalid_argument("absolute aspect ratio must be smaller than 200, got " + std::to_string(ratio));
  }
  long h_bar = round_half_even(static_cast<double>(height) / factor) * factor;
  long w_bar = round_half_even(static_cast<double>(width) / factor) * factor;
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(static_cast<double>(height) * width / max_pixels);
    h_bar = std::max(factor, static_cast<long>(std::floor(height / beta / factor)) * factor);
    w_bar = std::max(factor, static_cast<long>(std::floor(width / beta / factor)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / (static_cast<double>(height) * width));
    h_bar = static_cast<long>(std::ceil(height * beta / factor)) * factor;
    w_bar = static_cast<long>(std::ceil(width * beta / factor)) * factor;
  }
  return {h_bar, w_bar};
}

}  // namespace tte
