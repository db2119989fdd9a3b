// Classifier-free guidance + constrained sampling for one generation step on CPU, float32. No Paddle types.
// Semantics: paddlemix/ops/fallback.py cfg_sample. The allowed set is the contiguous range [lo, hi), so after the
// two log-softmax normalisers (one pass over the whole vocabulary per branch) only the range is scored, selected
// (top-k by nth_element, top-p by sorting the survivors) and sampled.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu_math.h"

namespace pmx {

struct CfgSampleParams {
  int64_t batch;
  int64_t vocab;
  bool guide;            // combine with uncond (given, and guidance_scale != 1)
  float guidance_scale;
  bool greedy;
  int64_t top_k;         // <= 0: off
  bool use_top_p;
  float top_p_thr;       // float32(1 - top_p): sorted tokens with cumulative probability <= this are dropped
  bool use_temperature;  // temperature != 1
  float temperature;
};

// Returns 0, or 1 when a row's allowed range [lo, hi) is empty after clamping to [0, vocab).
static inline int cfg_sample_cpu(const float* cond, const float* uncond, const int64_t* allowed, const float* random,
                                 int64_t* out, const CfgSampleParams& p) {
  int status = 0;
  const int64_t V = p.vocab;
  const bool guide = uncond != nullptr && p.guide;
#pragma omp parallel for schedule(static, 1) reduction(max : status) if (p.batch * p.vocab >= (int64_t(1) << 22))
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t lo = allowed ? std::max<int64_t>(allowed[2 * b], 0) : 0;
    const int64_t hi = allowed ? std::min<int64_t>(allowed[2 * b + 1], V) : V;
    if (hi <= lo) {
      status = 1;
      out[b] = 0;
      continue;
    }
    const int64_t n = hi - lo;
    const float* c = cond + b * V;
    float cm, cl, um = 0.0f, ul = 0.0f;
    row_log_sum_exp(c, V, &cm, &cl);
    if (p.greedy && !guide) {
      // the first maximum of (c - cm) - cl over the range: that shift is monotone, so it is the first index whose
      // shifted value equals the shifted maximum of c (no score vector, two vectorizable passes)
      const float target = (range_max(c + lo, n) - cm) - cl;
      int64_t best = 0;
      for (int64_t i = 0; i < n; ++i) {
        if ((c[lo + i] - cm) - cl == target) {
          best = i;
          break;
        }
      }
      out[b] = lo + best;
      continue;
    }
    const float* u = guide ? uncond + b * V : nullptr;
    if (guide) row_log_sum_exp(u, V, &um, &ul);

    // guided scores of the allowed range, as the fallback computes them: (x - max) - log_sum, then the combine
    std::vector<float> s(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const float sc = (c[lo + i] - cm) - cl;
      if (guide) {
        const float su = (u[lo + i] - um) - ul;
        s[i] = p.guidance_scale * (sc - su) + su;
      } else {
        s[i] = sc;
      }
    }
    if (p.greedy) {  // the first maximum
      const float target = range_max(s.data(), n);
      int64_t best = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (s[i] == target) {
          best = i;
          break;
        }
      }
      out[b] = lo + best;
      continue;
    }
    if (p.use_temperature) {
      for (int64_t i = 0; i < n; ++i) s[i] = s[i] / p.temperature;
    }
    // top-k: keep scores >= the k-th largest (ties kept); k >= n keeps the whole range
    float kth = -INFINITY;
    if (p.top_k > 0 && p.top_k < n) {
      std::vector<float> tmp(s);
      std::nth_element(tmp.begin(), tmp.begin() + (p.top_k - 1), tmp.end(), std::greater<float>());
      kth = tmp[p.top_k - 1];
    }
    std::vector<std::pair<float, int64_t>> cand;  // (score, index in range)
    cand.reserve(p.top_k > 0 ? std::min<int64_t>(n, 2 * p.top_k) : n);
    for (int64_t i = 0; i < n; ++i)
      if (s[i] >= kth && s[i] != -INFINITY) cand.emplace_back(s[i], i);
    if (cand.empty()) {
      out[b] = lo;
      continue;
    }
    float m = -INFINITY;
    for (const auto& e : cand) m = std::max(m, e.first);
    if (p.use_top_p) {
      // ascending by (score, index): stable ascending sort of the scores
      std::vector<std::pair<float, int64_t>> asc(cand);
      std::sort(asc.begin(), asc.end());
      float z = 0.0f;
      for (const auto& e : asc) z += std::exp(e.first - m);
      const float thr = p.top_p_thr;
      float cum = 0.0f;
      std::vector<char> removed(static_cast<size_t>(n), 0);
      for (size_t j = 0; j + 1 < asc.size(); ++j) {
        cum += std::exp(asc[j].first - m) / z;
        if (cum <= thr) removed[asc[j].second] = 1;
      }
      size_t w = 0;
      for (const auto& e : cand)
        if (!removed[e.second]) cand[w++] = e;
      cand.resize(w);
    }
    // inverse CDF in index order with the given uniform
    float z = 0.0f;
    std::vector<float> prob(cand.size());
    for (size_t j = 0; j < cand.size(); ++j) z += std::exp(cand[j].first - m);
    float total = 0.0f;
    for (size_t j = 0; j < cand.size(); ++j) {
      prob[j] = std::exp(cand[j].first - m) / z;
      total += prob[j];
    }
    const float target = random[b] * total;
    float cdf = 0.0f;
    int64_t pick = -1, last_pos = -1;
    for (size_t j = 0; j < cand.size(); ++j) {
      if (prob[j] > 0.0f) last_pos = cand[j].second;
      cdf += prob[j];
      if (pick < 0 && cdf > target) pick = cand[j].second;
    }
    if (pick < 0 || (last_pos >= 0 && pick > last_pos)) pick = last_pos >= 0 ? last_pos : cand.back().second;
    out[b] = lo + pick;
  }
  return status;
}

}  // namespace pmx
