// Small-M linear on CPU, float32: y [M, N] = x [M, K] @ w [K, N] (w in Paddle's [in, out] layout), for the few rows
// of a decode step. Such a product reads each weight once and does little arithmetic per weight, so its speed is the
// speed the weight streams from memory: the threads split the columns into contiguous ranges, and each walks its
// range in panels, reading four weight rows of the panel at a time front to back (whole cache lines, sequential
// addresses, the next rows prefetched) while the M output rows of the panel stay in cache and the x values are
// broadcast from registers. No Paddle types.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pmx {

// columns of one panel: 4 weight rows x 4 KB streamed together, the panel's outputs (M x 4 KB) stay in L1 / L2
constexpr int64_t kLinearPanel = 1024;
// weights (K * N) below which one thread does the whole product (the threads' start-up would cost more)
constexpr int64_t kLinearParallelMinWeights = int64_t(1) << 16;

#if defined(__AVX2__) && defined(__FMA__)
// the cache line at p in each of the next four weight rows: the hardware prefetcher follows each 4 KB row segment but
// not the jump to the next group of rows (measured 15-25% faster at one row on a 2-core AMD EPYC)
static inline void pmx_linear_prefetch(const float* p, int64_t n) {
  for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(p + i * n), _MM_HINT_T0);
}
#endif

// y[:, c0:c1] += x @ w[:, c0:c1] for the m rows of x and y
static inline void linear_panel(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n, int64_t c0,
                                int64_t c1) {
  int64_t kk = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t cv = c0 + ((c1 - c0) / 8) * 8;  // columns done with 8-wide vectors
  for (; kk + 4 <= k; kk += 4) {
    const float* w0 = w + kk * n;
    const float* w1 = w0 + n;
    const float* w2 = w1 + n;
    const float* w3 = w2 + n;
    for (int64_t r = 0; r < m; r += 2) {  // two output rows per pass over the four weight rows (in L1 after the first)
      const float* xa = x + r * k + kk;
      float* y0 = y + r * n;
      if (r + 1 < m) {
        const float* xb = xa + k;
        const __m256 a0 = _mm256_set1_ps(xa[0]), a1 = _mm256_set1_ps(xa[1]), a2 = _mm256_set1_ps(xa[2]),
                     a3 = _mm256_set1_ps(xa[3]);
        const __m256 b0 = _mm256_set1_ps(xb[0]), b1 = _mm256_set1_ps(xb[1]), b2 = _mm256_set1_ps(xb[2]),
                     b3 = _mm256_set1_ps(xb[3]);
        float* ya = y0;
        float* yb = y0 + n;
        for (int64_t c = c0; c < cv; c += 8) {
          if ((c & 15) == 0 && kk + 8 <= k) pmx_linear_prefetch(w0 + 4 * n + c, n);
          const __m256 v0 = _mm256_loadu_ps(w0 + c), v1 = _mm256_loadu_ps(w1 + c), v2 = _mm256_loadu_ps(w2 + c),
                       v3 = _mm256_loadu_ps(w3 + c);
          __m256 s = _mm256_loadu_ps(ya + c);
          s = _mm256_fmadd_ps(a0, v0, s);
          s = _mm256_fmadd_ps(a1, v1, s);
          s = _mm256_fmadd_ps(a2, v2, s);
          s = _mm256_fmadd_ps(a3, v3, s);
          _mm256_storeu_ps(ya + c, s);
          __m256 t = _mm256_loadu_ps(yb + c);
          t = _mm256_fmadd_ps(b0, v0, t);
          t = _mm256_fmadd_ps(b1, v1, t);
          t = _mm256_fmadd_ps(b2, v2, t);
          t = _mm256_fmadd_ps(b3, v3, t);
          _mm256_storeu_ps(yb + c, t);
        }
      } else {
        const __m256 a0 = _mm256_set1_ps(xa[0]), a1 = _mm256_set1_ps(xa[1]), a2 = _mm256_set1_ps(xa[2]),
                     a3 = _mm256_set1_ps(xa[3]);
        for (int64_t c = c0; c < cv; c += 8) {
          if ((c & 15) == 0 && kk + 8 <= k) pmx_linear_prefetch(w0 + 4 * n + c, n);
          __m256 s = _mm256_loadu_ps(y0 + c);
          s = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + c), s);
          s = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w1 + c), s);
          s = _mm256_fmadd_ps(a2, _mm256_loadu_ps(w2 + c), s);
          s = _mm256_fmadd_ps(a3, _mm256_loadu_ps(w3 + c), s);
          _mm256_storeu_ps(y0 + c, s);
        }
      }
    }
    for (int64_t r = 0; r < m; ++r) {  // the panel's last columns that fill no whole vector
      const float* xr = x + r * k + kk;
      float* yr = y + r * n;
      for (int64_t c = cv; c < c1; ++c) yr[c] += xr[0] * w0[c] + xr[1] * w1[c] + xr[2] * w2[c] + xr[3] * w3[c];
    }
  }
#endif
  for (; kk < k; ++kk) {  // remaining weight rows (all of them without AVX2)
    const float* wk = w + kk * n;
    for (int64_t r = 0; r < m; ++r) {
      const float xv = x[r * k + kk];
      float* yr = y + r * n;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) yr[c] += xv * wk[c];
    }
  }
}

// y [m, n] = x [m, k] @ w [k, n], all row-major and contiguous; meant for small m (the arithmetic per weight read
// from memory grows with m, the L1 traffic of the outputs too). Each thread streams one contiguous column range
// (measured faster than handing out panels dynamically, which interleaves the threads' streams).
static inline void linear_small_m_cpu(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n) {
  int threads = 1;
#ifdef _OPENMP
  if (k * n >= kLinearParallelMinWeights) threads = std::max<int>(1, std::min<int64_t>(omp_get_max_threads(), n / 64));
#endif
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    // contiguous column ranges, multiples of 8 columns except the last
    const int64_t vec_cols = (n + 7) / 8;
    const int64_t c_begin = std::min(n, vec_cols * t / nt * 8);
    const int64_t c_end = t + 1 == nt ? n : std::min(n, vec_cols * (t + 1) / nt * 8);
    for (int64_t p0 = c_begin; p0 < c_end; p0 += kLinearPanel) {
      const int64_t p1 = std::min(c_end, p0 + kLinearPanel);
      for (int64_t r = 0; r < m; ++r) std::memset(y + r * n + p0, 0, sizeof(float) * (p1 - p0));
      linear_panel(x, w, y, m, k, n, p0, p1);
    }
  }
}

}  // namespace pmx
