// The decode attention's AVX-512 path: the arithmetic of the portable loops in decode_attention.cpp
// (float32 scores, online softmax over blocks of kAttentionBlock columns, the same exp polynomial)
// written with 16-lane intrinsics. The portable loops leave most of the work scalar: a horizontal
// sum per column inside the group loop, the bfloat16 widening and the exp over each block. Here a
// column's keys are widened once into registers and shared by every grouped query head or, where
// the CPU has AVX512_BF16, bfloat16 keys go straight into its bfloat16 dot products (exact products,
// float32 sums, the query unscaled and the scale applied to the sums), 16 columns' scores out of
// one transposing sum (sum_lanes16); the block's softmax runs on whole vectors (a lane mask for a
// short last block), and each value row feeds all grouped heads' accumulators. Head dims that are
// multiples of 16 take it when the CPU has AVX-512F (checked at run time; the build needs no flag);
// the dot products take multiples of 32.
//
// The slot cache comes from memory on every step (the weights read between two layers' attentions
// flush it), in short runs (one (row, key head)'s columns, 16 KB at SmolLM2-135M's 129 columns)
// that the hardware's stream prefetcher picks up late: software prefetches ask for each block's
// values while its keys are scored, and for the next block's keys while the values are summed
// (bf16, SmolLM2-135M's heads, 129 columns, 30 layers' caches in turn: 165 -> 122 us a layer at 16
// rows, 580 -> 450 us at 64).
#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "avx512_math.h"
#include "decode_attention.h"

namespace tte {
namespace {

static_assert(kAttentionBlock == 32, "a block of scores is two vectors");

std::atomic<int64_t> g_tasks{0};

constexpr int64_t kMaxVectors = kMaxHeadDim / 16;

// The scores of key columns first .. first + 15 (columns `stride` apart, the last `count` <= 16 of
// them real: the rest repeat the last real column, whose scores the softmax masks) against every
// grouped query head, into scores[g][first ...], through the CPU's bfloat16 dot products (32
// elements per instruction, exact products summed in float32) and one transposing sum for the 16
// columns; the scale applied to the sums. PAIRS > 0: head dim / 32 known at compile time, so the 16
// dot products stay in registers.
template <int64_t PAIRS>
TTE_AVX512_BF16 void key_scores_bf16(const uint16_t* query, int64_t head_stride, int64_t group, int64_t pairs,
                                     const uint16_t* columns, int64_t stride, int64_t count, float scale,
                                     float (*scores)[kAttentionBlock], int64_t first) {
  if (PAIRS > 0) pairs = PAIRS;
  const uint16_t* keys[16];
  for (int64_t j = 0; j < 16; j++) keys[j] = columns + std::min(j, count - 1) * stride;
  const __m512 scaled = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < group; g++) {
    __m512bh q[kMaxVectors / 2];
    for (int64_t c = 0; c < pairs; c++) q[c] = (__m512bh)_mm512_loadu_si512(query + g * head_stride + 32 * c);
    __m512 dots[16];
#pragma GCC unroll 16
    for (int64_t j = 0; j < 16; j++) {
      dots[j] = _mm512_setzero_ps();
      for (int64_t c = 0; c < pairs; c++)
        dots[j] = _mm512_dpbf16_ps(dots[j], q[c], (__m512bh)_mm512_loadu_si512(keys[j] + 32 * c));
    }
    _mm512_storeu_ps(scores[g] + first, _mm512_mul_ps(sum_lanes16(dots), scaled));
  }
}

// VECTORS > 0: head dim / 16 known at compile time (64 and 128: the loops unrolled); 0: from the args.
template <typename T, int64_t VECTORS>
TTE_AVX512 void attend(const DecodeAttentionArgs& a, int64_t b, int64_t kv_head, const void* query_heads,
                       int64_t query_stride) {
  const int64_t vectors = VECTORS > 0 ? VECTORS : a.head_dim / 16;
  const AttentionTask<T> task(a, b, kv_head, query_heads, query_stride);
  const int64_t group = task.group, length = task.length;

  __m512 query[kMaxGroup][kMaxVectors], acc[kMaxGroup][kMaxVectors], row[kMaxVectors];
  const bool dot_products = vectors % 2 == 0 && avx512_bf16_enabled();  // bfloat16 only (below)
  alignas(64) float scores[kMaxGroup][kAttentionBlock];
  float best[kMaxGroup], total[kMaxGroup];
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int64_t g = 0; g < group; g++) {
    const T* qh = task.query + g * task.query_stride;
    for (int64_t c = 0; c < vectors; c++) {
      query[g][c] = _mm512_mul_ps(load16(qh + 16 * c), scale);
      acc[g][c] = _mm512_setzero_ps();
    }
    best[g] = -std::numeric_limits<float>::infinity();
    total[g] = 0.0f;
  }
  const int64_t row_bytes = vectors * 16 * static_cast<int64_t>(sizeof(T));
  prefetch_columns(task.key, a.k_stride[2], 0, std::min(kAttentionBlock, length), row_bytes);
  for (int64_t start = 0; start < length; start += kAttentionBlock) {
    const int64_t n = std::min(kAttentionBlock, length - start);
    const int64_t next = std::min(kAttentionBlock, length - start - n);  // the next block's columns
    bool scored = false;
    if constexpr (std::is_same_v<T, uint16_t>) {
      if (dot_products) {
        for (int64_t first = 0; first < n; first += 16) {
          const int64_t count = std::min<int64_t>(16, n - first);
          prefetch_columns(task.value, a.v_stride[2], start + first, count, row_bytes);
          key_scores_bf16<VECTORS / 2>(task.query, task.query_stride, group, vectors / 2,
                                       task.key + (start + first) * a.k_stride[2], a.k_stride[2], count,
                                       a.scale, scores, first);
        }
        scored = true;
      }
    }
    for (int64_t j = 0; !scored && j < n; j++) {  // a column's keys widened once for every grouped head
      prefetch_columns(task.value, a.v_stride[2], start + j, 1, row_bytes);
      const T* kj = task.key + (start + j) * a.k_stride[2];
      for (int64_t c = 0; c < vectors; c++) row[c] = load16(kj + 16 * c);
      for (int64_t g = 0; g < group; g++) {
        __m512 dot = _mm512_mul_ps(query[g][0], row[0]);
        for (int64_t c = 1; c < vectors; c++) dot = _mm512_fmadd_ps(query[g][c], row[c], dot);
        scores[g][j] = _mm512_reduce_add_ps(dot);
      }
    }
    const __mmask16 low = n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1);
    const __mmask16 high = n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
    const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t g = 0; g < group; g++) {
      const __m512 s0 = _mm512_mask_loadu_ps(lowest, low, scores[g]);
      const __m512 s1 = _mm512_mask_loadu_ps(lowest, high, scores[g] + 16);
      const float new_best = std::max(best[g], _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
      const float rescale = exp_nonpositive(best[g] - new_best);  // 0 on the first block (best = -inf)
      const __m512 m = _mm512_set1_ps(new_best);
      const __m512 e0 = _mm512_maskz_mov_ps(low, exp16(_mm512_sub_ps(s0, m)));
      const __m512 e1 = _mm512_maskz_mov_ps(high, exp16(_mm512_sub_ps(s1, m)));
      _mm512_store_ps(scores[g], e0);
      _mm512_store_ps(scores[g] + 16, e1);
      total[g] = total[g] * rescale + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
      best[g] = new_best;
      const __m512 r = _mm512_set1_ps(rescale);
      for (int64_t c = 0; c < vectors; c++) acc[g][c] = _mm512_mul_ps(acc[g][c], r);
    }
    for (int64_t j = 0; j < n; j++) {
      const T* vj = task.value + (start + j) * a.v_stride[2];
      if (j < next) prefetch_columns(task.key, a.k_stride[2], start + n + j, 1, row_bytes);
      for (int64_t c = 0; c < vectors; c++) row[c] = load16(vj + 16 * c);
      for (int64_t g = 0; g < group; g++) {
        const __m512 p = _mm512_set1_ps(scores[g][j]);
        for (int64_t c = 0; c < vectors; c++) acc[g][c] = _mm512_fmadd_ps(p, row[c], acc[g][c]);
      }
    }
  }
  for (int64_t g = 0; g < group; g++) {
    T* oh = task.out + g * a.o_stride[1];
    const __m512 inv = _mm512_set1_ps(total[g] > 0.0f ? 1.0f / total[g] : 0.0f);  // length 0: zeros
    for (int64_t c = 0; c < vectors; c++) store16(oh + 16 * c, _mm512_mul_ps(acc[g][c], inv));
  }
}

template <typename T>
void attend_dim(const DecodeAttentionArgs& a, int64_t b, int64_t kv_head, const void* query, int64_t query_stride) {
  switch (a.head_dim) {
    case 64: attend<T, 4>(a, b, kv_head, query, query_stride); break;
    case 128: attend<T, 8>(a, b, kv_head, query, query_stride); break;
    default: attend<T, 0>(a, b, kv_head, query, query_stride);
  }
}

}  // namespace

bool avx512_attention_applies(const DecodeAttentionArgs& args) {
  return avx512_enabled() && args.head_dim % 16 == 0 && args.head_dim <= kMaxHeadDim;
}

void attend_avx512(const DecodeAttentionArgs& args, int64_t row, int64_t kv_head, const void* query,
                   int64_t query_stride) {
  if (args.bfloat16) {
    attend_dim<uint16_t>(args, row, kv_head, query, query_stride);
  } else {
    attend_dim<float>(args, row, kv_head, query, query_stride);
  }
}

int64_t avx512_attention_tasks() { return g_tasks; }
void count_avx512_attention_tasks(int64_t tasks) { g_tasks += tasks; }

}  // namespace tte
