// Paddle binding of masked_softmax (CPU float32, in place): attention scores x [B, H, R, S] become
// softmax(x * scale + mask) over S; mask: none, [B or 1, 1, L, S] broadcast over the heads and the query groups of R
// (R a multiple of L), or [B, H, R, S]. Computed by kernels/masked_softmax_cpu.h.
#pragma once

#include <vector>

#include "kernels/masked_softmax_cpu.h"
#include "op_common.h"

void MaskedSoftmaxForward(paddle::Tensor& x, const paddle::optional<paddle::Tensor>& mask, float scale) {
  PD_CHECK(x.is_cpu(), "paddlemix_ops.masked_softmax: CPU only");
  PMX_CHECK_CPU_F32(x, "scores");
  PD_CHECK(x.shape().size() == 4, "paddlemix_ops.masked_softmax: scores must be [B, H, R, S]");
  const int64_t B = x.shape()[0], H = x.shape()[1], R = x.shape()[2], S = x.shape()[3];
  const float* mp = nullptr;
  int64_t mask_batches = 1, mask_rows = 1;
  if (mask.is_initialized()) {
    const auto& m = mask.get();
    PMX_CHECK_CPU_F32(m, "mask");
    const std::vector<int64_t> ms = m.shape();
    const bool broadcast = ms.size() == 4 && (ms[0] == B || ms[0] == 1) && ms[1] == 1 && ms[2] > 0 &&
                           R % ms[2] == 0 && ms[3] == S;
    const bool exact = ms.size() == 4 && ms[0] == B && ms[1] == H && ms[2] == R && ms[3] == S;
    PD_CHECK(broadcast || exact,
             "paddlemix_ops.masked_softmax: mask must be [B or 1, 1, L, S] with L dividing R, or [B, H, R, S]");
    mask_batches = ms[0];
    mask_rows = exact ? H * R : ms[2];
    mp = m.data<float>();
  }
  pmx::masked_softmax_cpu(x.data<float>(), mp, B * H * R, S, H * R, mask_batches, mask_rows, scale);
}

std::vector<std::vector<int64_t>> MaskedSoftmaxShape(const std::vector<int64_t>& x,
                                                     const paddle::optional<std::vector<int64_t>>& mask) {
  return {x};
}
std::vector<paddle::DataType> MaskedSoftmaxDtype(const paddle::DataType& x,
                                                 const paddle::optional<paddle::DataType>& mask) {
  return {x};
}
