#include "qwen_preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "smart_resize.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__) && defined(__GNUC__)
// 4 pixels per shuffle. A 16-byte store writes 4 bytes past the 12 it fills, which the next store
// overwrites; the loop stops early enough that no store passes the row's end.
__attribute__((target("avx2"))) void rgbx_row_to_rgb_avx2(const uint8_t* src, int64_t width, uint8_t* dst) {
  const __m128i drop_x = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  int64_t x = 0;
  for (; x + 6 <= width; x += 4) {
    const __m128i pixels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 4 * x));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 3 * x), _mm_shuffle_epi8(pixels, drop_x));
  }
  for (; x < width; x++) std::memcpy(dst + 3 * x, src + 4 * x, 3);
}
#endif

// One row of 4-byte RGBX pixels as 3-byte RGB ones.
void rgbx_row_to_rgb(const uint8_t* src, int64_t width, uint8_t* dst) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2_enabled()) {
    count_avx2_rows(1);
    return rgbx_row_to_rgb_avx2(src, width, dst);
  }
#endif
  for (int64_t x = 0; x < width; x++) std::memcpy(dst + 3 * x, src + 4 * x, 3);
}

// Rows [row_begin, row_end) as a contiguous copy with 1 channel (grey: Pillow's L -> RGB only
// replicates, and resampling is per channel, so grey images are resampled once) or 3 channels (RGB,
// and RGBA composited onto white). Returns the pointer to use: the image's own memory when it is
// already contiguous RGB.
const uint8_t* contiguous_rows(const ImageView& im, int64_t row_begin, int64_t row_end, std::vector<uint8_t>& buffer,
                               int& channels) {
  if (im.is_contiguous_rgb()) {
    channels = 3;
    return im.data + row_begin * im.stride_h;
  }
  channels = im.channels == 1 ? 1 : 3;
  buffer.resize(static_cast<size_t>((row_end - row_begin) * im.width * channels));
  uint8_t* out = buffer.data();
  if (im.channels == 4) {
    const uint8_t* table = alpha_composite_table().data();
    for (int64_t y = row_begin; y < row_end; y++) {
      for (int64_t x = 0; x < im.width; x++, out += 3) {
        const uint8_t* row = table + 256 * im.at(y, x, 3);
        for (int c = 0; c < 3; c++) out[c] = row[im.at(y, x, c)];
      }
    }
  } else if (channels == 3 && im.stride_c == 1 && im.stride_w == 4) {
    // RGBX pixels (Pillow's memory).
    for (int64_t y = row_begin; y < row_end; y++, out += 3 * im.width) {
      rgbx_row_to_rgb(im.data + y * im.stride_h, im.width, out);
    }
  } else if (im.stride_c == 1 || channels == 1) {
    // Pixels with adjacent channels at any pixel stride (e.g. every other pixel), grey rows.
    for (int64_t y = row_begin; y < row_end; y++) {
      const uint8_t* pixel = im.data + y * im.stride_h;
      for (int64_t x = 0; x < im.width; x++, out += channels, pixel += im.stride_w) {
        for (int c = 0; c < channels; c++) out[c] = pixel[c];
      }
    }
  } else {
    for (int64_t y = row_begin; y < row_end; y++) {
      for (int64_t x = 0; x < im.width; x++, out += channels) {
        for (int c = 0; c < channels; c++) out[c] = im.at(y, x, c);
      }
    }
  }
  return buffer.data();
}

// Rows of merge blocks [block_begin, block_end) in HF order: merge blocks (gh/m, gw/m), then (mh, mw)
// inside a block; each row is (channel, temporal copy, patch y, patch x). `pixels` starts at the
// first pixel row of block_begin; `out` at the image's first patch row. An image fills every
// temporal copy (`slot` < 0); a video frame only its own (`slot`), its neighbours fill the others.
void write_patches(const uint8_t* pixels, int channels, int64_t width, int64_t block_begin, int64_t block_end,
                   const QwenParams& p, float* out, int64_t slot) {
  const int64_t P = p.patch_size, T = p.temporal_patch_size, M = p.merge_size;
  const int64_t blocks_w = width / P / M;
  const int64_t plane = P * P;
  float* dst = out + block_begin * blocks_w * M * M * p.row_size();
  for (int64_t bh = block_begin; bh < block_end; bh++) {
    for (int64_t bw = 0; bw < blocks_w; bw++) {
      for (int64_t mh = 0; mh < M; mh++) {
        for (int64_t mw = 0; mw < M; mw++, dst += p.row_size()) {
          const int64_t y0 = ((bh - block_begin) * M + mh) * P, x0 = (bw * M + mw) * P;
          for (int64_t c = 0; c < 3; c++) {
            const float* lut = p.lut[c].data();
            const int64_t src_c = channels == 1 ? 0 : c;
            float* first = dst + c * T * plane + std::max<int64_t>(slot, 0) * plane;
            for (int64_t py = 0; py < P; py++) {
              const uint8_t* src = pixels + ((y0 + py) * width + x0) * channels + src_c;
              float* d = first + py * P;
              for (int64_t px = 0; px < P; px++) d[px] = lut[src[px * channels]];
            }
            for (int64_t t = 1; t < T && slot < 0; t++) {
              std::memcpy(first + t * plane, first, sizeof(float) * plane);
            }
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
  if (image.height > kMaxSide || image.width > kMaxSide) {
    throw std::invalid_argument("image sides must be at most " + std::to_string(kMaxSide) + ", got height=" +
                                std::to_string(image.height) + ", width=" + std::to_string(image.width));
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

int64_t band_rows(const QwenParams& p) {
  const int64_t factor = p.patch_size * p.merge_size;
  return factor * std::max<int64_t>(1, 128 / factor);
}

std::unique_ptr<ResamplePlan> plan_image(const ImageView& image, const QwenParams& p, int64_t out_h,
                                         int64_t out_w) {
  if (out_h == image.height && out_w == image.width) return nullptr;
  return std::make_unique<ResamplePlan>(image.height, image.width, out_h, out_w, p.filter, p.pass_order);
}

void preprocess_band(const ImageView& image, const QwenParams& p, const ResamplePlan* plan, int64_t out_w,
                     int64_t y0, int64_t y1, float* out, int64_t temporal_slot) {
  std::vector<uint8_t> source_buffer, resized, scratch;
  const auto [row_begin, row_end] = plan ? plan->source_rows(y0, y1) : std::pair<int64_t, int64_t>{y0, y1};
  int channels = 3;
  const uint8_t* pixels = nullptr;
  // Pillow's RGBX rows go straight into the horizontal pass, without a packed copy.
  const bool rgbx = image.channels == 3 && image.stride_c == 1 && image.stride_w == 4 && image.stride_h > 0;
  if (plan && rgbx && plan->reads_source_horizontally()) {
    resized.resize(static_cast<size_t>((y1 - y0) * out_w * channels));
    plan->run_strided(image.data + row_begin * image.stride_h, image.stride_h, 4, 3, y0, y1, resized.data(),
                      scratch);
    pixels = resized.data();
  } else {
    pixels = contiguous_rows(image, row_begin, row_end, source_buffer, channels);
    if (plan) {
      resized.resize(static_cast<size_t>((y1 - y0) * out_w * channels));
      plan->run(pixels, channels, y0, y1, resized.data(), scratch);
      pixels = resized.data();
    }
  }
  const int64_t block = p.patch_size * p.merge_size;
  write_patches(pixels, channels, out_w, y0 / block, y1 / block, p, out, temporal_slot);
}

}  // namespace tte
