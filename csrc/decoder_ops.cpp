// The elementwise work of the fused decoder's step (tte_fast.runtime.fused_decoder) on CPU, one pass
// over each row instead of transformers' chain of small torch ops (each a dispatch, an allocation
// and a trip through memory). Float32 or bfloat16 tensors; each op rounds where HF's modules round
// (every bfloat16 intermediate that torch materialises is rounded here too), with float32 reductions:
//
//   add_rms_norm: residual += delta (in place; delta may be absent), then
//                 out = weight * (residual * rsqrt(mean(residual^2) + eps)).to(dtype)   [RMSNorm]
//   rotary:       out = x * cos + rotate_half(x) * sin, per head                        [RoPE]
//   silu_mul:     out = silu(gate) * up, gate_up = [gate | up]                          [SwiGLU]
//
// With AVX-512F (checked at run time) each op runs 16 lanes at a time; elsewhere portable loops.
// Rows are split into one chunk per thread on torch's own OpenMP team (its workers spin between
// torch's ops, so they take a chunk at once); a small op runs on the calling thread alone.
#include "decoder_ops.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention_math.h"
#include "avx512_math.h"
#include "openmp_team.h"

namespace py = pybind11;

// No fused multiply-adds where torch rounds between the multiply and the add (rotary's two products).
#pragma GCC optimize("fp-contract=off")

namespace tte {
namespace {

// A float rounded to bfloat16 and back (torch's round to nearest even; NaN kept).
inline float round_bf16(float v) {
  uint16_t half;
  store(&half, 0, v);
  return load(&half, 0);
}
template <typename T>
inline float rounded(float v) {
  return sizeof(T) == 2 ? round_bf16(v) : v;
}

// sigmoid(x) with exp of a non-positive argument only (exp_nonpositive: vectorisable, |rel err| < 2e-7);
// below -87 (where exp_nonpositive clamps) exp is 0, so silu of a large negative x is -0 as in torch.
inline float sigmoid(float x) {
  const float a = -std::fabs(x), t = a < -87.0f ? 0.0f : exp_nonpositive(a);
  return (x >= 0.0f ? 1.0f : t) / (1.0f + t);
}

template <typename T>
void add_rms_norm_rows(T* residual, const T* delta, const T* weight, T* out, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    T* x = residual + r * dim;
    float squares = 0.0f;
    if (delta != nullptr) {
      const T* d = delta + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; i++) store(x, i, load(x, i) + load(d, i));
    }
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < dim; i++) squares += load(x, i) * load(x, i);
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(dim) + eps);
    T* o = out + r * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; i++) store(o, i, load(weight, i) * rounded<T>(load(x, i) * inv));
  }
}

// Rotary embedding of `rows` rows of `heads` heads (x_row_stride apart), each row with its own cos and
// sin rows (table_row_stride apart), into a contiguous out: `head(xh, c, s, oh, dim)` rotates one head.
template <typename T, typename Head>
void rotary_walk(const T* x, int64_t x_row_stride, const T* cos, const T* sin, int64_t table_row_stride, T* out,
                 int64_t rows, int64_t heads, int64_t dim, Head head) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t h = 0; h < heads; h++)
      head(x + r * x_row_stride + h * dim, cos + r * table_row_stride, sin + r * table_row_stride,
           out + (r * heads + h) * dim, dim);
}

template <typename T>
void rotary_head(const T* xh, const T* c, const T* s, T* oh, int64_t dim) {
  const int64_t half = dim / 2;
#pragma omp simd
  for (int64_t i = 0; i < half; i++) {
    const float a = rounded<T>(load(xh, i) * load(c, i)), b = rounded<T>(-load(xh, i + half) * load(s, i));
    store(oh, i, a + b);
  }
#pragma omp simd
  for (int64_t i = half; i < dim; i++) {
    const float a = rounded<T>(load(xh, i) * load(c, i)), b = rounded<T>(load(xh, i - half) * load(s, i));
    store(oh, i, a + b);
  }
}

template <typename T>
void silu_mul_rows(const T* gate_up, T* out, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; r++) {
    const T* g = gate_up + r * 2 * width;
    const T* u = g + width;
    T* o = out + r * width;
#pragma omp simd
    for (int64_t i = 0; i < width; i++) {
      const float x = load(g, i);
      store(o, i, rounded<T>(x * sigmoid(x)) * load(u, i));
    }
  }
}

template <typename T>
TTE_AVX512 inline __m512 rounded16(__m512 v) {
  return sizeof(T) == 2 ? round_bf16x16(v) : v;
}

template <typename T>
TTE_AVX512 void add_rms_norm_avx512(T* residual, const T* delta, const T* weight, T* out, int64_t rows, int64_t dim,
                                    float eps) {
  for (int64_t r = 0; r < rows; r++) {
    T* x = residual + r * dim;
    __m512 squares = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      const __mmask16 lanes = lanes_left(dim - i);
      __m512 v = load16(x + i, lanes);
      if (delta != nullptr) {
        v = rounded16<T>(_mm512_add_ps(v, load16(delta + r * dim + i, lanes)));
        store16(x + i, v, lanes);
      }
      squares = _mm512_add_ps(squares, _mm512_mul_ps(v, v));
    }
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(squares) / static_cast<float>(dim) + eps));
    for (int64_t i = 0; i < dim; i += 16) {
      const __mmask16 lanes = lanes_left(dim - i);
      const __m512 normed = rounded16<T>(_mm512_mul_ps(load16(x + i, lanes), inv));
      store16(out + r * dim + i, _mm512_mul_ps(load16(weight + i, lanes), normed), lanes);
    }
  }
}

template <typename T>
TTE_AVX512 void rotary_head_avx512(const T* xh, const T* c, const T* s, T* oh, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 lanes = lanes_left(half - i);
    const __m512 first = load16(xh + i, lanes), second = load16(xh + half + i, lanes);
    const __m512 a0 = rounded16<T>(_mm512_mul_ps(first, load16(c + i, lanes)));
    const __m512 b0 = rounded16<T>(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), second), load16(s + i, lanes)));
    const __m512 a1 = rounded16<T>(_mm512_mul_ps(second, load16(c + half + i, lanes)));
    const __m512 b1 = rounded16<T>(_mm512_mul_ps(first, load16(s + half + i, lanes)));
    store16(oh + i, _mm512_add_ps(a0, b0), lanes);
    store16(oh + half + i, _mm512_add_ps(a1, b1), lanes);
  }
}

template <typename T>
TTE_AVX512 void silu_mul_avx512(const T* gate_up, T* out, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; r++) {
    const T* g = gate_up + r * 2 * width;
    for (int64_t i = 0; i < width; i += 16) {
      const __mmask16 lanes = lanes_left(width - i);
      const __m512 silu = rounded16<T>(silu16(load16(g + i, lanes)));
      store16(out + r * width + i, _mm512_mul_ps(silu, load16(g + width + i, lanes)), lanes);
    }
  }
}

// Below this many elements an op runs on the calling thread: handing chunks to the team costs a
// few microseconds, about what a 64 x 128 op takes.
constexpr int64_t kTeamElements = 8192;

// run(first, count) over rows [0, rows) in one contiguous chunk per thread on torch's OpenMP team, or
// all rows on this thread (one thread asked for, a small op, or no team found).
template <typename F>
void over_rows(int64_t rows, int64_t row_elements, int64_t threads, F&& run) {
  const int64_t chunks = std::min(rows, threads);
  if (chunks > 1 && rows * row_elements >= kTeamElements) {
    const int64_t per = (rows + chunks - 1) / chunks;
    auto chunk = [&](int64_t c) {
      const int64_t first = c * per;
      if (first < rows) run(first, std::min(per, rows - first));
    };
    if (run_on_openmp_team(chunks, chunks, chunk)) return;
  }
  run(0, rows);
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

template <typename F>
void by_dtype(bool bfloat16, F&& run) {
  if (bfloat16) {
    run(static_cast<uint16_t*>(nullptr));
  } else {
    run(static_cast<float*>(nullptr));
  }
}

}  // namespace

template <typename T>
void rotary_one_head(const T* x, const T* cos, const T* sin, T* out, int64_t dim) {
  (avx512_enabled() ? rotary_head_avx512<T> : rotary_head<T>)(x, cos, sin, out, dim);
}
template void rotary_one_head<float>(const float*, const float*, const float*, float*, int64_t);
template void rotary_one_head<uint16_t>(const uint16_t*, const uint16_t*, const uint16_t*, uint16_t*, int64_t);

void register_decoder_ops(py::module_& m) {
  m.def(
      "add_rms_norm",
      [](uintptr_t residual, uintptr_t delta, uintptr_t weight, uintptr_t out, int64_t rows, int64_t dim, float eps,
         bool bfloat16, int64_t threads) {
        require(rows >= 0 && dim > 0, "add_rms_norm: rows must be >= 0 and dim > 0");
        py::gil_scoped_release release;
        by_dtype(bfloat16, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          auto* run = avx512_enabled() ? add_rms_norm_avx512<T> : add_rms_norm_rows<T>;
          T* sum = reinterpret_cast<T*>(residual);
          const T* add = reinterpret_cast<const T*>(delta);
          over_rows(rows, dim, threads, [&](int64_t first, int64_t count) {
            run(sum + first * dim, add == nullptr ? nullptr : add + first * dim, reinterpret_cast<const T*>(weight),
                reinterpret_cast<T*>(out) + first * dim, count, dim, eps);
          });
        });
      },
      py::arg("residual"), py::arg("delta"), py::arg("weight"), py::arg("out"), py::arg("rows"), py::arg("dim"),
      py::arg("eps"), py::arg("bfloat16"), py::arg("threads") = 1,
      "residual += delta (delta 0: skipped), out = weight * rms_normalised(residual): contiguous [rows, dim] "
      "(see tte_fast.kernels.decoder_ops_cpp).");
  m.def(
      "rotary",
      [](uintptr_t x, int64_t x_row_stride, uintptr_t cos, uintptr_t sin, int64_t table_row_stride, uintptr_t out,
         int64_t rows, int64_t heads, int64_t dim, bool bfloat16, int64_t threads) {
        require(rows >= 0 && heads > 0 && dim > 0 && dim % 2 == 0, "rotary: rows >= 0, heads > 0, even dim > 0");
        require(x_row_stride >= heads * dim, "rotary: a row of x must hold heads * dim elements");
        py::gil_scoped_release release;
        by_dtype(bfloat16, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          const T *source = reinterpret_cast<const T*>(x), *c = reinterpret_cast<const T*>(cos),
                  *s = reinterpret_cast<const T*>(sin);
          over_rows(rows, heads * dim, threads, [&](int64_t first, int64_t count) {
            rotary_walk(source + first * x_row_stride, x_row_stride, c + first * table_row_stride,
                        s + first * table_row_stride, table_row_stride,
                        reinterpret_cast<T*>(out) + first * heads * dim, count, heads, dim,
                        avx512_enabled() ? rotary_head_avx512<T> : rotary_head<T>);
          });
        });
      },
      py::arg("x"), py::arg("x_row_stride"), py::arg("cos"), py::arg("sin"), py::arg("table_row_stride"),
      py::arg("out"), py::arg("rows"), py::arg("heads"), py::arg("dim"), py::arg("bfloat16"), py::arg("threads") = 1,
      "Rotary embedding of rows of heads * dim elements into a contiguous [rows, heads, dim] out.");
  m.def(
      "silu_mul",
      [](uintptr_t gate_up, uintptr_t out, int64_t rows, int64_t width, bool bfloat16, int64_t threads) {
        require(rows >= 0 && width > 0, "silu_mul: rows must be >= 0 and width > 0");
        py::gil_scoped_release release;
        by_dtype(bfloat16, [&](auto* tag) {
          using T = std::remove_pointer_t<decltype(tag)>;
          auto* run = avx512_enabled() ? silu_mul_avx512<T> : silu_mul_rows<T>;
          over_rows(rows, width, threads, [&](int64_t first, int64_t count) {
            run(reinterpret_cast<const T*>(gate_up) + first * 2 * width, reinterpret_cast<T*>(out) + first * width,
                count, width);
          });
        });
      },
      py::arg("gate_up"), py::arg("out"), py::arg("rows"), py::arg("width"), py::arg("bfloat16"), py::arg("threads") = 1,
      "silu(gate) * up of contiguous [rows, 2 * width] rows [gate | up] into [rows, width].");
}

}  // namespace tte
