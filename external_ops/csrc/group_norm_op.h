// Paddle binding of group_norm (CPU float32): GroupNorm of x [N, C, H, W] with weight/bias [C], optionally modulated
// by scale and shift [N, C, hs, ws] resized to H x W by nearest neighbour (the VQ decoder's SpatialNorm), optionally
// followed by SiLU; computed by kernels/group_norm_cpu.h.
#pragma once

#include <vector>

#include "kernels/group_norm_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> GroupNormForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::Tensor& bias, const paddle::optional<paddle::Tensor>& scale,
                                             const paddle::optional<paddle::Tensor>& shift, int64_t groups, float eps,
                                             bool silu) {
  PD_CHECK(x.is_cpu(), "paddlemix_ops.group_norm: CPU only");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(weight, "weight");
  PMX_CHECK_CPU_F32(bias, "bias");
  PD_CHECK(x.shape().size() == 4, "paddlemix_ops.group_norm: x must be [N, C, H, W]");
  const int64_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3];
  PD_CHECK(groups > 0 && c % groups == 0, "paddlemix_ops.group_norm: the channels must split into the groups");
  PD_CHECK(weight.numel() == c && bias.numel() == c, "paddlemix_ops.group_norm: weight and bias must have C elements");
  PD_CHECK(scale.is_initialized() == shift.is_initialized(),
           "paddlemix_ops.group_norm: scale and shift go together");
  const float* sp = nullptr;
  const float* tp = nullptr;
  int64_t hs = 0, ws = 0;
  if (scale.is_initialized()) {
    const auto& s = scale.get();
    const auto& t = shift.get();
    PMX_CHECK_CPU_F32(s, "scale");
    PMX_CHECK_CPU_F32(t, "shift");
    PD_CHECK(s.shape().size() == 4 && s.shape() == t.shape() && s.shape()[0] == n && s.shape()[1] == c &&
                 s.shape()[2] > 0 && s.shape()[3] > 0,
             "paddlemix_ops.group_norm: scale and shift must be [N, C, hs, ws]");
    hs = s.shape()[2];
    ws = s.shape()[3];
    sp = s.data<float>();
    tp = t.data<float>();
  }
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  pmx::group_norm_cpu(x.data<float>(), weight.data<float>(), bias.data<float>(), sp, tp, hs, ws, y.data<float>(), n,
                      c, h, w, groups, eps, silu);
  return {y};
}

std::vector<std::vector<int64_t>> GroupNormShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                                                 const std::vector<int64_t>& bias,
                                                 const paddle::optional<std::vector<int64_t>>& scale,
                                                 const paddle::optional<std::vector<int64_t>>& shift) {
  return {x};
}
std::vector<paddle::DataType> GroupNormDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                             const paddle::DataType& bias,
                                             const paddle::optional<paddle::DataType>& scale,
                                             const paddle::optional<paddle::DataType>& shift) {
  return {x};
}
