// Softmax over the last axis of attention scores on CPU, float32, in place, with the scaling and the additive mask
// folded in: x[r, :] = softmax(x[r, :] * scale + mask[row(r), :]). One read and one write of the scores instead of
// three framework ops (scale, broadcast add, softmax) over them. Masked entries (the dtype's lowest value) get
// weight exactly 0. No Paddle types.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu_math.h"

namespace pmx {

// x [rows, cols]; mask: nullptr or [mask_batches, mask_rows, cols] with row(r) = (b * mask_rows + (r % rows_per_batch)
// % mask_rows) for b = r / rows_per_batch (0 when mask_batches == 1): a [B, 1, L, S] mask broadcast over the heads of
// [B, heads, g * L, S] scores (mask_rows = L), or a mask of the scores' own shape (mask_rows = rows_per_batch)
static inline void masked_softmax_cpu(float* x, const float* mask, int64_t rows, int64_t cols, int64_t rows_per_batch,
                                      int64_t mask_batches, int64_t mask_rows, float scale) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * cols;
    if (mask != nullptr) {
      const int64_t b = mask_batches > 1 ? r / rows_per_batch : 0;
      const float* mr = mask + (b * mask_rows + (r % rows_per_batch) % mask_rows) * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) xr[c] = xr[c] * scale + mr[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) xr[c] = xr[c] * scale;
    }
    exp_normalize(xr, cols, range_max(xr, cols));
  }
}

}  // namespace pmx
