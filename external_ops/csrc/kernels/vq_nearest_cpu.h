// Nearest codebook row on CPU, float32, ties to the lowest index. No Paddle types.
// d(n, k) = (|z_n|^2 + |e_k|^2) - 2 z_n.e_k, the same expansion (and summation order over C) as the fallback.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace pmx {

static inline void vq_nearest_cpu(const float* z, const float* codebook, int64_t* out, int64_t n, int64_t k,
                                  int64_t c) {
  // codebook transposed to [C, K] so that the inner loops run over k contiguously (SIMD).
  std::vector<float> et(static_cast<size_t>(c * k)), ee(static_cast<size_t>(k), 0.0f);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i = 0; i < c; ++i) {
      const float v = codebook[j * c + i];
      et[i * k + j] = v;
      ee[j] += v * v;
    }
  const int64_t tile = 2048;
#pragma omp parallel if (n * k * c >= kParallelMinWork)
  {
    std::vector<float> d(tile);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const float* zr = z + r * c;
      float zz = 0.0f;
      for (int64_t i = 0; i < c; ++i) zz += zr[i] * zr[i];
      float best = INFINITY;
      int64_t best_j = 0;
      for (int64_t j0 = 0; j0 < k; j0 += tile) {
        const int64_t len = std::min(tile, k - j0);
        float* dp = d.data();
        const float z0 = zr[0];
        const float* e0 = et.data() + j0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) dp[j] = z0 * e0[j];
        for (int64_t i = 1; i < c; ++i) {
          const float zi = zr[i];
          const float* ei = et.data() + i * k + j0;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) dp[j] += zi * ei[j];
        }
        const float* eep = ee.data() + j0;
        float m = INFINITY;
#pragma omp simd reduction(min : m)
        for (int64_t j = 0; j < len; ++j) {
          dp[j] = (zz + eep[j]) - 2.0f * dp[j];
          m = dp[j] < m ? dp[j] : m;
        }
        if (m < best) {
          int64_t j = 0;
          while (dp[j] != m) ++j;
          best = m;
          best_j = j0 + j;
        }
      }
      out[r] = best_j;
    }
  }
}

}  // namespace pmx
