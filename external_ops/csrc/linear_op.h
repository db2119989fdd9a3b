// Paddle binding of linear for few rows on CPU float32: y [..., N] = x [..., K] @ weight [K, N] (no bias), the
// weight streamed once by kernels/linear_cpu.h. Paddle's matmul (MKL) runs these GEMV-shaped products of a decode
// step well below the memory bandwidth; larger products go to Paddle's matmul from the Python side.
#pragma once

#include <vector>

#include "kernels/linear_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight) {
  PD_CHECK(x.is_cpu() && weight.is_cpu(), "paddlemix_ops.linear: CPU only");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(weight, "weight");
  const std::vector<int64_t> x_shape = x.shape(), w_shape = weight.shape();
  PD_CHECK(!x_shape.empty() && w_shape.size() == 2 && x_shape.back() == w_shape[0],
           "paddlemix_ops.linear: x [..., K] and weight [K, N] must share K");
  const int64_t k = w_shape[0], n = w_shape[1];
  std::vector<int64_t> out_shape(x_shape.begin(), x_shape.end() - 1);
  int64_t m = 1;
  for (int64_t d : out_shape) m *= d;
  out_shape.push_back(n);
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  pmx::linear_small_m_cpu(x.data<float>(), weight.data<float>(), y.data<float>(), m, k, n);
  return {y};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight) {
  std::vector<int64_t> out(x.begin(), x.end() - 1);
  out.push_back(weight[1]);
  return {out};
}
std::vector<paddle::DataType> LinearDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }
