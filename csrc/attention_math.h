// Scalar helpers shared by the decode attention's portable and AVX-512 paths: float32 / bfloat16
// loads and stores (round to nearest even, as torch converts), exp for non-positive arguments and
// the prefetch of key / value columns.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tte {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;  // bfloat16 is float32's upper half
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t nearest_even = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // as torch's conversion
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;                           // NaN stays NaN
  p[i] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : nearest_even);  // branch-free
}

// Cody-Waite split of ln 2 and the degree-7 Taylor coefficients of exp(r), |r| <= ln2 / 2 (relative
// error under 2e-7); the AVX-512 path evaluates the same polynomial on 16 lanes.
constexpr float kLog2e = 1.44269504088896341f, kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
constexpr float kExpCoefficients[8] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                       1.0f / 6.0f,    0.5f,          1.0f,          1.0f};

// exp(x) for x <= 0 in a form the compiler vectorises (libm's expf is a scalar call per score, which
// dominated the kernel): x = n ln2 + r, exp(r) by the polynomial, times 2^n built in the exponent bits.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);  // 2^-126 and below: 0 for our sums (and no denormal exponent bits)
  const float n = std::floor(x * kLog2e + 0.5f);
  const float r = (x - n * kLn2High) - n * kLn2Low;
  float p = kExpCoefficients[0];
  for (int i = 1; i < 8; i++) p = p * r + kExpCoefficients[i];
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Asks for the cache lines of columns first .. first + count - 1 (`stride` elements apart, `bytes`
// each) ahead of their use: both paths' keys and values come from memory on every step (see
// decode_attention_avx512.cpp).
template <typename T>
inline void prefetch_columns(const T* columns, int64_t stride, int64_t first, int64_t count, int64_t bytes) {
  for (int64_t j = first; j < first + count; j++) {
    const char* column = reinterpret_cast<const char*>(columns + j * stride);
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(column + offset);
  }
}

}  // namespace tte
