#include "qwen_preprocess.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "smart_resize.h"

namespace tte {
namespace {

// transformers' convert_to_rgb for a uint8 RGBA array: alpha = a / 255 (float64),
// rgb = round_half_even(alpha * v + (1 - alpha) * 255). Tabulated once for all (a, v).
const std::vector<uint8_t>& alpha_composite_table() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(256 * 256);
    for (int a = 0; a < 256; a++) {
      const double alpha = a / 255.0;
      for (int v = 0; v < 256; v++) {
        const double composite = alpha * v + (1 - alpha) * 255.0;
        t[a * 256 + v] = static_cast<uint8_t>(std::nearbyint(composite));
      }
    }
    return t;
  }();
  return table;
}

// A contiguous copy with 1 channel (grey: Pillow's L -> RGB only replicates, and resampling is per
// channel, so grey images are resampled once) or 3 channels (RGB, and RGBA composited onto white).
// Returns the pointer to use: the image's own memory when it is already contiguous RGB.
const uint8_t* contiguous_source(const ImageView& im, std::vector<uint8_t>& buffer, int& channels) {
  if (im.is_contiguous_rgb()) {
    channels = 3;
    return im.data;
  }
  channels = im.channels == 1 ? 1 : 3;
  buffer.resize(static_cast<size_t>(im.height * im.width * channels));
  uint8_t* out = buffer.data();
  if (im.channels == 4) {
    const uint8_t* table = alpha_composite_table().data();
    for (int64_t y = 0; y < im.height; y++) {
      for (int64_t x = 0; x < im.width; x++, out += 3) {
        const uint8_t* row = table + 256 * im.at(y, x, 3);
        for (int c = 0; c < 3; c++) out[c] = row[im.at(y, x, c)];
      }
    }
  } else {
    for (int64_t y = 0; y < im.height; y++) {
      for (int64_t x = 0; x < im.width; x++, out += channels) {
        for (int c = 0; c < channels; c++) out[c] = im.at(y, x, c);
      }
    }
  }
  return buffer.data();
}

// Rows in HF order: merge blocks (gh/m, gw/m), then (mh, mw) inside a block; each row is
// (channel, temporal copy, patch y, patch x).
void write_patches(const uint8_t* pixels, int channels, int64_t height, int64_t width, const QwenParams& p,
                   float* out) {
  const int64_t P = p.patch_size, T = p.temporal_patch_size, M = p.merge_size;
  const int64_t grid_h = height / P, grid_w = width / P;
  const int64_t plane = P * P;
  float* dst = out;
  for (int64_t bh = 0; bh < grid_h / M; bh++) {
    for (int64_t bw = 0; bw < grid_w / M; bw++) {
      for (int64_t mh = 0; mh < M; mh++) {
        for (int64_t mw = 0; mw < M; mw++, dst += p.row_size()) {
          const int64_t y0 = (bh * M + mh) * P, x0 = (bw * M + mw) * P;
          for (int64_t c = 0; c < 3; c++) {
            const float* lut = p.lut[c].data();
            const int64_t src_c = channels == 1 ? 0 : c;
            float* first = dst + c * T * plane;
            for (int64_t py = 0; py < P; py++) {
              const uint8_t* src = pixels + ((y0 + py) * width + x0) * channels + src_c;
              float* d = first + py * P;
              for (int64_t px = 0; px < P; px++) d[px] = lut[src[px * channels]];
            }
            for (int64_t t = 1; t < T; t++) std::memcpy(first + t * plane, first, sizeof(float) * plane);
          }
        }
      }
    }
  }
}

}  // namespace

std::array<std::array<float, 256>, 3> value_lut(bool do_rescale, double rescale_factor, bool do_normalize,
                                                const std::array<double, 3>& mean,
                                                const std::array<double, 3>& std) {
  std::array<std::array<float, 256>, 3> lut{};
  for (int c = 0; c < 3; c++) {
    const float m = static_cast<float>(mean[c]);
    const float s = static_cast<float>(std[c]);
    for (int v = 0; v < 256; v++) {
      float x = do_rescale ? static_cast<float>(static_cast<double>(v) * rescale_factor) : static_cast<float>(v);
      if (do_normalize) x = (x - m) / s;
      lut[c][v] = x;
    }
  }
  return lut;
}

std::pair<int64_t, int64_t> target_size(const ImageView& image, const QwenParams& p) {
  if (image.height <= 0 || image.width <= 0) {
    throw std::invalid_argument("image has zero size: height=" + std::to_string(image.height) +
                                ", width=" + std::to_string(image.width));
  }
  const int64_t factor = p.patch_size * p.merge_size;
  if (p.do_resize) {
    const auto hw = smart_resize(image.height, image.width, factor, p.min_pixels, p.max_pixels);
    return {hw.first, hw.second};
  }
  if (image.height % factor != 0 || image.width % factor != 0) {
    throw std::invalid_argument("with do_resize=False the image size must be a multiple of patch_size * "
                                "merge_size = " + std::to_string(factor) + ", got height=" +
                                std::to_string(image.height) + ", width=" + std::to_string(image.width));
  }
  return {image.height, image.width};
}

void preprocess_image(const ImageView& image, const QwenParams& p, int64_t out_h, int64_t out_w, float* out) {
  std::vector<uint8_t> source_buffer, resized, scratch;
  int channels = 3;
  const uint8_t* source = contiguous_source(image, source_buffer, channels);
  const uint8_t* pixels = source;
  if (out_h != image.height || out_w != image.width) {
    resized.resize(static_cast<size_t>(out_h * out_w * channels));
    resample_interleaved(source, image.height, image.width, channels, resized.data(), out_h, out_w, p.filter,
                         p.pass_order, scratch);
    pixels = resized.data();
  }
  write_patches(pixels, channels, out_h, out_w, p, out);
}

}  // namespace tte
