// Small-M linear on CPU, float32: y [M, N] = x [M, K] @ w [K, N] (w in Paddle's [in, out] layout), for the few rows
// of a decode step. Such a product reads each weight once and does little arithmetic per weight, so its speed is the
// speed the weight streams from memory: each thread takes one contiguous block of weight rows and streams it front to
// back (in column panels when rows are long), four rows at a time (whole cache lines, the next rows prefetched), into
// its own partial output [M, N] that stays in cache, with the x values broadcast from registers; then the threads add
// the partial outputs, each over its share of the columns. On a 2-core AMD EPYC this streams 31 GB/s where splitting
// the columns between the threads (interleaved strided streams) gave 25 GB/s. No Paddle types.
// The weight may be stored as float32, bf16 (uint16_t bits) or int8 (weight-only quantization with one float32 scale
// per output column): the kernels are templates on the stored type, widen each weight to float32 in registers as
// they read it and accumulate in float32; an int8 product's column scales are applied once, when the threads'
// partial outputs are added (y[:, c] = (x @ q)[:, c] * scale[c]), so fewer bytes stream for the same arithmetic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PMX_AVX512_TARGET 1  // the 16-wide path of bf16 / int8 weights is compiled for AVX-512 whatever -march says
#endif

namespace pmx {

#ifdef PMX_AVX512_TARGET
// whether the bf16 products and the int8 products take the AVX-512 path: chosen by the bindings (see
// op_common.h: PADDLEMIX_OPS_AVX512) and only where the CPU has AVX-512 F + BW (checked at run time); refreshed at
// every call (linear_set_isa), so a test can switch paths with the environment variable
struct LinearIsa {
  bool bf16_avx512 = false, int8_avx512 = false;
};
inline LinearIsa& linear_isa() {
  static LinearIsa isa;
  return isa;
}
static inline void linear_set_isa(bool bf16_avx512, bool int8_avx512) {
  const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  linear_isa().bf16_avx512 = bf16_avx512 && has;
  linear_isa().int8_avx512 = int8_avx512 && has;
}
#else
static inline void linear_set_isa(bool, bool) {}
#endif

// columns of one panel: 4 weight rows x 4 KB streamed together, the panel's outputs (M x 4 KB) stay in L1 / L2
constexpr int64_t kLinearPanel = 1024;
// the panel of a W weight: 1024 columns, 4096 for int8 so that each row segment is still 4 KB (with 1 KB segments
// of long rows every segment is a new page the prefetcher restarts on: an Emu3-8B int8 lm_head [4096, 184622]
// streamed at 10 GB/s where bf16 streams at 25 GB/s on a 2-core AMD EPYC). The columns a panel ends at are multiples
// of 16 either way, so every output is summed in the same order and the results are the same.
template <typename W>
constexpr int64_t linear_panel_cols() {
  return std::is_same<W, int8_t>::value ? 4 * kLinearPanel : kLinearPanel;
}
// weights (K * N) below which one thread does the whole product (the threads' start-up would cost more)
constexpr int64_t kLinearParallelMinWeights = int64_t(1) << 16;

// one stored weight widened to float32 (bf16 is the high half of a float32; int8 the quantized value, unscaled)
static inline float widen(float w) { return w; }
static inline float widen(uint16_t w) { return __builtin_bit_cast(float, static_cast<uint32_t>(w) << 16); }
static inline float widen(int8_t w) { return static_cast<float>(w); }

#if defined(__AVX2__) && defined(__FMA__)
// eight consecutive stored weights widened to float32
static inline __m256 widen8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 widen8(const uint16_t* p) {
  const __m256i bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
}
static inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

#ifdef PMX_AVX512_TARGET
// sixteen consecutive weights widened to float32 (float32 weights: the float32 path stays the AVX2 one, measured
// at the memory bandwidth; this overload only completes the set)
__attribute__((target("avx512f,avx512bw"))) static inline __m512 widen16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw"))) static inline __m512 widen16(const uint16_t* p) {
  const __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
}
__attribute__((target("avx512f,avx512bw"))) static inline __m512 widen16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// linear_panel's groups of four weight rows (same row order, same arithmetic per output: one fused multiply-add per
// weight, in row order) with 16-wide vectors, for bf16 / int8 weights: their widening (a convert per 8 weights with
// AVX2) is what limits the stream. Columns past the last whole vector one by one.
template <typename W>
__attribute__((target("avx512f,avx512bw"))) static void linear_groups_avx512(
    const float* x, int64_t ldx, const W* w, float* y, int64_t m, int64_t n, int64_t c0, int64_t c1, int64_t groups,
    int64_t rs, int64_t gstep) {
  const int64_t cv = c0 + ((c1 - c0) / 16) * 16;
  constexpr int64_t line = 64 / sizeof(W);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t row = g * gstep;
    const W* w0 = w + row * n;
    const W* w1 = w0 + rs * n;
    const W* w2 = w1 + rs * n;
    const W* w3 = w2 + rs * n;
    const bool prefetch = g + 2 <= groups;
    const int64_t next = gstep * n;
    for (int64_t c = c0; c < cv; c += 16) {
      if ((c & (line - 1)) == 0 && prefetch)
        for (int i = 0; i < 4; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(w0 + next + c + i * rs * n), _MM_HINT_T0);
      const __m512 v0 = widen16(w0 + c), v1 = widen16(w1 + c), v2 = widen16(w2 + c), v3 = widen16(w3 + c);
      for (int64_t r = 0; r < m; ++r) {
        const float* xr = x + r * ldx + row;
        float* yr = y + r * n + c;
        __m512 s = _mm512_loadu_ps(yr);
        s = _mm512_fmadd_ps(_mm512_set1_ps(xr[0]), v0, s);
        s = _mm512_fmadd_ps(_mm512_set1_ps(xr[rs]), v1, s);
        s = _mm512_fmadd_ps(_mm512_set1_ps(xr[2 * rs]), v2, s);
        s = _mm512_fmadd_ps(_mm512_set1_ps(xr[3 * rs]), v3, s);
        _mm512_storeu_ps(yr, s);
      }
    }
    for (int64_t r = 0; r < m; ++r) {
      const float* xr = x + r * ldx + row;
      float* yr = y + r * n;
      for (int64_t c = cv; c < c1; ++c)
        yr[c] += xr[0] * widen(w0[c]) + xr[rs] * widen(w1[c]) + xr[2 * rs] * widen(w2[c]) +
                 xr[3 * rs] * widen(w3[c]);
    }
  }
}
#endif

// the cache line at p + i * stride for i < 4 (the next group's four weight rows): the hardware prefetcher follows each
// row segment but not the jump to the next group of rows (measured 15-25% faster at one row on a 2-core AMD EPYC)
template <typename W>
static inline void pmx_linear_prefetch(const W* p, int64_t stride) {
  for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(p + i * stride), _MM_HINT_T0);
}
#endif

// y[:, c0:c1] += x @ w[:, c0:c1] for the m rows of x [m, k] (row stride ldx) and y [m, n]; w [k, n]. The weight rows
// are read in groups of four, either adjacent (rows 4g .. 4g+3) or, with `spread`, a quarter of the block apart
// (rows g, g+q, g+2q, g+3q for q = k / 4): four streams far apart in memory, which the hardware prefetchers fetch in
// parallel where one contiguous stream of whole short rows is not (measured on a 2-core AMD EPYC: a decode step's
// layer products at 24 -> 31 GB/s); rows beyond the last whole group are added one by one.
template <typename W>
static inline void linear_panel(const float* x, int64_t ldx, const W* w, float* y, int64_t m, int64_t k, int64_t n,
                                int64_t c0, int64_t c1, bool spread = false) {
  const int64_t groups = k / 4, rs = spread ? groups : 1, gstep = spread ? 1 : 4;  // member j of group g: g*gstep + j*rs
  int64_t kk = 0;  // first row not done in groups
#ifdef PMX_AVX512_TARGET
  if (std::is_same<W, int8_t>::value ? linear_isa().int8_avx512
                                     : std::is_same<W, uint16_t>::value && linear_isa().bf16_avx512) {
    linear_groups_avx512(x, ldx, w, y, m, n, c0, c1, groups, rs, gstep);
    kk = 4 * groups;
  }
#endif
#if defined(__AVX2__) && defined(__FMA__)
  const int64_t cv = c0 + ((c1 - c0) / 8) * 8;  // columns done with 8-wide vectors
  constexpr int64_t line = 64 / sizeof(W);        // weights per cache line: one prefetch each
  for (int64_t g = kk / 4; g < groups; ++g) {
    const int64_t row = g * gstep;
    const W* w0 = w + row * n;
    const W* w1 = w0 + rs * n;
    const W* w2 = w1 + rs * n;
    const W* w3 = w2 + rs * n;
    const bool prefetch = g + 2 <= groups;
    const int64_t next = gstep * n;  // from a row of this group to the same member of the next group
    for (int64_t r = 0; r < m; r += 2) {  // two output rows per pass over the four weight rows (in L1 after the first)
      const float* xa = x + r * ldx + row;
      float* y0 = y + r * n;
      if (r + 1 < m) {
        const float* xb = xa + ldx;
        const __m256 a0 = _mm256_set1_ps(xa[0]), a1 = _mm256_set1_ps(xa[rs]), a2 = _mm256_set1_ps(xa[2 * rs]),
                     a3 = _mm256_set1_ps(xa[3 * rs]);
        const __m256 b0 = _mm256_set1_ps(xb[0]), b1 = _mm256_set1_ps(xb[rs]), b2 = _mm256_set1_ps(xb[2 * rs]),
                     b3 = _mm256_set1_ps(xb[3 * rs]);
        float* ya = y0;
        float* yb = y0 + n;
        for (int64_t c = c0; c < cv; c += 8) {
          if ((c & (line - 1)) == 0 && prefetch) pmx_linear_prefetch(w0 + next + c, rs * n);
          const __m256 v0 = widen8(w0 + c), v1 = widen8(w1 + c), v2 = widen8(w2 + c), v3 = widen8(w3 + c);
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
        const __m256 a0 = _mm256_set1_ps(xa[0]), a1 = _mm256_set1_ps(xa[rs]), a2 = _mm256_set1_ps(xa[2 * rs]),
                     a3 = _mm256_set1_ps(xa[3 * rs]);
        for (int64_t c = c0; c < cv; c += 8) {
          if ((c & (line - 1)) == 0 && prefetch) pmx_linear_prefetch(w0 + next + c, rs * n);
          __m256 s = _mm256_loadu_ps(y0 + c);
          s = _mm256_fmadd_ps(a0, widen8(w0 + c), s);
          s = _mm256_fmadd_ps(a1, widen8(w1 + c), s);
          s = _mm256_fmadd_ps(a2, widen8(w2 + c), s);
          s = _mm256_fmadd_ps(a3, widen8(w3 + c), s);
          _mm256_storeu_ps(y0 + c, s);
        }
      }
    }
    for (int64_t r = 0; r < m; ++r) {  // the panel's last columns that fill no whole vector
      const float* xr = x + r * ldx + row;
      float* yr = y + r * n;
      for (int64_t c = cv; c < c1; ++c)
        yr[c] += xr[0] * widen(w0[c]) + xr[rs] * widen(w1[c]) + xr[2 * rs] * widen(w2[c]) +
                 xr[3 * rs] * widen(w3[c]);
    }
  }
  kk = 4 * groups;
#endif
  for (; kk < k; ++kk) {  // remaining weight rows (all of them without AVX2)
    const W* wk = w + kk * n;
    for (int64_t r = 0; r < m; ++r) {
      const float xv = x[r * ldx + kk];
      float* yr = y + r * n;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) yr[c] += xv * widen(wk[c]);
    }
  }
}

// this thread's share [i0, i1) of n items, in contiguous multiples of `align` except the last share
static inline void linear_share(int64_t n, int64_t align, int t, int nt, int64_t* i0, int64_t* i1) {
  const int64_t units = (n + align - 1) / align;
  *i0 = std::min(n, units * t / nt * align);
  *i1 = t + 1 == nt ? n : std::min(n, units * (t + 1) / nt * align);
}

// part [m, n] = x[:, k0:k1] @ w[k0:k1, :] over thread t's block k0..k1 of the k weight rows (x [m, k], w [k, n])
template <typename W>
static inline void linear_rows_part(const float* x, const W* w, float* part, int64_t m, int64_t k, int64_t n,
                                    int t, int nt) {
  int64_t k0, k1;
  linear_share(k, 4, t, nt, &k0, &k1);
  std::fill(part, part + m * n, 0.0f);
  // whole rows while the outputs fit in L1, read a quarter block apart; longer rows in column panels (the four rows
  // of a group are then far apart already)
  const bool whole_rows = n <= 2 * kLinearPanel;
  const int64_t panel = whole_rows ? n : linear_panel_cols<W>();
  for (int64_t p0 = 0; p0 < n; p0 += panel)
    linear_panel(x + k0, k, w + k0 * n, part, m, k1 - k0, n, p0, std::min(n, p0 + panel), whole_rows);
}

// out [m, n] = the sum of the nt partial outputs (part i at parts + i * part_stride), times scale [n] (an int8
// weight's column scales) when given, plus add [m, n] when given, over thread t's share of the columns
static inline void linear_reduce_parts(const float* parts, int64_t part_stride, int nt, int64_t m, int64_t n, int t,
                                       const float* add, float* out, const float* scale = nullptr) {
  int64_t c0, c1;
  linear_share(n, 16, t, nt, &c0, &c1);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      float s = parts[r * n + c];
      for (int i = 1; i < nt; ++i) s += parts[i * part_stride + r * n + c];
      if (scale != nullptr) s *= scale[c];
      out[r * n + c] = add != nullptr ? add[r * n + c] + s : s;
    }
  }
}

// threads for a product over `weights` elements: one below kLinearParallelMinWeights
static inline int linear_threads(int64_t weights) {
#ifdef _OPENMP
  if (weights >= kLinearParallelMinWeights) return omp_get_max_threads();
#endif
  return 1;
}

// y [m, n] = (x [m, k] @ w [k, n]) * scale [n] (scale: int8 weights only, else nullptr), all row-major and
// contiguous; meant for small m (the arithmetic per weight read from memory grows with m, the cache traffic of the
// partial outputs too)
template <typename W>
static inline void linear_small_m_cpu(const float* x, const W* w, const float* scale, float* y, int64_t m, int64_t k,
                                      int64_t n) {
  const int threads = linear_threads(k * n);
  if (threads == 1) {
    linear_rows_part(x, w, y, m, k, n, 0, 1);
    if (scale != nullptr)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < n; ++c) y[r * n + c] *= scale[c];
    return;
  }
  thread_local std::vector<float> workspace;  // the calling thread's: the team gets its data pointer
  if (static_cast<int64_t>(workspace.size()) < threads * m * n) workspace.resize(threads * m * n);
  float* parts = workspace.data();
#pragma omp parallel num_threads(threads)
  {
    int t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    linear_rows_part(x, w, parts + t * m * n, m, k, n, t, nt);
#pragma omp barrier
    linear_reduce_parts(parts, m * n, nt, m, n, t, nullptr, y, scale);
  }
}

}  // namespace pmx
