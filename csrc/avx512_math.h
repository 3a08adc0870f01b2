// 16-lane float32 helpers for the AVX-512 paths (decode attention, decoder ops): float32 / bfloat16
// loads and stores (round to nearest even, NaN kept, as torch converts) and exp of non-positive
// arguments (attention_math.h's polynomial). Each function carries the target attribute, so the
// build needs no -mavx512f; callers check the CPU at run time (avx512_enabled).
#pragma once
#include <immintrin.h>

#include <atomic>
#include <cstdint>

#include "attention_math.h"

#define TTE_AVX512 __attribute__((target("avx512f")))
// The AVX-512 paths' bfloat16 dot products (vdpbf16ps), where the CPU has AVX512_BF16.
#define TTE_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))

namespace tte {

// Switched off by the tests (set_avx512_enabled) to run the portable loops on an AVX-512 CPU.
inline std::atomic<bool> g_avx512_enabled{true};

// Whether the AVX-512 paths run: the CPU has AVX-512F and they are not switched off.
inline bool avx512_enabled() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && g_avx512_enabled;
}

TTE_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
TTE_AVX512 inline __m512 load16(const uint16_t* p) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
TTE_AVX512 inline __m512 load16(const float* p, __mmask16 lanes) { return _mm512_maskz_loadu_ps(lanes, p); }
TTE_AVX512 inline __m512 load16(const uint16_t* p, __mmask16 lanes) {
  if (lanes == 0xffff) return load16(p);
  alignas(32) uint16_t buffer[16] = {};  // a row's short tail (masked 16-bit loads would need AVX512BW)
  for (int i = 0; i < 16; i++)
    if (lanes >> i & 1) buffer[i] = p[i];
  return load16(static_cast<const uint16_t*>(buffer));
}
// Whether the AVX-512 paths may use the bfloat16 dot-product instruction (the CPU has AVX512_BF16,
// and it is not switched off: the tests run the widening loads on such a CPU too).
inline std::atomic<bool> g_avx512_bf16_enabled{true};
inline bool avx512_bf16_enabled() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has && g_avx512_bf16_enabled && avx512_enabled();
}

// The lanes of the next 16 elements when `left` remain.
inline __mmask16 lanes_left(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// The bfloat16 bits of 16 floats in the low halves of 32-bit lanes.
TTE_AVX512 inline __m512i bf16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i nearest_even = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(nearest_even, nan, quiet_nan);
}
// v rounded to bfloat16 and widened back (what torch materialises between bfloat16 ops).
TTE_AVX512 inline __m512 round_bf16x16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
}
TTE_AVX512 inline void store16(float* p, __m512 v, __mmask16 lanes = 0xffff) { _mm512_mask_storeu_ps(p, lanes, v); }
TTE_AVX512 inline void store16(uint16_t* p, __m512 v, __mmask16 lanes = 0xffff) {
  if (lanes == 0xffff) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
    return;
  }
  alignas(64) uint32_t bits[16];
  _mm512_store_si512(bits, bf16_bits(v));
  for (int i = 0; i < 16; i++)
    if (lanes >> i & 1) p[i] = static_cast<uint16_t>(bits[i]);
}

// The sums of 16 vectors' lanes: lane j of the result is the sum of v[j]'s lanes. A transposing
// tree (pairs of vectors, then pairs of 64-bit halves, then 128-bit blocks) takes 45 instructions
// where 16 horizontal sums take about 150.
TTE_AVX512 inline __m512 sum_lanes16(const __m512* v) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; i++)  // per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3] of v[2i], v[2i+1]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++) {  // per block: the block's sums of v[4i] .. v[4i + 3]
    const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // Blocks added across: lanes 4i .. 4i + 3 of the result from quads[i]'s four blocks.
  const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(3, 1, 3, 1)));
}

// exp_nonpositive (attention_math.h) on 16 lanes; NaN stays NaN.
TTE_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);  // max returns its second operand for a NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kLn2High))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(kLn2Low)));
  __m512 p = _mm512_set1_ps(kExpCoefficients[0]);
  for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpCoefficients[i]));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// silu(x) = x * sigmoid(x) on 16 lanes, float32 (decoder_ops' SwiGLU and the AMX linear's gated
// output): exp of -|x| only (exp16), 0 below -87 where it clamps, so silu of a large negative x is -0
// as in torch. Callers compile without fused multiply-adds (torch rounds each product).
TTE_AVX512 inline __m512 silu16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  const __m512 a = _mm512_sub_ps(zero, _mm512_abs_ps(x));
  const __m512 t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ), exp16(a));
  const __m512 top = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(x, zero, _CMP_GE_OQ), one);
  return _mm512_mul_ps(x, _mm512_div_ps(top, _mm512_add_ps(one, t)));
}

}  // namespace tte
