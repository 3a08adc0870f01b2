// Decode attention over a slot KV cache on CPU (see decode_attention.cpp). Pointers and strides
// come from torch tensors checked on the Python side (tte_fast.kernels.decode_attention_cpu); the
// sizes, rows and lengths are checked again here, so a bad call raises instead of reading out of
// bounds.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace tte {

// A decode step's new token per row, where given (qkv != nullptr): the row's query, key and value
// heads are the columns of a fused [q; k; v] projection's output (heads, kv_heads, kv_heads heads of
// head_dim), rotated by the row's cos and sin rows (the rotary op's rounding) where cos != nullptr.
// Each task writes its key head's key and value into the cache at column length - 1, then attends
// with its rotated query heads.
struct StepToken {
  const void* qkv = nullptr;
  int64_t qkv_stride = 0;  // between rows; elements within a row are contiguous
  const void* cos = nullptr;
  const void* sin = nullptr;
  int64_t table_stride = 0;  // between the rows of cos and sin ([B, head_dim], contiguous rows)
};

struct DecodeAttentionArgs {
  const void* query;  // [B, H, d]: strides q_stride[0] (row), q_stride[1] (head); dim stride 1
  const void* key;    // [S, H_kv, W, d]: k_stride[0..2] (slot, head, column); dim stride 1
  const void* value;  // [S, H_kv, W, d]: v_stride[0..2]
  void* out;          // [B, H, d]: o_stride[0] (row), o_stride[1] (head); dim stride 1
  bool bfloat16;      // else float32
  int64_t heads, kv_heads, head_dim, slots, width;
  int64_t q_stride[2], k_stride[3], v_stride[3], o_stride[2];
  std::vector<int64_t> rows;     // [B]: each query row's slot
  std::vector<int64_t> lengths;  // [B]: columns 0 .. length - 1 of its slot are attended
  float scale;
  StepToken step;  // absent (qkv nullptr): query, key and value are read as they are
};

constexpr int64_t kAttentionBlock = 32;  // columns scored before one softmax rescale
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxGroup = 16;

// One (row, key head) task's operands, as both paths read them: the row's query heads of this key
// head's group (`query`, query_stride apart: the args' query or a step's rotated heads), the slot's
// key and value columns (k_stride[2], v_stride[2] apart), the group's output heads (o_stride[1]
// apart), and the columns attended.
template <typename T>
struct AttentionTask {
  AttentionTask(const DecodeAttentionArgs& a, int64_t b, int64_t kv_head, const void* query, int64_t query_stride)
      : group(a.heads / a.kv_heads),
        length(a.lengths[b]),
        query_stride(query_stride),
        query(static_cast<const T*>(query)),
        key(static_cast<const T*>(a.key) + a.rows[b] * a.k_stride[0] + kv_head * a.k_stride[1]),
        value(static_cast<const T*>(a.value) + a.rows[b] * a.v_stride[0] + kv_head * a.v_stride[1]),
        out(static_cast<T*>(a.out) + b * a.o_stride[0] + kv_head * group * a.o_stride[1]) {}
  int64_t group, length, query_stride;
  const T* query;
  const T* key;
  const T* value;
  T* out;
};

// On num_threads threads: of the loaded OpenMP runtime's team with use_team (where one is found),
// else threads of our own.
void decode_attention(const DecodeAttentionArgs& args, int64_t num_threads, bool use_team);

// The AVX-512 path (decode_attention_avx512.cpp): whether it takes these arguments (the CPU has
// AVX-512F, the head dim is a multiple of 16, the AVX-512 paths are on), and one (row, key head) task.
bool avx512_attention_applies(const DecodeAttentionArgs& args);
void attend_avx512(const DecodeAttentionArgs& args, int64_t row, int64_t kv_head, const void* query,
                   int64_t query_stride);
// (Row, key head) tasks the AVX-512 path has run since load.
int64_t avx512_attention_tasks();
void count_avx512_attention_tasks(int64_t tasks);

// Adds `decode_attention` to the extension module.
void register_decode_attention(pybind11::module_& m);

}  // namespace tte
