// pmx_build_info: int32 [1] on CPU, 1 when the extension was built with its CUDA kernels, else 0.
#pragma once

#include <vector>

#include "op_common.h"

std::vector<paddle::Tensor> BuildInfoForward(const paddle::Tensor& x) {
  auto out = paddle::empty({1}, paddle::DataType::INT32, paddle::CPUPlace());
#ifdef PADDLEMIX_WITH_CUDA
  out.data<int32_t>()[0] = 1;
#else
  out.data<int32_t>()[0] = 0;
#endif
  return {out};
}

std::vector<std::vector<int64_t>> BuildInfoShape(const std::vector<int64_t>& x) { return {{1}}; }
std::vector<paddle::DataType> BuildInfoDtype(const paddle::DataType& x) { return {paddle::DataType::INT32}; }
