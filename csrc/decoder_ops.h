// Elementwise work of a decode step on CPU, each one pass over its rows (see decoder_ops.cpp).
// Pointers come from torch tensors checked by tte_fast.kernels.decoder_ops_cpp; sizes are checked
// again here.
#pragma once
#include <pybind11/pybind11.h>

namespace tte {

// Adds add_rms_norm, rotary and silu_mul to the extension module.
void register_decoder_ops(pybind11::module_& m);

}  // namespace tte
