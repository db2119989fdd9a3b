// RMSNorm on CPU, float32: y = weight * (x * rsqrt(mean(x^2) + eps)). No Paddle types.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu_math.h"

namespace pmx {

static inline void rms_norm_cpu(const float* x, const float* weight, float* y, int64_t rows, int64_t hidden,
                                float eps) {
#pragma omp parallel for schedule(static) if (rows * hidden >= kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * hidden;
    float* yr = y + r * hidden;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < hidden; ++i) s += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(s / static_cast<float>(hidden) + eps);
#pragma omp simd
    for (int64_t i = 0; i < hidden; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

}  // namespace pmx
