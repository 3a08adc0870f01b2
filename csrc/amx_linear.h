// bfloat16 linear layers of decode-sized batches on the CPU's AMX tiles (see amx_linear.cpp).
// Pointers come from torch tensors checked by tte_fast.runtime.cpu_linear; sizes are checked again.
#pragma once
#include <pybind11/pybind11.h>

namespace tte {

// Adds amx_available, set_amx_enabled, pack_amx_weight and amx_linear to the extension module.
void register_amx_linear(pybind11::module_& m);

}  // namespace tte
