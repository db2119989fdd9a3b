// Small helpers shared by the CPU kernels. No Paddle types.
#pragma once

#include <cmath>
#include <cstdint>

namespace pmx {

// below this many elements an OpenMP team costs more than it saves
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// exp(x) for float32 sums: Cody-Waite range reduction plus a degree-6 polynomial, about 2 ulp, vectorizable
// (std::exp is not vectorized without -ffast-math). Inputs below -87 give a tiny positive value, not 0:
// only used inside sums where that cannot matter.
static inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + shift) - shift;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = __builtin_bit_cast(int32_t, p) + (static_cast<int32_t>(n) << 23);
  return __builtin_bit_cast(float, bits);
}

// the maximum of x[0:n] (vectorized); -inf for n == 0
static inline float range_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// x[0:n] = softmax of x given its maximum m, in place: exp(x - m) / sum. Entries more than 87 below the maximum (the
// masked ones, at the dtype's lowest value) get weight exactly 0.
static inline void exp_normalize(float* x, int64_t n, float m) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float z = x[i] - m;
    const float e = z < -87.0f ? 0.0f : fast_expf(z);
    x[i] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

// sum(exp(x - m)) over a float32 row: float sums over blocks of 2048 (vectorized), the blocks added in double,
// accurate to about 1e-7 (terms below exp(-87) count as 0). kStore: also writes each exp(x[i] - m) to out[i]
// (out may be x itself).
template <bool kStore>
static inline double blocked_exp_sum(const float* x, float* out, int64_t n, float m) {
  double s = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += 2048) {
    const int64_t i1 = i0 + 2048 < n ? i0 + 2048 : n;
    float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
    for (int64_t i = i0; i < i1; ++i) {
      const float z = x[i] - m;
      const float e = z < -87.0f ? 0.0f : fast_expf(z);
      if (kStore) out[i] = e;
      bs += e;
    }
    s += bs;
  }
  return s;
}

// max and log(sum(exp(x - max))) of a float32 row, as a log-softmax needs them.
static inline void row_log_sum_exp(const float* x, int64_t n, float* max_out, float* log_sum_out) {
  const float m = range_max(x, n);
  *max_out = m;
  *log_sum_out = static_cast<float>(std::log(blocked_exp_sum<false>(x, nullptr, n, m)));
}

}  // namespace pmx
