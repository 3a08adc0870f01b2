#include "pillow_resample.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace tte {
namespace {

// Fixed-point precision of Pillow's 8-bit passes: 8 bits of result, 2 bits of headroom.
constexpr int kPrecisionBits = 32 - 8 - 2;

// The filters as Pillow writes them, constants included (hamming mixes float literals in).
double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct FilterSpec {
  double (*fn)(double);
  double support;
};

FilterSpec filter_spec(Filter filter) {
  switch (filter) {
    case Filter::kBox: return {box_filter, 0.5};
    case Filter::kBilinear: return {bilinear_filter, 1.0};
    case Filter::kHamming: return {hamming_filter, 1.0};
    case Filter::kBicubic: return {bicubic_filter, 2.0};
    case Filter::kLanczos: return {lanczos_filter, 3.0};
  }
  throw std::invalid_argument("unsupported resampling filter " + std::to_string(static_cast<int>(filter)));
}

using Coeffs = ResampleCoeffs;

Coeffs precompute_coeffs(int64_t in_size, int64_t out_size, const FilterSpec& spec) {
  // Pillow passes the box as float: in0 = 0.0f, in1 = (float)in_size.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = spec.support * filterscale;
  Coeffs c;
  c.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size * c.ksize), 0);
  std::vector<double> k(c.ksize);
  for (int64_t xx = 0; xx < out_size; xx++) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    double ww = 0.0;
    // Pillow rounds with (int)(v + 0.5), which truncates toward zero; int64 truncates the same way
    // and cannot overflow where center + support passes INT_MAX (sides near 2^31 shrunk a lot).
    int64_t xmin = static_cast<int64_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int64_t xmax = static_cast<int64_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int64_t x = 0; x < xmax; x++) {
      const double w = spec.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    int32_t* out = &c.weights[static_cast<size_t>(xx * c.ksize)];
    for (int64_t x = 0; x < xmax; x++) {
      const double v = ww != 0.0 ? k[x] / ww : k[x];
      out[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                     : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  const int32_t shifted = v >> kPrecisionBits;  // arithmetic shift, as in Pillow's lookup table
  return static_cast<uint8_t>(shifted < 0 ? 0 : (shifted > 255 ? 255 : shifted));
}

// Compile the hot loops for several x86 levels and pick one at load time (SSE4.1 / AVX2 have the
// 32-bit multiplies these loops need); elsewhere they are compiled once for the target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TTE_MULTIVERSION __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define TTE_MULTIVERSION
#endif

// Source rows for the horizontal pass: pixels of C adjacent channels, pixel_stride bytes apart
// (C for packed rows, 4 for Pillow's RGBX memory), rows row_stride bytes apart.
struct RowSource {
  const uint8_t* data;
  int64_t row_stride;
  int64_t pixel_stride;
};

// Rows [row_begin, row_end) of src, resampled along x, into dst (row_end - row_begin rows).
template <int C>
void horizontal_pass_scalar(const RowSource& src, int64_t row_begin, int64_t row_end, const Coeffs& co,
                            int64_t out_w, uint8_t* dst) {
  constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);
  for (int64_t y = row_begin; y < row_end; y++) {
    const uint8_t* row = src.data + y * src.row_stride;
    uint8_t* out = dst + (y - row_begin) * out_w * C;
    for (int64_t xx = 0; xx < out_w; xx++) {
      const int32_t* k = &co.weights[static_cast<size_t>(xx * co.ksize)];
      const uint8_t* p = row + co.first[xx] * src.pixel_stride;
      int32_t ss[C];
      for (int c = 0; c < C; c++) ss[c] = kHalf;
      const int64_t n = co.count[xx];
      for (int64_t x = 0; x < n; x++) {
        for (int c = 0; c < C; c++) ss[c] += static_cast<int32_t>(p[x * src.pixel_stride + c]) * k[x];
      }
      for (int c = 0; c < C; c++) out[xx * C + c] = clip8(ss[c]);
    }
  }
}

#if defined(__GNUC__)
typedef int32_t v4si __attribute__((vector_size(16)));
typedef uint8_t v4qu __attribute__((vector_size(4), aligned(1)));

// Multi-channel rows with all channels of a pixel in one 4-lane vector, as Pillow keeps RGB in
// 4-byte pixels: the same integer sums, a quarter of the multiplies. A pixel load reads 4 bytes, so
// for 3 channels it touches the next pixel's first byte: callers keep the buffer's last row out.
TTE_MULTIVERSION
void horizontal_rows_vec(const uint8_t* src, int64_t row_stride, int64_t pixel_stride, int channels,
                         int64_t row_begin, int64_t row_end, const int32_t* weights, const int64_t* first,
                         const int64_t* count, int64_t ksize, int64_t out_w, uint8_t* dst) {
  constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);
  for (int64_t y = row_begin; y < row_end; y++) {
    const uint8_t* row = src + y * row_stride;
    uint8_t* out = dst + (y - row_begin) * out_w * channels;
    for (int64_t xx = 0; xx < out_w; xx++, out += channels) {
      const int32_t* k = weights + xx * ksize;
      const uint8_t* p = row + first[xx] * pixel_stride;
      v4si ss = {kHalf, kHalf, kHalf, kHalf};
      for (int64_t x = 0; x < count[xx]; x++, p += pixel_stride) {
        ss += __builtin_convertvector(*reinterpret_cast<const v4qu*>(p), v4si) * k[x];
      }
      for (int c = 0; c < channels; c++) out[c] = clip8(ss[c]);
    }
  }
}

#endif

#if defined(__x86_64__) && defined(__GNUC__)
// Eight rows at a time, transposed so that one source column holds 8 rows x C channels side by side:
// then a tap is C 8-lane AVX2 multiply-adds for 8 output pixels, instead of 8 single-pixel ones.
// Returns the first row it did not process (it does a multiple of 8 rows).
template <int C>
__attribute__((target("avx2"))) int64_t horizontal_block8_avx2(const RowSource& src, int64_t in_w,
                                                               int64_t row_begin, int64_t row_end,
                                                               const Coeffs& co, int64_t out_w, uint8_t* dst) {
  constexpr int kLanes = 8 * C;
  std::vector<uint8_t> columns(static_cast<size_t>(in_w * kLanes));
  alignas(32) uint8_t packed[32 * C];
  int64_t y0 = row_begin;
  for (; y0 + 8 <= row_end; y0 += 8) {
    for (int r = 0; r < 8; r++) {
      const uint8_t* pixel = src.data + (y0 + r) * src.row_stride;
      uint8_t* col = columns.data() + r * C;
      for (int64_t x = 0; x < in_w; x++, pixel += src.pixel_stride, col += kLanes) std::memcpy(col, pixel, C);
    }
    uint8_t* out = dst + (y0 - row_begin) * out_w * C;
    for (int64_t xx = 0; xx < out_w; xx++) {
      const int32_t* k = &co.weights[static_cast<size_t>(xx * co.ksize)];
      const uint8_t* p = columns.data() + co.first[xx] * kLanes;
      __m256i acc[C];
      for (int v = 0; v < C; v++) acc[v] = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
      for (int64_t t = 0; t < co.count[xx]; t++, p += kLanes) {
        const __m256i w = _mm256_set1_epi32(k[t]);
        for (int v = 0; v < C; v++) {
          const __m256i px = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * v)));
          acc[v] = _mm256_add_epi32(acc[v], _mm256_mullo_epi32(px, w));
        }
      }
      // clip8 for all lanes: arithmetic shift, then saturate to int16 and to 0..255.
      for (int v = 0; v < C; v++) {
        const __m256i shifted = _mm256_srai_epi32(acc[v], kPrecisionBits);
        const __m256i words = _mm256_packs_epi32(shifted, shifted);   // per 128-bit half
        const __m256i bytes = _mm256_packus_epi16(words, words);
        const uint32_t low = static_cast<uint32_t>(_mm256_extract_epi32(bytes, 0));
        const uint32_t high = static_cast<uint32_t>(_mm256_extract_epi32(bytes, 4));
        std::memcpy(packed + 8 * v, &low, 4);
        std::memcpy(packed + 8 * v + 4, &high, 4);
      }
      for (int r = 0; r < 8; r++) std::memcpy(out + r * out_w * C + xx * C, packed + r * C, C);
    }
  }
  return y0;
}

int64_t horizontal_rows_blocked(const RowSource& src, int channels, int64_t in_w, int64_t row_begin,
                                int64_t row_end, const Coeffs& co, int64_t out_w, uint8_t* dst) {
  if (!avx2_enabled()) return row_begin;
  int64_t done = row_begin;
  switch (channels) {
    case 1: done = horizontal_block8_avx2<1>(src, in_w, row_begin, row_end, co, out_w, dst); break;
    case 3: done = horizontal_block8_avx2<3>(src, in_w, row_begin, row_end, co, out_w, dst); break;
    case 4: done = horizontal_block8_avx2<4>(src, in_w, row_begin, row_end, co, out_w, dst); break;
    default: break;
  }
  count_avx2_rows(done - row_begin);
  return done;
}
#else
int64_t horizontal_rows_blocked(const RowSource&, int, int64_t, int64_t row_begin, int64_t, const Coeffs&,
                                int64_t, uint8_t*) {
  return row_begin;
}
#endif

// src_rows: rows the source has (the 4-lane path must not read past the end of its last row).
template <int C>
void horizontal_pass(const RowSource& src, int64_t src_rows, int64_t in_w, int64_t row_begin, int64_t row_end,
                     const Coeffs& co, int64_t out_w, uint8_t* dst) {
#if defined(__GNUC__)
  const int64_t blocked_end = horizontal_rows_blocked(src, C, in_w, row_begin, row_end, co, out_w, dst);
  dst += (blocked_end - row_begin) * out_w * C;
  row_begin = blocked_end;
  if constexpr (C >= 3) {
    const int64_t vec_end = std::max(row_begin, std::min(row_end, src_rows - 1));
    horizontal_rows_vec(src.data, src.row_stride, src.pixel_stride, C, row_begin, vec_end, co.weights.data(),
                        co.first.data(), co.count.data(), co.ksize, out_w, dst);
    dst += (vec_end - row_begin) * out_w * C;
    row_begin = vec_end;
  }
#endif
  horizontal_pass_scalar<C>(src, row_begin, row_end, co, out_w, dst);
}

// Every output row is a weighted sum of whole input rows: accumulate row by row so the inner loop
// runs over contiguous bytes. Per pixel the taps are added in Pillow's order, so sums are equal.
TTE_MULTIVERSION
void vertical_pass(const uint8_t* src, int64_t row_len, const Coeffs& co, int64_t row_offset, int64_t yy_begin,
                   int64_t yy_end, uint8_t* dst) {
  constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);
  std::vector<int32_t> acc(static_cast<size_t>(row_len));
  for (int64_t yy = yy_begin; yy < yy_end; yy++) {
    std::fill(acc.begin(), acc.end(), kHalf);
    const int32_t* k = &co.weights[static_cast<size_t>(yy * co.ksize)];
    const int64_t first = co.first[yy] - row_offset;
    for (int64_t y = 0; y < co.count[yy]; y++) {
      const uint8_t* row = src + (first + y) * row_len;
      const int32_t w = k[y];
      int32_t* a = acc.data();
      for (int64_t i = 0; i < row_len; i++) a[i] += static_cast<int32_t>(row[i]) * w;
    }
    uint8_t* out = dst + (yy - yy_begin) * row_len;
    for (int64_t i = 0; i < row_len; i++) out[i] = clip8(acc[i]);
  }
}

}  // namespace

namespace {
#if defined(__x86_64__) && defined(__GNUC__)
std::atomic<bool> g_avx2{__builtin_cpu_supports("avx2") != 0};
#else
std::atomic<bool> g_avx2{false};
#endif
}  // namespace

void set_avx2_enabled(bool enabled) {
#if defined(__x86_64__) && defined(__GNUC__)
  g_avx2 = enabled && __builtin_cpu_supports("avx2");
#else
  (void)enabled;
#endif
}

bool avx2_enabled() { return g_avx2.load(std::memory_order_relaxed); }

namespace {
std::atomic<int64_t> g_avx2_rows{0};
}  // namespace

void count_avx2_rows(int64_t rows) { g_avx2_rows.fetch_add(rows, std::memory_order_relaxed); }

int64_t avx2_rows() { return g_avx2_rows.load(std::memory_order_relaxed); }

bool is_convolution_filter(int resample) { return resample >= 1 && resample <= 5; }

ResamplePlan::ResamplePlan(int64_t in_h_, int64_t in_w_, int64_t out_h_, int64_t out_w_, Filter filter,
                           PassOrder order)
    : in_h(in_h_), in_w(in_w_), out_h(out_h_), out_w(out_w_) {
  if (in_h <= 0 || in_w <= 0 || out_h <= 0 || out_w <= 0) {
    throw std::invalid_argument("cannot resample an empty image (" + std::to_string(in_h) + "x" +
                                std::to_string(in_w) + " -> " + std::to_string(out_h) + "x" +
                                std::to_string(out_w) + ")");
  }
  const FilterSpec spec = filter_spec(filter);
  horizontal_ = out_w != in_w;
  vertical_ = out_h != in_h;
  vertical_first_ = horizontal_ && vertical_ && order == PassOrder::kPillow13 && out_h < in_h &&
                    in_h - out_h > 2 * (in_w - out_w);
  if (horizontal_) horiz_ = precompute_coeffs(in_w, out_w, spec);
  if (vertical_) vert_ = precompute_coeffs(in_h, out_h, spec);
}

std::pair<int64_t, int64_t> ResamplePlan::source_rows(int64_t y0, int64_t y1) const {
  if (!vertical_) return {y0, y1};
  int64_t last = 0;
  for (int64_t yy = y0; yy < y1; yy++) last = std::max(last, vert_.first[yy] + vert_.count[yy]);
  return {vert_.first[y0], last};
}

template <int C>
void ResamplePlan::run_rows(const uint8_t* src, int64_t row_stride, int64_t pixel_stride, int64_t y0, int64_t y1,
                            uint8_t* dst, std::vector<uint8_t>& scratch) const {
  const auto [first, last] = source_rows(y0, y1);
  const int64_t rows = last - first;
  const RowSource source{src, row_stride, pixel_stride};
  if (!horizontal_ && !vertical_) {
    std::memcpy(dst, src, static_cast<size_t>(rows * in_w * C));
  } else if (!horizontal_) {
    vertical_pass(src, in_w * C, vert_, first, y0, y1, dst);
  } else if (!vertical_) {
    horizontal_pass<C>(source, rows, in_w, 0, rows, horiz_, out_w, dst);
  } else if (vertical_first_) {
    scratch.resize(static_cast<size_t>((y1 - y0) * in_w * C));
    vertical_pass(src, in_w * C, vert_, first, y0, y1, scratch.data());
    horizontal_pass<C>({scratch.data(), in_w * C, C}, y1 - y0, in_w, 0, y1 - y0, horiz_, out_w, dst);
  } else {
    // Like Pillow, resample horizontally only the rows the vertical pass reads.
    scratch.resize(static_cast<size_t>(rows * out_w * C));
    horizontal_pass<C>(source, rows, in_w, 0, rows, horiz_, out_w, scratch.data());
    vertical_pass(scratch.data(), out_w * C, vert_, first, y0, y1, dst);
  }
}

void ResamplePlan::run(const uint8_t* src, int channels, int64_t y0, int64_t y1, uint8_t* dst,
                       std::vector<uint8_t>& scratch) const {
  run_strided(src, in_w * channels, channels, channels, y0, y1, dst, scratch);
}

void ResamplePlan::run_strided(const uint8_t* src, int64_t row_stride, int64_t pixel_stride, int channels,
                               int64_t y0, int64_t y1, uint8_t* dst, std::vector<uint8_t>& scratch) const {
  if (y0 < 0 || y1 > out_h || y0 >= y1) {
    throw std::invalid_argument("bad output rows [" + std::to_string(y0) + ", " + std::to_string(y1) + ")");
  }
  const bool packed = row_stride == in_w * channels && pixel_stride == channels;
  if (!packed && !(reads_source_horizontally() && pixel_stride >= channels && row_stride > 0)) {
    throw std::invalid_argument("strided sources are read by the horizontal pass only");
  }
  switch (channels) {
    case 1: return run_rows<1>(src, row_stride, pixel_stride, y0, y1, dst, scratch);
    case 3: return run_rows<3>(src, row_stride, pixel_stride, y0, y1, dst, scratch);
    case 4: return run_rows<4>(src, row_stride, pixel_stride, y0, y1, dst, scratch);
    default: throw std::invalid_argument("resampling supports 1, 3 or 4 channels, got " + std::to_string(channels));
  }
}

void resample_interleaved(const uint8_t* src, int64_t in_h, int64_t in_w, int channels, uint8_t* dst,
                          int64_t out_h, int64_t out_w, Filter filter, PassOrder order,
                          std::vector<uint8_t>& scratch) {
  const ResamplePlan plan(in_h, in_w, out_h, out_w, filter, order);
  plan.run(src + plan.source_rows(0, out_h).first * in_w * channels, channels, 0, out_h, dst, scratch);
}

}  // namespace tte
