// RMSNorm on CPU, float32: y = weight * (x * rsqrt(mean(x^2) + eps)). No Paddle types.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

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

// The gradients of rms_norm for the output gradient dy: with inv = rsqrt(mean(x^2) + eps) per row,
// dx = inv * (dy * weight - x * inv^2 * mean(dy * weight * x)) and dweight = sum over rows of dy * x * inv.
// One pass per row; each thread sums its rows' dweight in its own buffer, added up at the end (in thread order,
// so the result does not depend on timing).
static inline void rms_norm_grad_cpu(const float* x, const float* weight, const float* dy, float* dx, float* dweight,
                                     int64_t rows, int64_t hidden, float eps) {
  int threads = 1;
#ifdef _OPENMP
  if (rows * hidden >= kParallelMinWork) threads = omp_get_max_threads();
#endif
  std::vector<float> partial(static_cast<size_t>(threads) * hidden, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    float* acc = partial.data() + t * hidden;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * hidden;
      const float* gr = dy + r * hidden;
      float* dxr = dx + r * hidden;
      float sq = 0.0f, dot = 0.0f;
#pragma omp simd reduction(+ : sq, dot)
      for (int64_t i = 0; i < hidden; ++i) {
        sq += xr[i] * xr[i];
        dot += gr[i] * weight[i] * xr[i];
      }
      const float inv = 1.0f / std::sqrt(sq / static_cast<float>(hidden) + eps);
      const float c = inv * inv * dot / static_cast<float>(hidden);
#pragma omp simd
      for (int64_t i = 0; i < hidden; ++i) {
        dxr[i] = inv * (gr[i] * weight[i] - xr[i] * c);
        acc[i] += gr[i] * xr[i] * inv;
      }
    }
  }
  for (int64_t i = 0; i < hidden; ++i) {
    float s = 0.0f;
    for (int t = 0; t < threads; ++t) s += partial[static_cast<size_t>(t) * hidden + i];
    dweight[i] = s;
  }
}

}  // namespace pmx
