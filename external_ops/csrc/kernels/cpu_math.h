// Small helpers shared by the CPU kernels. No Paddle types.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pmx {

// exp(x) for float32 sums: Cody-Waite range reduction plus a degree-6 polynomial, about 2 ulp, vectorizable
// (std::exp is not vectorized without -ffast-math). Inputs below -87 give a tiny positive value, not 0:
// only used inside sums where that cannot matter.
static inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

// max and log(sum(exp(x - max))) of a float32 row, as a log-softmax needs them.
static inline void row_log_sum_exp(const float* x, int64_t n, float* max_out, float* log_sum_out) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += fast_expf(x[i] - m);
  *max_out = m;
  *log_sum_out = std::log(s);
}

}  // namespace pmx
