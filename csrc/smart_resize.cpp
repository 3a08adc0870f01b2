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
  if (factor <= 0) throw std::invalid_argument("factor must be positive, got " + std::to_string(factor));
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
