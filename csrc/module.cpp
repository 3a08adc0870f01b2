// pybind11 entry point of tte_fast._C.
#include <pybind11/pybind11.h>

#include "smart_resize.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "tte_fast C++ extension: batched Qwen-VL image preprocessing";
  m.def(
      "smart_resize",
      [](long height, long width, long factor, long min_pixels, long max_pixels) {
        auto hw = tte::smart_resize(height, width, factor, min_pixels, max_pixels);
        return py::make_tuple(hw.first, hw.second);
      },
      py::arg("height"), py::arg("width"), py::arg("factor") = 28, py::arg("min_pixels") = 56 * 56,
      py::arg("max_pixels") = 28 * 28 * 1280,
      "Qwen-VL smart resize: (height, width) rounded to multiples of factor within the pixel budget.");
}
