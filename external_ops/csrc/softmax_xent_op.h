// Paddle binding of softmax_xent (CPU float32): logits [N, V] become softmax - onehot(target) in place (zero rows for
// ignored targets, -100); returns the per-row cross-entropy [N]. Computed by kernels/softmax_xent_cpu.h.
#pragma once

#include <vector>

#include "kernels/softmax_xent_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> SoftmaxXentForward(paddle::Tensor& logits, const paddle::Tensor& targets) {
  PD_CHECK(logits.is_cpu() && targets.is_cpu(), "paddlemix_ops.softmax_xent: CPU only");
  PMX_CHECK_CPU_F32(logits, "logits");
  PD_CHECK(logits.shape().size() == 2, "paddlemix_ops.softmax_xent: logits must be [N, V]");
  const int64_t rows = logits.shape()[0], vocab = logits.shape()[1];
  PD_CHECK(targets.dtype() == paddle::DataType::INT64 && targets.numel() == rows,
           "paddlemix_ops.softmax_xent: targets must be int64 with one entry per row of logits");
  const int64_t* t = targets.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    PD_CHECK(t[r] == -100 || (t[r] >= 0 && t[r] < vocab), "paddlemix_ops.softmax_xent: target ", t[r], " of row ",
             r, " is neither -100 (ignored) nor in [0, ", vocab, ")");
  }
  auto loss = paddle::empty({rows}, logits.dtype(), logits.place());
  pmx::softmax_xent_cpu(logits.data<float>(), t, loss.data<float>(), rows, vocab);
  return {loss};
}

std::vector<std::vector<int64_t>> SoftmaxXentShape(const std::vector<int64_t>& logits,
                                                   const std::vector<int64_t>& targets) {
  return {{logits[0]}};
}
std::vector<paddle::DataType> SoftmaxXentDtype(const paddle::DataType& logits, const paddle::DataType& targets) {
  return {logits};
}
