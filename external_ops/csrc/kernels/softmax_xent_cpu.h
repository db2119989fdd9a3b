// Cross-entropy and its gradient over float32 logits on CPU, in place. No Paddle types.
// Row r of logits [rows, vocab] with target t = targets[r]: loss[r] = logsumexp(logits[r]) - logits[r, t], and the
// row becomes d(loss[r]) / d(logits[r]) = softmax(logits[r]) - onehot(t). Rows with a negative target (the ignore
// index) get loss 0 and a zero gradient. Two passes over each row (max; exp, sum and normalize in place) instead of
// the framework's max, subtract, exp, sum, divide, gather and scatter ops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_math.h"

namespace pmx {

static inline void softmax_xent_cpu(float* logits, const int64_t* targets, float* loss, int64_t rows, int64_t vocab) {
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    float* x = logits + r * vocab;
    const int64_t t = targets[r];
    if (t < 0) {
      std::memset(x, 0, sizeof(float) * vocab);
      loss[r] = 0.0f;
      continue;
    }
    const float m = range_max(x, vocab);
    const float picked = x[t];
    const double s = blocked_exp_sum<true>(x, x, vocab, m);
    const float inv = static_cast<float>(1.0 / s);
#pragma omp simd
    for (int64_t i = 0; i < vocab; ++i) x[i] *= inv;
    x[t] -= 1.0f;
    loss[r] = static_cast<float>(std::log(s) + static_cast<double>(m) - static_cast<double>(picked));
  }
}

}  // namespace pmx
