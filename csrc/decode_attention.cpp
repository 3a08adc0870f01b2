// Decode attention over a slot KV cache on CPU, in place: one query token per busy slot attends
// over that slot's own first `length` columns of keys and values, read through their strides (no
// copy, no idle slot, no unwritten column). Grouped heads (GQA) share their key head's reads.
// Scores, softmax and the weighted sum are in float32 (online softmax over blocks of columns, as
// flash attention does); inputs and output are float32 or bfloat16.
#include "decode_attention.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_math.h"
#include "avx512_math.h"
#include "decoder_ops.h"
#include "openmp_team.h"
#include "parallel.h"

namespace py = pybind11;

namespace tte {
namespace {

// DIM > 0: the head dim as a compile-time constant (the common 64 and 128: loops unrolled, the
// accumulators kept in registers); 0: read from the arguments.
template <typename T, int64_t DIM>
__attribute__((target_clones("avx512f", "avx2", "default"))) void attend_one(const DecodeAttentionArgs& a, int64_t b,
                                                                              int64_t kv_head, const void* query_heads,
                                                                              int64_t query_stride) {
  const int64_t dim = DIM > 0 ? DIM : a.head_dim;
  const AttentionTask<T> task(a, b, kv_head, query_heads, query_stride);
  const int64_t group = task.group, length = task.length;

  float qf[kMaxGroup][kMaxHeadDim], acc[kMaxGroup][kMaxHeadDim], scores[kMaxGroup][kAttentionBlock];
  float kf[kMaxHeadDim], best[kMaxGroup], total[kMaxGroup];
  for (int64_t g = 0; g < group; g++) {
    const T* qh = task.query + g * task.query_stride;
    for (int64_t i = 0; i < dim; i++) qf[g][i] = load(qh, i) * a.scale;
    for (int64_t i = 0; i < dim; i++) acc[g][i] = 0.0f;
    best[g] = -std::numeric_limits<float>::infinity();
    total[g] = 0.0f;
  }
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));  // prefetched as the AVX-512 path does
  prefetch_columns(task.key, a.k_stride[2], 0, std::min(kAttentionBlock, length), row_bytes);
  for (int64_t start = 0; start < length; start += kAttentionBlock) {
    const int64_t n = std::min(kAttentionBlock, length - start);
    const int64_t next = std::min(kAttentionBlock, length - start - n);  // the next block's columns
    for (int64_t j = 0; j < n; j++) {
      prefetch_columns(task.value, a.v_stride[2], start + j, 1, row_bytes);
      const T* kj = task.key + (start + j) * a.k_stride[2];
      for (int64_t i = 0; i < dim; i++) kf[i] = load(kj, i);
      for (int64_t g = 0; g < group; g++) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < dim; i++) dot += qf[g][i] * kf[i];
        scores[g][j] = dot;
      }
    }
    for (int64_t g = 0; g < group; g++) {
      float block_max = scores[g][0];
      for (int64_t j = 1; j < n; j++) block_max = std::max(block_max, scores[g][j]);
      const float new_best = std::max(best[g], block_max);
      const float rescale = exp_nonpositive(best[g] - new_best);  // 0 on the first block (best = -inf)
      total[g] *= rescale;
      for (int64_t i = 0; i < dim; i++) acc[g][i] *= rescale;
      for (int64_t j = 0; j < n; j++) {
        scores[g][j] = exp_nonpositive(scores[g][j] - new_best);
        total[g] += scores[g][j];
      }
      best[g] = new_best;
    }
    for (int64_t j = 0; j < n; j++) {
      const T* vj = task.value + (start + j) * a.v_stride[2];
      if (j < next) prefetch_columns(task.key, a.k_stride[2], start + n + j, 1, row_bytes);
      for (int64_t i = 0; i < dim; i++) kf[i] = load(vj, i);
      for (int64_t g = 0; g < group; g++) {
        const float p = scores[g][j];
        for (int64_t i = 0; i < dim; i++) acc[g][i] += p * kf[i];
      }
    }
  }
  for (int64_t g = 0; g < group; g++) {
    T* oh = task.out + g * a.o_stride[1];
    const float inv = total[g] > 0.0f ? 1.0f / total[g] : 0.0f;  // length 0: zeros, never NaN
    for (int64_t i = 0; i < dim; i++) store(oh, i, acc[g][i] * inv);
  }
}

template <typename T>
void dispatch_dim(const DecodeAttentionArgs& a, int64_t b, int64_t kv_head, const void* query, int64_t query_stride) {
  switch (a.head_dim) {
    case 64: attend_one<T, 64>(a, b, kv_head, query, query_stride); break;
    case 128: attend_one<T, 128>(a, b, kv_head, query, query_stride); break;
    default: attend_one<T, 0>(a, b, kv_head, query, query_stride);
  }
}

// A step token's part of task (b, kv_head): its key and value heads rotated / copied into the cache
// at column length - 1, its query heads of this group rotated into `query` (head_dim apart).
template <typename T>
void write_step_token(const DecodeAttentionArgs& a, int64_t b, int64_t kv_head, T* query) {
  const StepToken& step = a.step;
  const int64_t dim = a.head_dim, group = a.heads / a.kv_heads, column = a.lengths[b] - 1;
  const T* row = static_cast<const T*>(step.qkv) + b * step.qkv_stride;
  const T* cos = static_cast<const T*>(step.cos) + b * step.table_stride;
  const T* sin = static_cast<const T*>(step.sin) + b * step.table_stride;
  const T* key = row + (a.heads + kv_head) * dim;
  const T* value = row + (a.heads + a.kv_heads + kv_head) * dim;
  // The cache is written through the same pointers the attention then reads (the args keep them const).
  T* key_slot = const_cast<T*>(static_cast<const T*>(a.key)) + a.rows[b] * a.k_stride[0] + kv_head * a.k_stride[1];
  T* value_slot =
      const_cast<T*>(static_cast<const T*>(a.value)) + a.rows[b] * a.v_stride[0] + kv_head * a.v_stride[1];
  T* key_column = key_slot + column * a.k_stride[2];
  if (step.cos != nullptr) {
    rotary_one_head(key, cos, sin, key_column, dim);
    for (int64_t g = 0; g < group; g++) rotary_one_head(row + (kv_head * group + g) * dim, cos, sin, query + g * dim, dim);
  } else {
    std::memcpy(key_column, key, dim * sizeof(T));
    std::memcpy(query, row + kv_head * group * dim, group * dim * sizeof(T));
  }
  std::memcpy(value_slot + column * a.v_stride[2], value, dim * sizeof(T));
}

void check(const DecodeAttentionArgs& a) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("decode_attention: " + what); };
  if (a.heads <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0)
    fail("heads " + std::to_string(a.heads) + " must be a positive multiple of kv_heads " + std::to_string(a.kv_heads));
  if (a.heads / a.kv_heads > kMaxGroup)
    fail("at most " + std::to_string(kMaxGroup) + " query heads per key head, got " + std::to_string(a.heads / a.kv_heads));
  if (a.head_dim <= 0 || a.head_dim > kMaxHeadDim)
    fail("head_dim must be in 1.." + std::to_string(kMaxHeadDim) + ", got " + std::to_string(a.head_dim));
  if (a.rows.size() != a.lengths.size()) fail("rows and lengths differ in size");
  if (a.step.qkv != nullptr && a.step.qkv_stride < (a.heads + 2 * a.kv_heads) * a.head_dim)
    fail("a step's qkv row must hold the query, key and value heads");
  for (size_t b = 0; b < a.rows.size(); b++) {
    if (a.rows[b] < 0 || a.rows[b] >= a.slots)
      fail("row " + std::to_string(b) + " names slot " + std::to_string(a.rows[b]) + " of " + std::to_string(a.slots));
    const int64_t shortest = a.step.qkv != nullptr ? 1 : 0;  // a step writes column length - 1
    if (a.lengths[b] < shortest || a.lengths[b] > a.width)
      fail("row " + std::to_string(b) + " length " + std::to_string(a.lengths[b]) + " outside " +
           std::to_string(shortest) + ".." + std::to_string(a.width));
  }
}

}  // namespace

void decode_attention(const DecodeAttentionArgs& args, int64_t num_threads, bool use_team) {
  check(args);
  const int64_t tasks = static_cast<int64_t>(args.rows.size()) * args.kv_heads;
  const bool avx512 = avx512_attention_applies(args);
  const int64_t element = args.bfloat16 ? 2 : 4;
  auto task = [&](int64_t t) {  // never throws: check() has vetted every row and length
    const int64_t b = t / args.kv_heads, kv_head = t % args.kv_heads;
    alignas(64) float rotated[kMaxGroup * kMaxHeadDim];  // a step's query heads (float32 or bfloat16)
    const void* query = rotated;
    int64_t query_stride = args.head_dim;
    if (args.step.qkv == nullptr) {
      const int64_t first_head = kv_head * (args.heads / args.kv_heads);
      query = static_cast<const char*>(args.query) + (b * args.q_stride[0] + first_head * args.q_stride[1]) * element;
      query_stride = args.q_stride[1];
    } else if (args.bfloat16) {
      write_step_token(args, b, kv_head, reinterpret_cast<uint16_t*>(rotated));
    } else {
      write_step_token(args, b, kv_head, rotated);
    }
    if (avx512) {
      attend_avx512(args, b, kv_head, query, query_stride);
    } else if (args.bfloat16) {
      dispatch_dim<uint16_t>(args, b, kv_head, query, query_stride);
    } else {
      dispatch_dim<float>(args, b, kv_head, query, query_stride);
    }
  };
  if (!use_team || !run_on_openmp_team(tasks, num_threads, task)) {
    TaskFailure failure = parallel_for(tasks, num_threads, task);
    if (failure.index >= 0) std::rethrow_exception(failure.error);
  }
  if (avx512) count_avx512_attention_tasks(tasks);
}

void register_decode_attention(py::module_& m) {
  m.def(
      "set_avx512_enabled", [](bool enabled) { g_avx512_enabled = enabled; }, py::arg("enabled"),
      "Switch the AVX-512 paths of the decode attention and the decoder ops on or off (off: portable loops).");
  m.def(
      "set_avx512_bf16_enabled", [](bool enabled) { g_avx512_bf16_enabled = enabled; }, py::arg("enabled"),
      "Switch the AVX-512 decode attention's bfloat16 dot products on or off (off: keys widened to float32).");
  m.def("avx512_bf16_enabled", &avx512_bf16_enabled,
        "Whether the AVX-512 decode attention uses bfloat16 dot products (AVX-512 on, the CPU has AVX512_BF16).");
  m.def("avx512_enabled", &avx512_enabled, "Whether the AVX-512 paths run (the CPU has AVX-512F, switched on).");
  m.def("openmp_team_available", &openmp_team_available,
        "Whether the process has loaded an OpenMP runtime (torch's) whose team the decode attention can use.");
  m.def("avx512_attention_tasks", &avx512_attention_tasks,
        "(row, key head) tasks the AVX-512 decode attention has run since the module loaded.");
  m.def(
      "decode_attention",
      [](uintptr_t query, uintptr_t key, uintptr_t value, uintptr_t out, bool bfloat16, int64_t heads,
         int64_t kv_heads, int64_t head_dim, int64_t slots, int64_t width, std::vector<int64_t> q_stride,
         std::vector<int64_t> k_stride, std::vector<int64_t> v_stride, std::vector<int64_t> o_stride,
         std::vector<int64_t> rows, std::vector<int64_t> lengths, float scale, int64_t num_threads, bool openmp_team) {
        if (q_stride.size() != 2 || o_stride.size() != 2 || k_stride.size() != 3 || v_stride.size() != 3)
          throw std::invalid_argument("decode_attention: strides must be (row, head) and (slot, head, column)");
        tte::DecodeAttentionArgs args{reinterpret_cast<const void*>(query), reinterpret_cast<const void*>(key),
                                      reinterpret_cast<const void*>(value), reinterpret_cast<void*>(out),
                                      bfloat16, heads, kv_heads, head_dim, slots, width,
                                      {q_stride[0], q_stride[1]}, {k_stride[0], k_stride[1], k_stride[2]},
                                      {v_stride[0], v_stride[1], v_stride[2]}, {o_stride[0], o_stride[1]},
                                      std::move(rows), std::move(lengths), scale};
        py::gil_scoped_release release;
        tte::decode_attention(args, num_threads, openmp_team);
      },
      py::arg("query"), py::arg("key"), py::arg("value"), py::arg("out"), py::arg("bfloat16"), py::arg("heads"),
      py::arg("kv_heads"), py::arg("head_dim"), py::arg("slots"), py::arg("width"), py::arg("q_stride"),
      py::arg("k_stride"), py::arg("v_stride"), py::arg("o_stride"), py::arg("rows"), py::arg("lengths"),
      py::arg("scale"), py::arg("num_threads"), py::arg("openmp_team") = false,
      "Decode attention over a slot KV cache in place (raw pointers of checked torch tensors; see "
      "tte_fast.kernels.decode_attention_cpu).");
  m.def(
      "decode_step_attention",
      [](uintptr_t qkv, int64_t qkv_stride, uintptr_t cos, uintptr_t sin, int64_t table_stride, uintptr_t key,
         uintptr_t value, uintptr_t out, bool bfloat16, int64_t heads, int64_t kv_heads, int64_t head_dim,
         int64_t slots, int64_t width, std::vector<int64_t> k_stride, std::vector<int64_t> v_stride,
         std::vector<int64_t> o_stride, std::vector<int64_t> rows, std::vector<int64_t> lengths, float scale,
         int64_t num_threads, bool openmp_team) {
        if (o_stride.size() != 2 || k_stride.size() != 3 || v_stride.size() != 3)
          throw std::invalid_argument("decode_step_attention: strides must be (row, head) and (slot, head, column)");
        if ((cos == 0) != (sin == 0)) throw std::invalid_argument("decode_step_attention: cos and sin come together");
        tte::DecodeAttentionArgs args{nullptr, reinterpret_cast<const void*>(key),
                                      reinterpret_cast<const void*>(value), reinterpret_cast<void*>(out),
                                      bfloat16, heads, kv_heads, head_dim, slots, width,
                                      {0, 0}, {k_stride[0], k_stride[1], k_stride[2]},
                                      {v_stride[0], v_stride[1], v_stride[2]}, {o_stride[0], o_stride[1]},
                                      std::move(rows), std::move(lengths), scale,
                                      {reinterpret_cast<const void*>(qkv), qkv_stride, reinterpret_cast<const void*>(cos),
                                       reinterpret_cast<const void*>(sin), table_stride}};
        if (args.step.qkv == nullptr) throw std::invalid_argument("decode_step_attention: qkv is required");
        py::gil_scoped_release release;
        tte::decode_attention(args, num_threads, openmp_team);
      },
      py::arg("qkv"), py::arg("qkv_stride"), py::arg("cos"), py::arg("sin"), py::arg("table_stride"), py::arg("key"),
      py::arg("value"), py::arg("out"), py::arg("bfloat16"), py::arg("heads"), py::arg("kv_heads"),
      py::arg("head_dim"), py::arg("slots"), py::arg("width"), py::arg("k_stride"), py::arg("v_stride"),
      py::arg("o_stride"), py::arg("rows"), py::arg("lengths"), py::arg("scale"), py::arg("num_threads"),
      py::arg("openmp_team") = false,
      "A decode step's attention from its fused [q; k; v] rows: query and key heads rotated, the key and "
      "value written into the slot cache at column length - 1, then attended (see "
      "tte_fast.kernels.decode_attention_cpp.decode_step_attention_cpp).");
}

}  // namespace tte
