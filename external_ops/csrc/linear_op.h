// Paddle binding of linear for few rows on CPU float32: y [..., N] = x [..., K] @ weight [K, N] (no bias), the
// weight streamed once by kernels/linear_cpu.h. The weight is float32, bf16, or int8 with scale [N] float32 (one per
// output column: y = (x @ weight) * scale). Paddle's matmul (MKL) runs these GEMV-shaped products of a decode
// step well below the memory bandwidth; larger products go to Paddle's matmul from the Python side.
#pragma once

#include <vector>

#include "kernels/linear_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::optional<paddle::Tensor>& scale) {
  PD_CHECK(x.is_cpu() && weight.is_cpu(), "paddlemix_ops.linear: CPU only");
  PMX_CHECK_CPU_F32(x, "x");
  const pmx::WeightKind kind = pmx_weight_kind(weight, "linear");
  PD_CHECK((kind == pmx::WeightKind::kInt8) == scale.is_initialized(),
           "paddlemix_ops.linear: an int8 weight needs its scale, other weights take none");
  const std::vector<int64_t> x_shape = x.shape(), w_shape = weight.shape();
  PD_CHECK(!x_shape.empty() && w_shape.size() == 2 && x_shape.back() == w_shape[0],
           "paddlemix_ops.linear: x [..., K] and weight [K, N] must share K");
  const int64_t k = w_shape[0], n = w_shape[1];
  std::vector<int64_t> out_shape(x_shape.begin(), x_shape.end() - 1);
  int64_t m = 1;
  for (int64_t d : out_shape) m *= d;
  out_shape.push_back(n);
  const float* sp = nullptr;
  if (scale.is_initialized()) {
    PMX_CHECK_CPU_F32(scale.get(), "scale");
    PD_CHECK(scale.get().numel() == n, "paddlemix_ops.linear: scale must have one entry per output column");
    sp = scale.get().data<float>();
  }
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  pmx_select_isa();
  const void* w = pmx_weight_data(weight);
  float* yp = y.data<float>();
  switch (kind) {
    case pmx::WeightKind::kBFloat16:
      pmx::linear_small_m_cpu(x.data<float>(), static_cast<const uint16_t*>(w), sp, yp, m, k, n);
      break;
    case pmx::WeightKind::kInt8:
      pmx::linear_small_m_cpu(x.data<float>(), static_cast<const int8_t*>(w), sp, yp, m, k, n);
      break;
    default:
      pmx::linear_small_m_cpu(x.data<float>(), static_cast<const float*>(w), sp, yp, m, k, n);
  }
  return {y};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                                              const paddle::optional<std::vector<int64_t>>& scale) {
  std::vector<int64_t> out(x.begin(), x.end() - 1);
  out.push_back(weight[1]);
  return {out};
}
std::vector<paddle::DataType> LinearDtype(const paddle::DataType& x, const paddle::DataType& w,
                                          const paddle::optional<paddle::DataType>& scale) {
  return {x};
}
