// A borrowed, strided view of a uint8 image (HxWxC), as numpy describes any array layout.
#pragma once
#include <cstdint>

namespace tte {

struct ImageView {
  const uint8_t* data = nullptr;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;  // 1 (grey), 3 (RGB) or 4 (RGBA)
  // Byte strides; any sign (flipped arrays) or zero (broadcast arrays) is fine.
  int64_t stride_h = 0;
  int64_t stride_w = 0;
  int64_t stride_c = 0;

  uint8_t at(int64_t y, int64_t x, int64_t c) const { return data[y * stride_h + x * stride_w + c * stride_c]; }

  bool is_contiguous_rgb() const {
    return channels == 3 && stride_c == 1 && stride_w == 3 && (height == 1 || stride_h == 3 * width);
  }
};

}  // namespace tte
