// Paddle binding of conv2d on CPU float32: im2col of a band of output rows into a small workspace (kernels/
// im2col_cpu.h), Paddle's matmul (MKL's GEMM) of the weight [Cout, C*kh*kw] with it, and the bias added while the
// band is copied into the output. The bands keep the columns cache-sized: Paddle's F.conv2d builds the columns of
// the whole image in a new buffer at every call, and on these machines the page faults of that buffer cost as much
// as the GEMM. A 1x1 stride-1 convolution without padding needs no columns: the GEMM runs on the input itself.
// up > 1 convolves the nearest-neighbour upsampling of x by that integer factor (F.interpolate(x, scale_factor=up,
// mode="nearest"), then the convolution), reading x through the im2col instead of materialising the upsampled input.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/im2col_cpu.h"
#include "op_common.h"

// one band of columns: about 2 MB (stays in cache next to the weight), but at least 512 output pixels so the GEMM
// stays efficient (measured best on an AMD EPYC, 2 cores, at the VQ model's shapes)
constexpr int64_t kConvBandBytes = int64_t(2) << 20;
constexpr int64_t kConvBandMinPixels = 512;

static inline int64_t pmx_conv_out(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1) {
  return (in + p0 + p1 - k) / s + 1;
}

static inline paddle::Tensor pmx_view(float* data, const std::vector<int64_t>& shape, const paddle::Place& place) {
  return paddle::from_blob(data, shape, paddle::DataType::FLOAT32, phi::DataLayout::NCHW, place);
}

std::vector<paddle::Tensor> Conv2dForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                                          int64_t pl, int64_t pr, int64_t up) {
  PD_CHECK(x.shape().size() == 4 && weight.shape().size() == 4 && x.shape()[1] == weight.shape()[1],
           "paddlemix_ops.conv2d: x [N, C, H, W] and weight [Cout, C, kh, kw] must share C");
  PD_CHECK(bias.numel() == weight.shape()[0], "paddlemix_ops.conv2d: bias must have Cout elements");
  PD_CHECK(sh > 0 && sw > 0 && pt >= 0 && pb >= 0 && pl >= 0 && pr >= 0,
           "paddlemix_ops.conv2d: stride must be positive and padding non-negative");
  PD_CHECK(up >= 1, "paddlemix_ops.conv2d: the upsampling factor must be >= 1");
  PD_CHECK(x.is_cpu(), "paddlemix_ops.conv2d: CPU only");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(weight, "weight");
  PMX_CHECK_CPU_F32(bias, "bias");
  const int64_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3], hu = h * up, wu = w * up;
  const int64_t cout = weight.shape()[0], kh = weight.shape()[2], kw = weight.shape()[3], k = c * kh * kw;
  const int64_t ho = pmx_conv_out(hu, kh, sh, pt, pb), wo = pmx_conv_out(wu, kw, sw, pl, pr);
  PD_CHECK(ho > 0 && wo > 0, "paddlemix_ops.conv2d: the kernel is larger than the padded input");
  auto out = paddle::empty({n, cout, ho, wo}, paddle::DataType::FLOAT32, x.place());
  const auto place = x.place();
  auto w2 = pmx_view(const_cast<float*>(weight.data<float>()), {cout, k}, place);
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  const bool direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt + pb + pl + pr == 0 && up == 1;
  const int64_t min_rows = (kConvBandMinPixels + wo - 1) / wo;
  const int64_t band_rows = direct ? ho : std::min(ho, std::max(min_rows, kConvBandBytes / (4 * k * wo)));
  paddle::Tensor cols;
  if (!direct) cols = paddle::empty({k * band_rows * wo}, paddle::DataType::FLOAT32, place);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t r0 = 0; r0 < ho; r0 += band_rows) {
      const int64_t r1 = std::min(ho, r0 + band_rows), len = (r1 - r0) * wo;
      float* cp = direct ? const_cast<float*>(xp + b * c * h * w) : cols.data<float>();
      if (!direct) pmx::im2col_cpu(xp + b * c * h * w, cp, c, h, w, kh, kw, sh, sw, pt, pl, wo, r0, r1, up);
      if (direct) {  // the GEMM writes straight into the output, the bias is added in place
        float* ob = op + b * cout * ho * wo;
        auto dst = pmx_view(ob, {cout, len}, place);
        auto res = paddle::experimental::matmul(w2, pmx_view(cp, {k, len}, place), false, false, &dst);
        // a Paddle version that allocates its own result instead of writing into dst: copy it over
        if (res.data<float>() != ob) std::memcpy(ob, res.data<float>(), sizeof(float) * cout * len);
        pmx::add_bias_into(ob, bias.data<float>(), ob, cout, len, 0, len);
        continue;
      }
      auto band = paddle::experimental::matmul(w2, pmx_view(cp, {k, len}, place));
      pmx::add_bias_into(band.data<float>(), bias.data<float>(), op + b * cout * ho * wo, cout, len, r0 * wo,
                         ho * wo);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> Conv2dShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                                              const std::vector<int64_t>& bias, int64_t sh, int64_t sw, int64_t pt,
                                              int64_t pb, int64_t pl, int64_t pr, int64_t up) {
  return {{x[0], weight[0], pmx_conv_out(x[2] * up, weight[2], sh, pt, pb),
           pmx_conv_out(x[3] * up, weight[3], sw, pl, pr)}};
}
std::vector<paddle::DataType> Conv2dDtype(const paddle::DataType& x, const paddle::DataType& w,
                                          const paddle::DataType& b) {
  return {x};
}
