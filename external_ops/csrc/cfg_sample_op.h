// Paddle binding of cfg_sample: guidance, allowed range, top-k / top-p / temperature and the draw of one step.
// The Python wrapper (paddlemix/ops/__init__.py) always passes all four tensors and turns the optional parts into
// the guide / greedy / use_* attributes.
#pragma once

#include <vector>

#include "kernels/cfg_sample_cpu.h"
#include "op_common.h"

std::vector<paddle::Tensor> CfgSampleForward(const paddle::Tensor& cond, const paddle::Tensor& uncond,
                                             const paddle::Tensor& allowed, const paddle::Tensor& random, bool guide,
                                             float guidance_scale, bool greedy, int64_t top_k, bool use_top_p,
                                             float top_p_thr, bool use_temperature, float temperature) {
  PD_CHECK(cond.shape().size() == 2, "paddlemix_ops.cfg_sample: logits must be [B, V]");
  const int64_t b = cond.shape()[0], v = cond.shape()[1];
  PD_CHECK(uncond.shape() == cond.shape() && uncond.dtype() == cond.dtype(),
           "paddlemix_ops.cfg_sample: cond and uncond logits must have the same shape and dtype");
  PD_CHECK(allowed.numel() == 2 * b && allowed.dtype() == paddle::DataType::INT64,
           "paddlemix_ops.cfg_sample: allowed must be int64 [B, 2]");
  PD_CHECK(random.numel() == b && random.dtype() == paddle::DataType::FLOAT32,
           "paddlemix_ops.cfg_sample: random must be float32 [B]");
  PMX_CHECK_SAME_PLACE("cfg_sample", cond, uncond);
  PMX_CHECK_SAME_PLACE("cfg_sample", cond, allowed);
  PMX_CHECK_SAME_PLACE("cfg_sample", cond, random);
  auto out = paddle::empty({b}, paddle::DataType::INT64, cond.place());
  if (cond.is_cpu()) {
    PMX_CHECK_CPU_F32(cond, "logits");
    pmx::CfgSampleParams p{b, v, guide, guidance_scale, greedy, top_k, use_top_p, top_p_thr, use_temperature,
                           temperature};
    const int status = pmx::cfg_sample_cpu(cond.data<float>(), uncond.data<float>(), allowed.data<int64_t>(),
                                           random.data<float>(), out.data<int64_t>(), p);
    PD_CHECK(status == 0, "paddlemix_ops.cfg_sample: an allowed range (lo, hi) is empty or outside [0, ", v, ")");
  } else {
#ifdef PADDLEMIX_WITH_CUDA
    pmx::CfgSampleArgs a{b, v, guide, guidance_scale, greedy, top_k, use_top_p, top_p_thr, use_temperature,
                         temperature};
    auto ws = paddle::empty({static_cast<int64_t>(pmx::cfg_sample_workspace_bytes(b, v))}, paddle::DataType::UINT8,
                            cond.place());
    const int status =
        pmx::cfg_sample_cuda(cond.data(), uncond.data(), allowed.data<int64_t>(), random.data<float>(),
                             out.data<int64_t>(), a, pmx_cuda_dtype(cond), ws.data(), pmx_device(cond),
                             pmx_stream(cond));
    PMX_CHECK_LAUNCH(status, "cfg_sample");
#else
    PMX_NO_CUDA("cfg_sample");
#endif
  }
  return {out};
}

std::vector<std::vector<int64_t>> CfgSampleShape(const std::vector<int64_t>& c, const std::vector<int64_t>& u,
                                                 const std::vector<int64_t>& a, const std::vector<int64_t>& r) {
  return {{c[0]}};
}
std::vector<paddle::DataType> CfgSampleDtype(const paddle::DataType& c, const paddle::DataType& u,
                                             const paddle::DataType& a, const paddle::DataType& r) {
  return {paddle::DataType::INT64};
}
