// Paddle binding of rms_norm: y = weight * (x * rsqrt(mean(x^2, -1) + eps)), statistics in float32.
#pragma once

#include <vector>

#include "kernels/rms_norm_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> RmsNormForward(const paddle::Tensor& x, const paddle::Tensor& weight, float eps) {
  const int64_t hidden = x.shape().back();
  PD_CHECK(weight.numel() == hidden, "paddlemix_ops.rms_norm: weight has ", weight.numel(),
           " elements but the last axis of x has ", hidden);
  PD_CHECK(weight.dtype() == x.dtype(), "paddlemix_ops.rms_norm: weight and x must have the same dtype");
  PMX_CHECK_SAME_PLACE("rms_norm", x, weight);
  const int64_t rows = hidden > 0 ? x.numel() / hidden : 0;
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  if (x.is_cpu()) {
    PMX_CHECK_CPU_F32(x, "x");
    pmx::rms_norm_cpu(x.data<float>(), weight.data<float>(), y.data<float>(), rows, hidden, eps);
  } else {
#ifdef PADDLEMIX_WITH_CUDA
    const int status = pmx::rms_norm_cuda(x.data(), weight.data(), y.data(), rows, hidden, eps, pmx_cuda_dtype(x),
                                          pmx_device(x), pmx_stream(x));
    PMX_CHECK_LAUNCH(status, "rms_norm");
#else
    PMX_NO_CUDA("rms_norm");
#endif
  }
  return {y};
}

std::vector<std::vector<int64_t>> RmsNormShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                               float eps) {
  return {x};
}
std::vector<paddle::DataType> RmsNormDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

// The gradients (dx, dweight) of rms_norm for the output gradient dy (CPU, float32; the GPU backward is Paddle ops,
// paddlemix/ops/autograd.py).
std::vector<paddle::Tensor> RmsNormGradForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& dy, float eps) {
  const int64_t hidden = x.shape().back();
  PD_CHECK(weight.numel() == hidden, "paddlemix_ops.rms_norm_grad: weight has ", weight.numel(),
           " elements but the last axis of x has ", hidden);
  PD_CHECK(dy.shape() == x.shape(), "paddlemix_ops.rms_norm_grad: dy and x must have the same shape");
  PD_CHECK(x.is_cpu() && weight.is_cpu() && dy.is_cpu(), "paddlemix_ops.rms_norm_grad: CPU tensors only");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(weight, "weight");
  PMX_CHECK_CPU_F32(dy, "dy");
  const int64_t rows = hidden > 0 ? x.numel() / hidden : 0;
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dweight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  pmx::rms_norm_grad_cpu(x.data<float>(), weight.data<float>(), dy.data<float>(), dx.data<float>(),
                         dweight.data<float>(), rows, hidden, eps);
  return {dx, dweight};
}

std::vector<std::vector<int64_t>> RmsNormGradShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                   const std::vector<int64_t>& dy, float eps) {
  return {x, w};
}
std::vector<paddle::DataType> RmsNormGradDtype(const paddle::DataType& x, const paddle::DataType& w,
                                               const paddle::DataType& dy) {
  return {x, w};
}
