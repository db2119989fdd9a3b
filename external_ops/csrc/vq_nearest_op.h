// Paddle binding of vq_nearest: index of the nearest codebook row (squared L2, float32, ties to the lowest).
#pragma once

#include <vector>

#include "kernels/vq_nearest_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> VqNearestForward(const paddle::Tensor& z, const paddle::Tensor& codebook) {
  PD_CHECK(z.shape().size() == 2 && codebook.shape().size() == 2 && z.shape()[1] == codebook.shape()[1],
           "paddlemix_ops.vq_nearest: latents [N, C] and codebook [K, C] must share C");
  PD_CHECK(z.dtype() == paddle::DataType::FLOAT32 && codebook.dtype() == paddle::DataType::FLOAT32,
           "paddlemix_ops.vq_nearest: latents and codebook must be float32");
  const int64_t n = z.shape()[0], k = codebook.shape()[0], c = z.shape()[1];
  PD_CHECK(k > 0 && c > 0, "paddlemix_ops.vq_nearest: empty codebook");
  PMX_CHECK_SAME_PLACE("vq_nearest", z, codebook);
  auto out = paddle::empty({n}, paddle::DataType::INT64, z.place());
  if (z.is_cpu()) {
    pmx::vq_nearest_cpu(z.data<float>(), codebook.data<float>(), out.data<int64_t>(), n, k, c);
  } else {
#ifdef PADDLEMIX_WITH_CUDA
    auto ws = paddle::empty({static_cast<int64_t>(pmx::vq_nearest_workspace_bytes(n, k))}, paddle::DataType::UINT8,
                            z.place());
    const int status = pmx::vq_nearest_cuda(z.data<float>(), codebook.data<float>(), out.data<int64_t>(), n, k, c,
                                            ws.data(), pmx_device(z), pmx_stream(z));
    PMX_CHECK_LAUNCH(status, "vq_nearest");
#else
    PMX_NO_CUDA("vq_nearest");
#endif
  }
  return {out};
}

std::vector<std::vector<int64_t>> VqNearestShape(const std::vector<int64_t>& z, const std::vector<int64_t>& e) {
  return {{z[0]}};
}
std::vector<paddle::DataType> VqNearestDtype(const paddle::DataType& z, const paddle::DataType& e) {
  return {paddle::DataType::INT64};
}
