// GroupNorm on CPU, float32, x [N, C, H, W], with the vision decoder's SpatialNorm modulation and the SiLU that
// follows most norms fused in, so a feature map is read twice and written once instead of once per framework op:
//   y = (x - mean) * rstd * gamma[c] + beta[c]      (mean, rstd per sample and group of C / G channels, two-pass
//                                                    statistics in double, biased variance)
//   y = y * scale[n, c, sy, sx] + shift[n, c, sy, sx]   when scale and shift [N, C, hs, ws] are given: resized to
//       H x W by nearest neighbour as F.interpolate does it, sy = min(int(y * (hs / H)), hs - 1) in float32
//   y = y / (1 + exp(-y))                            when silu
// No Paddle types.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace pmx {

// nearest-neighbour source index of each of `out` destination indices from `in` sources (F.interpolate's rule)
static inline std::vector<int64_t> nearest_sources(int64_t in, int64_t out) {
  const float ratio = static_cast<float>(in) / static_cast<float>(out);
  std::vector<int64_t> src(out);
  for (int64_t i = 0; i < out; ++i) src[i] = std::min(static_cast<int64_t>(ratio * static_cast<float>(i)), in - 1);
  return src;
}

// sum of x[0:n] in double, from float partial sums over blocks of 4096 (vectorized)
static inline double block_sum(const float* x, int64_t n, float center, bool squares) {
  double s = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const int64_t i1 = std::min(n, i0 + 4096);
    float b = 0.0f;
    if (squares) {
#pragma omp simd reduction(+ : b)
      for (int64_t i = i0; i < i1; ++i) b += (x[i] - center) * (x[i] - center);
    } else {
#pragma omp simd reduction(+ : b)
      for (int64_t i = i0; i < i1; ++i) b += x[i];
    }
    s += b;
  }
  return s;
}

static inline void group_norm_cpu(const float* x, const float* gamma, const float* beta, const float* scale,
                                  const float* shift, int64_t hs, int64_t ws, float* y, int64_t n, int64_t c,
                                  int64_t h, int64_t w, int64_t groups, float eps, bool silu) {
  const int64_t cg = c / groups, hw = h * w, group_size = cg * hw;
  std::vector<float> mean(n * groups), rstd(n * groups);
  const bool parallel = n * c * hw >= kParallelMinWork;
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (int64_t t = 0; t < n * groups; ++t) {
    const float* xg = x + t * group_size;
    const double m = block_sum(xg, group_size, 0.0f, false) / static_cast<double>(group_size);
    // the second pass around the float mean: exact enough (the mean's rounding error enters squared)
    const double var = block_sum(xg, group_size, static_cast<float>(m), true) / static_cast<double>(group_size);
    mean[t] = static_cast<float>(m);
    rstd[t] = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
  }
  std::vector<int64_t> sy, sx;
  if (scale != nullptr) {
    sy = nearest_sources(hs, h);
    sx = nearest_sources(ws, w);
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t p = 0; p < n * c; ++p) {
    const int64_t b = p / c, ch = p % c, g = b * groups + ch / cg;
    const float m = mean[g], r = rstd[g], ga = gamma[ch], be = beta[ch];
    const float* xp = x + p * hw;
    float* yp = y + p * hw;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) yp[i] = (xp[i] - m) * r * ga + be;
    if (scale != nullptr) {
      for (int64_t i = 0; i < h; ++i) {
        const float* sr = scale + (p * hs + sy[i]) * ws;
        const float* tr = shift + (p * hs + sy[i]) * ws;
        float* yr = yp + i * w;
        for (int64_t j = 0; j < w; ++j) yr[j] = yr[j] * sr[sx[j]] + tr[sx[j]];
      }
    }
    if (silu) {
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) yp[i] = yp[i] / (1.0f + fast_expf(-yp[i]));
    }
  }
}

}  // namespace pmx
