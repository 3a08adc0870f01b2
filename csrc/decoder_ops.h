// Elementwise work of a decode step on CPU, each one pass over its rows (see decoder_ops.cpp).
// Pointers come from torch tensors checked by tte_fast.kernels.decoder_ops_cpp; sizes are checked
// again here.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

namespace tte {

// One head's rotary embedding, out = x * cos + rotate_half(x) * sin over `dim` elements, rounded as
// the rotary op rounds (AVX-512 where it runs); T = float or uint16_t (bfloat16).
template <typename T>
void rotary_one_head(const T* x, const T* cos, const T* sin, T* out, int64_t dim);

// Adds add_rms_norm, rotary and silu_mul to the extension module.
void register_decoder_ops(pybind11::module_& m);

}  // namespace tte
