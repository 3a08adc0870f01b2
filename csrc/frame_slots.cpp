#include "frame_slots.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace tte {

int64_t check_frame_slots(const std::vector<FrameSlot>& slots, const std::vector<int64_t>& patches,
                          int64_t temporal_patch_size) {
  const int64_t n = static_cast<int64_t>(slots.size());
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return slots[a].row_offset != slots[b].row_offset ? slots[a].row_offset < slots[b].row_offset
                                                      : slots[a].slot < slots[b].slot;
  });
  auto fail = [](int64_t image, const std::string& why) {
    throw std::invalid_argument("frame_slots do not tile the output at image " + std::to_string(image) + ": " +
                                why);
  };
  int64_t next_row = 0;
  for (int64_t k = 0; k < n; k += temporal_patch_size) {
    const int64_t first = order[k];
    if (slots[first].row_offset != next_row) {
      fail(first, "row offset " + std::to_string(slots[first].row_offset) + ", expected " +
                      std::to_string(next_row));
    }
    for (int64_t t = 0; t < temporal_patch_size; t++) {
      if (k + t >= n) fail(first, "its temporal patch has " + std::to_string(n - k) + " frames");
      const int64_t i = order[k + t];
      if (slots[i].row_offset != slots[first].row_offset || slots[i].slot != t) {
        fail(i, "expected slot " + std::to_string(t) + " at row offset " + std::to_string(next_row));
      }
      if (patches[i] != patches[first]) fail(i, "its size differs from the rest of its temporal patch");
    }
    next_row += patches[first];
  }
  return next_row;
}

}  // namespace tte
