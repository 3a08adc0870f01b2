// Where each video frame's patches go in a batch's output: frames of one temporal patch share
// their rows, each writing its own temporal copy (its slot) of every row.
#pragma once
#include <cstdint>
#include <vector>

namespace tte {

struct FrameSlot {
  int64_t row_offset;  // the frame's first output row
  int64_t slot;        // its temporal copy in [0, temporal_patch_size)
};

// The number of output rows, after checking that the slots tile them exactly: rows [0, total) are
// groups of `temporal_patch_size` frames with equal patch counts at one offset, slots 0..T-1 each
// once, each group starting where the previous one ends. Throws std::invalid_argument otherwise,
// so no output row is left unwritten or written twice.
int64_t check_frame_slots(const std::vector<FrameSlot>& slots, const std::vector<int64_t>& patches,
                          int64_t temporal_patch_size);

}  // namespace tte
