// Rotate-half rotary position embedding on CPU, float32. No Paddle types.
// q [B, L, Hq, D], k [B, L, Hk, D], pos [B, L] int64, inv_freq [D/2]. cos/sin of pos * inv_freq[j] (float32)
// are computed once per (b, l) and applied to every head: out[j] = x[j] cos - x[j + D/2] sin,
// out[j + D/2] = x[j + D/2] cos + x[j] sin.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace pmx {

static inline void rotary_heads_cpu(const float* x, float* out, int64_t heads, int64_t dim, const float* cs,
                                    const float* sn) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const float* xh = x + h * dim;
    float* oh = out + h * dim;
#pragma omp simd
    for (int64_t j = 0; j < half; ++j) {
      const float a = xh[j], b = xh[j + half];
      oh[j] = a * cs[j] - b * sn[j];
      oh[j + half] = b * cs[j] + a * sn[j];
    }
  }
}

static inline void rotary_embedding_cpu(const float* q, const float* k, const int64_t* pos, const float* inv_freq,
                                        float* q_out, float* k_out, int64_t batch, int64_t seq, int64_t q_heads,
                                        int64_t k_heads, int64_t dim) {
  const int64_t half = dim / 2;
#pragma omp parallel if (batch * seq * (q_heads + k_heads) * dim >= kParallelMinWork)
  {
    std::vector<float> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < batch * seq; ++t) {
      const float p = static_cast<float>(pos[t]);
      for (int64_t j = 0; j < half; ++j) {
        const float f = p * inv_freq[j];
        cs[j] = std::cos(f);
        sn[j] = std::sin(f);
      }
      rotary_heads_cpu(q + t * q_heads * dim, q_out + t * q_heads * dim, q_heads, dim, cs.data(), sn.data());
      rotary_heads_cpu(k + t * k_heads * dim, k_out + t * k_heads * dim, k_heads, dim, cs.data(), sn.data());
    }
  }
}

}  // namespace pmx
