// One decode step (one new token per row) of a Llama-style decoder layer on CPU, float32, in one OpenMP team:
//   xn = rms_norm(x) * ln1;  q, k, v = xn @ wq, wk, wv;  rotate-half RoPE of q, k at each row's position;
//   k, v written into the cache slot `slot`;  grouped-query attention of q over the slots 0 .. slot with an
//   additive mask;  h = x + attn @ wo;  hn = rms_norm(h) * ln2;  y = h + (silu(hn @ wg) * (hn @ wu)) @ wd.
// A decode step is a chain of small products that each stream one weight matrix once; run as separate framework
// ops it costs a dispatch, an output allocation and a thread fork/join per op (about 30 per layer). Here one team
// runs the layer: each thread streams a contiguous block of rows of each weight into a partial output
// (kernels/linear_cpu.h), the partial outputs are added over column shares together with the element-wise work that
// follows (residual adds, silu * up), and the team meets at a barrier only where the next step needs every column of
// the one before. The workspace is the calling thread's and is reused across calls. The attention reads the slots
// 0 .. slot only (later slots belong to later tokens, so the mask need not hide them). The projections may be stored
// as float32, bf16 or int8 with per-output-column scales (see linear_cpu.h): widened in registers, accumulated in
// float32, the scales applied where the partial outputs are added. No Paddle types.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"
#include "linear_cpu.h"
#include "rms_norm_cpu.h"
#include "rotary_cpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pmx {

// how the 7 projections of a layer are stored (the norm scales are always float32)
enum class WeightKind { kFloat32, kBFloat16, kInt8 };

struct DecoderStepArgs {
  WeightKind kind;
  int64_t batch, hidden, heads, kv_heads, head_dim, inter, capacity, slot;
  // element strides of the additive mask [B, 1 or kv_heads, 1 or group, capacity] (0 for a broadcast axis)
  int64_t mask_batch_stride, mask_kv_stride, mask_group_stride;
  float eps;
  const float *ln1, *ln2;                                     // norm scales [hidden]
  const void *wq, *wk, *wv, *wo, *wg, *wu, *wd;               // projections in Paddle's [in, out] layout, of `kind`
  const float *sq, *sk, *sv, *so, *sg, *su, *sd;              // int8: each projection's column scales, else null
  const float* x;                                             // [B, hidden]
  const int64_t* pos;                                         // [B] position of each row's new token
  const float* inv_freq;                                      // [head_dim / 2]
  const float* mask;                                          // additive, see the strides above
  float *keys, *values;                                       // [B, kv_heads, capacity, head_dim], updated in place
  float* y;                                                   // [B, hidden]
};

#if defined(__AVX2__) && defined(__FMA__)
// the dot products of q [dim] with the 8 key rows k [8, dim] (dim a multiple of 8), as one vector
static inline __m256 step_dot8(const float* q, const float* k, int64_t dim) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < dim; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * dim + d), acc[j]);
  }
  // transpose-add: u0 = [sum of the 4 low lanes of acc 0..3 | of their 4 high lanes], u1 the same for acc 4..7
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

// scores [group, len]: scores[g][t] = q_g . k_t * scale + mask_g[t] (mask_g = mask + g * mask_group_stride) for the
// group query heads q [group, dim] and the key rows kc [len, dim]; mx [group]: each head's maximum score. Each block
// of 8 key rows is read once (into L1) for all the heads.
static inline void step_scores(const float* q, const float* kc, const float* mask, int64_t mask_group_stride,
                               int64_t group, int64_t len, int64_t dim, float scale, float* scores, float* mx) {
  for (int64_t g = 0; g < group; ++g) mx[g] = -INFINITY;
  int64_t t0 = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (dim % 8 == 0) {
    const __m256 vscale = _mm256_set1_ps(scale);
    for (; t0 + 8 <= len; t0 += 8) {
      for (int64_t g = 0; g < group; ++g) {
        const __m256 sv = _mm256_add_ps(_mm256_mul_ps(step_dot8(q + g * dim, kc + t0 * dim, dim), vscale),
                                        _mm256_loadu_ps(mask + g * mask_group_stride + t0));
        _mm256_storeu_ps(scores + g * len + t0, sv);
      }
    }
  }
#endif
  for (int64_t g = 0; g < group; ++g) {
    const float* qg = q + g * dim;
    float* sg = scores + g * len;
    for (int64_t t = t0; t < len; ++t) {
      const float* kt = kc + t * dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < dim; ++d) dot += qg[d] * kt[d];
      sg[t] = dot * scale + mask[g * mask_group_stride + t];
    }
    mx[g] = range_max(sg, len);
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// out[g][d0:d0+16] = sum over t < len of p[g][t] * v_t[d0:d0+16] for G heads (G a constant: the accumulators stay
// in registers)
template <int G>
static inline void step_weighted_sum16(const float* p, int64_t p_stride, const float* vc, int64_t len, int64_t dim,
                                       int64_t d0, float* out) {
  __m256 acc[G][2];
  for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
  for (int64_t t = 0; t < len; ++t) {
    const __m256 v0 = _mm256_loadu_ps(vc + t * dim + d0), v1 = _mm256_loadu_ps(vc + t * dim + d0 + 8);
    for (int g = 0; g < G; ++g) {
      const __m256 pv = _mm256_broadcast_ss(p + g * p_stride + t);
      acc[g][0] = _mm256_fmadd_ps(pv, v0, acc[g][0]);
      acc[g][1] = _mm256_fmadd_ps(pv, v1, acc[g][1]);
    }
  }
  for (int g = 0; g < G; ++g) {
    _mm256_storeu_ps(out + g * dim + d0, acc[g][0]);
    _mm256_storeu_ps(out + g * dim + d0 + 8, acc[g][1]);
  }
}
#endif

// out [group, dim] = p [group, len] @ v [len, dim]: the value rows are walked once per 16 columns for up to 4 heads
static inline void step_weighted_sum(const float* p, const float* vc, int64_t group, int64_t len, int64_t dim,
                                     float* out) {
  int64_t d_vec = 0;  // columns done with vectors
#if defined(__AVX2__) && defined(__FMA__)
  d_vec = dim / 16 * 16;
  for (int64_t g0 = 0; g0 < group; g0 += 4) {
    const float* pg = p + g0 * len;
    float* og = out + g0 * dim;
    for (int64_t d0 = 0; d0 < d_vec; d0 += 16) {
      switch (std::min<int64_t>(4, group - g0)) {
        case 4: step_weighted_sum16<4>(pg, len, vc, len, dim, d0, og); break;
        case 3: step_weighted_sum16<3>(pg, len, vc, len, dim, d0, og); break;
        case 2: step_weighted_sum16<2>(pg, len, vc, len, dim, d0, og); break;
        default: step_weighted_sum16<1>(pg, len, vc, len, dim, d0, og); break;
      }
    }
  }
#endif
  for (int64_t g = 0; g < group; ++g) {  // the columns left (all of them without AVX2)
    float* og = out + g * dim;
    std::fill(og + d_vec, og + dim, 0.0f);
    for (int64_t t = 0; t < len; ++t) {
      const float pt = p[g * len + t];
      const float* vt = vc + t * dim;
#pragma omp simd
      for (int64_t d = d_vec; d < dim; ++d) og[d] += pt * vt[d];
    }
  }
}

// attention of the `group` query heads q [group, D] sharing one KV head over the slots 0 .. len-1 of its cache
// rows kc, vc [capacity, D]; out [group, D]. scratch: group * (len + 1) floats. Float32 softmax; masked scores (the
// dtype's lowest value) get weight exactly 0.
static inline void step_attention(const float* q, const float* kc, const float* vc, const float* mask,
                                  int64_t mask_group_stride, int64_t group, int64_t len, int64_t dim, float* scratch,
                                  float* out) {
  float* scores = scratch;
  float* mx = scratch + group * len;
  step_scores(q, kc, mask, mask_group_stride, group, len, dim, 1.0f / std::sqrt(static_cast<float>(dim)), scores,
              mx);
  for (int64_t g = 0; g < group; ++g) exp_normalize(scores + g * len, len, mx[g]);
  step_weighted_sum(scores, vc, group, len, dim, out);
}

template <typename W>
static inline void decoder_step_typed(const DecoderStepArgs& a) {
  const W *wq = static_cast<const W*>(a.wq), *wk = static_cast<const W*>(a.wk), *wv = static_cast<const W*>(a.wv),
          *wo = static_cast<const W*>(a.wo), *wg = static_cast<const W*>(a.wg), *wu = static_cast<const W*>(a.wu),
          *wd = static_cast<const W*>(a.wd);
  const int64_t B = a.batch, H = a.hidden, D = a.head_dim, I = a.inter;
  const int64_t nq = a.heads * D, nkv = a.kv_heads * D, group = a.heads / a.kv_heads, len = a.slot + 1;
  const int threads = linear_threads(H * (nq + 2 * nkv) + nq * H + 3 * H * I);
  // workspace: xn | q | k | v | attn | h | hn | act, then each thread's partial products (the widest: gate | up)
  const int64_t part_stride = B * std::max(std::max(nq + 2 * nkv, H), 2 * I);
  thread_local std::vector<float> ws;  // the calling thread's: the team gets pointers into it
  const int64_t need = B * (3 * H + 2 * nq + 2 * nkv + I) + threads * part_stride;
  if (static_cast<int64_t>(ws.size()) < need) ws.resize(need);
  float* xn = ws.data();
  float* q = xn + B * H;
  float* k = q + B * nq;
  float* v = k + B * nkv;
  float* attn = v + B * nkv;
  float* h = attn + B * nq;
  float* hn = h + B * H;
  float* act = hn + B * H;
  float* parts = act + B * I;

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    float* part = parts + t * part_stride;
#pragma omp single
    rms_norm_cpu(a.x, a.ln1, xn, B, H, a.eps);

    linear_rows_part(xn, wq, part, B, H, nq, t, nt);
    linear_rows_part(xn, wk, part + B * nq, B, H, nkv, t, nt);
    linear_rows_part(xn, wv, part + B * (nq + nkv), B, H, nkv, t, nt);
#pragma omp barrier
    linear_reduce_parts(parts, part_stride, nt, B, nq, t, nullptr, q, a.sq);
    linear_reduce_parts(parts + B * nq, part_stride, nt, B, nkv, t, nullptr, k, a.sk);
    linear_reduce_parts(parts + B * (nq + nkv), part_stride, nt, B, nkv, t, nullptr, v, a.sv);
#pragma omp barrier

#pragma omp single
    {
      std::vector<float> cs(D / 2), sn(D / 2);
      for (int64_t b = 0; b < B; ++b) {
        const float p = static_cast<float>(a.pos[b]);
        for (int64_t j = 0; j < D / 2; ++j) {
          const float f = p * a.inv_freq[j];
          cs[j] = std::cos(f);
          sn[j] = std::sin(f);
        }
        rotary_heads_cpu(q + b * nq, q + b * nq, a.heads, D, cs.data(), sn.data());
        for (int64_t j = 0; j < a.kv_heads; ++j) {
          const int64_t row = ((b * a.kv_heads + j) * a.capacity + a.slot) * D;
          rotary_heads_cpu(k + b * nkv + j * D, a.keys + row, 1, D, cs.data(), sn.data());
          std::copy(v + b * nkv + j * D, v + b * nkv + (j + 1) * D, a.values + row);
        }
      }
    }

    {
      std::vector<float> scratch(group * (len + 1));
#pragma omp for schedule(static)
      for (int64_t task = 0; task < B * a.kv_heads; ++task) {
        const int64_t b = task / a.kv_heads, j = task % a.kv_heads;
        const int64_t cache_row = (b * a.kv_heads + j) * a.capacity * D;
        const float* mask = a.mask + b * a.mask_batch_stride + j * a.mask_kv_stride;
        step_attention(q + b * nq + j * group * D, a.keys + cache_row, a.values + cache_row, mask,
                       a.mask_group_stride, group, len, D, scratch.data(), attn + b * nq + j * group * D);
      }
    }

    linear_rows_part(attn, wo, part, B, nq, H, t, nt);
#pragma omp barrier
    linear_reduce_parts(parts, part_stride, nt, B, H, t, a.x, h, a.so);
#pragma omp barrier

#pragma omp single
    rms_norm_cpu(h, a.ln2, hn, B, H, a.eps);

    linear_rows_part(hn, wg, part, B, H, I, t, nt);
    linear_rows_part(hn, wu, part + B * I, B, H, I, t, nt);
#pragma omp barrier
    {  // act = silu(gate) * up over this thread's columns, summing the threads' parts of both
      int64_t c0, c1;
      linear_share(I, 16, t, nt, &c0, &c1);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = c0; c < c1; ++c) {
          float g = parts[b * I + c], u = parts[(B + b) * I + c];
          for (int i = 1; i < nt; ++i) {
            g += parts[i * part_stride + b * I + c];
            u += parts[i * part_stride + (B + b) * I + c];
          }
          if (a.sg != nullptr) {
            g *= a.sg[c];
            u *= a.su[c];
          }
          act[b * I + c] = g / (1.0f + fast_expf(-g)) * u;
        }
      }
    }
#pragma omp barrier

    linear_rows_part(act, wd, part, B, I, H, t, nt);
#pragma omp barrier
    linear_reduce_parts(parts, part_stride, nt, B, H, t, h, a.y, a.sd);
  }
}

static inline void decoder_step_cpu(const DecoderStepArgs& a) {
  switch (a.kind) {
    case WeightKind::kBFloat16: decoder_step_typed<uint16_t>(a); break;
    case WeightKind::kInt8: decoder_step_typed<int8_t>(a); break;
    default: decoder_step_typed<float>(a); break;
  }
}

}  // namespace pmx
