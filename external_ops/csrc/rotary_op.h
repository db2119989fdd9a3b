// Paddle binding of rotary_embedding: rotate-half RoPE of q [B, L, Hq, D] and k [B, L, Hk, D] at
// position_ids [B, L], angles position * inv_freq [D/2] computed in the kernel.
#pragma once

#include <vector>

#include "kernels/rotary_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> RotaryForward(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& pos,
                                          const paddle::Tensor& inv_freq) {
  PD_CHECK(q.shape().size() == 4 && k.shape().size() == 4, "paddlemix_ops.rotary_embedding: q and k must be 4-D");
  const int64_t b = q.shape()[0], l = q.shape()[1], hq = q.shape()[2], d = q.shape()[3], hk = k.shape()[2];
  PD_CHECK(k.shape()[0] == b && k.shape()[1] == l && k.shape()[3] == d,
           "paddlemix_ops.rotary_embedding: q and k disagree on batch, length or head size");
  PD_CHECK(d % 2 == 0 && inv_freq.numel() == d / 2, "paddlemix_ops.rotary_embedding: inv_freq must have D/2 entries");
  PD_CHECK(pos.numel() == b * l && pos.dtype() == paddle::DataType::INT64,
           "paddlemix_ops.rotary_embedding: position_ids must be int64 [B, L]");
  PD_CHECK(inv_freq.dtype() == paddle::DataType::FLOAT32, "paddlemix_ops.rotary_embedding: inv_freq must be float32");
  PD_CHECK(k.dtype() == q.dtype(), "paddlemix_ops.rotary_embedding: q and k must have the same dtype");
  PMX_CHECK_SAME_PLACE("rotary_embedding", q, k);
  PMX_CHECK_SAME_PLACE("rotary_embedding", q, pos);
  PMX_CHECK_SAME_PLACE("rotary_embedding", q, inv_freq);
  auto qo = paddle::empty(q.shape(), q.dtype(), q.place());
  auto ko = paddle::empty(k.shape(), k.dtype(), k.place());
  if (q.is_cpu()) {
    PMX_CHECK_CPU_F32(q, "q");
    pmx::rotary_embedding_cpu(q.data<float>(), k.data<float>(), pos.data<int64_t>(), inv_freq.data<float>(),
                              qo.data<float>(), ko.data<float>(), b, l, hq, hk, d);
  } else {
#ifdef PADDLEMIX_WITH_CUDA
    const int status =
        pmx::rotary_embedding_cuda(q.data(), k.data(), pos.data<int64_t>(), inv_freq.data<float>(), qo.data(),
                                   ko.data(), b * l, hq, hk, d, pmx_cuda_dtype(q), pmx_device(q), pmx_stream(q));
    PMX_CHECK_LAUNCH(status, "rotary_embedding");
#else
    PMX_NO_CUDA("rotary_embedding");
#endif
  }
  return {qo, ko};
}

std::vector<std::vector<int64_t>> RotaryShape(const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                                              const std::vector<int64_t>& pos, const std::vector<int64_t>& f) {
  return {q, k};
}
std::vector<paddle::DataType> RotaryDtype(const paddle::DataType& q, const paddle::DataType& k,
                                          const paddle::DataType& pos, const paddle::DataType& f) {
  return {q, k};
}
