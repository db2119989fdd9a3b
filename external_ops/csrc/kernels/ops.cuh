// CUDA device code of the paddlemix fused ops: plain CUDA, extern "C" kernels, no Paddle types or includes.
// The Paddle extension launches these from launch.cu; benchmarks/cuda/check_kernels.py loads this very file with
// cupy.RawModule and checks every kernel against numpy. Semantics: paddlemix/ops/fallback.py.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef long long pmx_i64;
#define PMX_INF __int_as_float(0x7f800000)

namespace pmx_cuda {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
// round through T: the value a tensor of dtype T would hold
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f(from_f<T>(v)); }

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result
template <typename T> __device__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  T t = lane < nw ? sh[lane] : T(0);
  return warp_sum(t);
}

// ---------------------------------------------------------------- rms_norm
// One block per row. float32 statistics; y = weight * T(x * rsqrt(mean(x^2) + eps)).
// VEC elements loaded or stored as one access (16 bytes for the vector path)
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ void rms_norm_row(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int hidden,
                             float eps) {
  __shared__ float sh[33];
  typedef Pack<T, VEC> P;
  const P* xp = reinterpret_cast<const P*>(x);
  const P* wp = reinterpret_cast<const P*>(w);
  P* yp = reinterpret_cast<P*>(y);
  const int packs = hidden / VEC;
  float s = 0.f;
  for (int i = threadIdx.x; i < packs; i += blockDim.x) {
    const P xv = xp[i];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float f = to_f(xv.v[v]);
      s += f * f;
    }
  }
  s = block_sum(s, sh);
  const float inv = rsqrtf(s / (float)hidden + eps);
  for (int i = threadIdx.x; i < packs; i += blockDim.x) {
    const P xv = xp[i], wv = wp[i];
    P yv;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const float n = rnd<T>(__fmul_rn(to_f(xv.v[v]), inv));
      yv.v[v] = from_f<T>(__fmul_rn(to_f(wv.v[v]), n));
    }
    yp[i] = yv;
  }
}

template <typename T>
__device__ void rms_norm_impl(const T* x, const T* w, T* y, pmx_i64 rows, int hidden, float eps) {
  const pmx_i64 r = blockIdx.x;
  if (r >= rows) return;
  x += r * hidden;
  y += r * hidden;
  constexpr int VEC = 16 / sizeof(T);
  // 16-byte accesses when the row allows it
  if (hidden % VEC == 0 && ((size_t)x % 16) == 0 && ((size_t)y % 16) == 0 && ((size_t)w % 16) == 0)
    rms_norm_row<T, VEC>(x, w, y, hidden, eps);
  else
    rms_norm_row<T, 1>(x, w, y, hidden, eps);
}

// ---------------------------------------------------------------- rotary_embedding
// One block per token (b, l): cos/sin of pos * inv_freq[j] in float32 into shared memory, rounded to T as the
// fallback's tables are, then rotate-half on every q and k head.
template <typename T>
__device__ void rotary_impl(const T* q, const T* k, const pmx_i64* pos, const float* inv_freq, T* qo, T* ko,
                            int q_heads, int k_heads, int dim) {
  extern __shared__ float cs_sh[];
  const int half = dim / 2;
  float* cs = cs_sh;
  float* sn = cs_sh + half;
  const pmx_i64 t = blockIdx.x;
  const float p = (float)pos[t];
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(p, inv_freq[j]), &s, &c);
    cs[j] = rnd<T>(c);
    sn[j] = rnd<T>(s);
  }
  __syncthreads();
  const int total = (q_heads + k_heads) * half;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int h = e / half, j = e - h * half;
    const T* src = h < q_heads ? q + (t * q_heads + h) * dim : k + (t * k_heads + (h - q_heads)) * dim;
    T* dst = h < q_heads ? qo + (t * q_heads + h) * dim : ko + (t * k_heads + (h - q_heads)) * dim;
    const float a = to_f(src[j]), b = to_f(src[j + half]);
    // x * cos + rotate_half(x) * sin, each product and the sum rounded to T like the fallback's tensor ops
    dst[j] = from_f<T>(rnd<T>(__fmul_rn(a, cs[j])) + rnd<T>(__fmul_rn(-b, sn[j])));
    dst[j + half] = from_f<T>(rnd<T>(__fmul_rn(b, cs[j])) + rnd<T>(__fmul_rn(a, sn[j])));
  }
}

// ---------------------------------------------------------------- vq_nearest
// d(n, k) = (|z|^2 + |e_k|^2) - 2 z.e_k in float32. Grid (row blocks, K segments): each thread keeps R rows in
// registers and scans its segment of the codebook through shared memory; the segments' (d, index) minima are
// merged by vq_merge, ties to the lowest index.
constexpr int VQ_THREADS = 128;
constexpr int VQ_TILE = 256;

template <int C, int R>
__device__ void vq_partial_impl(const float* __restrict__ z, const float* __restrict__ e, const float* __restrict__ ee,
                                float* __restrict__ best_d, int* __restrict__ best_i, pmx_i64* __restrict__ out, int n,
                                int k, int seg_len) {
  __shared__ float et[VQ_TILE * C];
  __shared__ float eet[VQ_TILE];
  const int row0 = (blockIdx.x * VQ_THREADS + threadIdx.x) * R;
  float zr[R][C], zz[R], bd[R];
  int bi[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    zz[r] = 0.f;
    bd[r] = PMX_INF;
    bi[r] = 0x7fffffff;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      zr[r][c] = row0 + r < n ? z[(pmx_i64)(row0 + r) * C + c] : 0.f;
      zz[r] = c == 0 ? __fmul_rn(zr[r][0], zr[r][0]) : __fadd_rn(zz[r], __fmul_rn(zr[r][c], zr[r][c]));
    }
  }
  const int k0 = blockIdx.y * seg_len;
  const int k1 = min(k, k0 + seg_len);
  for (int t0 = k0; t0 < k1; t0 += VQ_TILE) {
    const int len = min(VQ_TILE, k1 - t0);
    __syncthreads();
    for (int i = threadIdx.x; i < len * C; i += VQ_THREADS) et[i] = e[(pmx_i64)t0 * C + i];
    for (int i = threadIdx.x; i < len; i += VQ_THREADS) eet[i] = ee[t0 + i];
    __syncthreads();
    for (int j = 0; j < len; ++j) {
      float ev[C];
#pragma unroll
      for (int c = 0; c < C; ++c) ev[c] = et[j * C + c];
      const float ej = eet[j];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float dot = __fmul_rn(zr[r][0], ev[0]);
#pragma unroll
        for (int c = 1; c < C; ++c) dot = __fmaf_rn(zr[r][c], ev[c], dot);
        const float d = __fsub_rn(__fadd_rn(zz[r], ej), __fmul_rn(2.f, dot));
        if (d < bd[r]) {
          bd[r] = d;
          bi[r] = t0 + j;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (row0 + r < n) {
      if (gridDim.y == 1) {  // one segment: the answer itself
        out[row0 + r] = bi[r] == 0x7fffffff ? 0 : bi[r];
      } else {
        best_d[(pmx_i64)blockIdx.y * n + row0 + r] = bd[r];
        best_i[(pmx_i64)blockIdx.y * n + row0 + r] = bi[r];
      }
    }
}

// Any C: one row per thread, z read from global memory (generic path, not tuned).
__device__ void vq_partial_generic(const float* z, const float* e, const float* ee, float* best_d, int* best_i,
                                   pmx_i64* out, int n, int k, int c_dim, int seg_len) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= n) return;
  const float* zr = z + (pmx_i64)row * c_dim;
  float zz = 0.f;
  for (int c = 0; c < c_dim; ++c) zz = __fadd_rn(zz, __fmul_rn(zr[c], zr[c]));
  float bd = PMX_INF;
  int bi = 0x7fffffff;
  const int k0 = blockIdx.y * seg_len, k1 = min(k, k0 + seg_len);
  for (int j = k0; j < k1; ++j) {
    const float* ej = e + (pmx_i64)j * c_dim;
    float dot = __fmul_rn(zr[0], ej[0]);
    for (int c = 1; c < c_dim; ++c) dot = __fmaf_rn(zr[c], ej[c], dot);
    const float d = __fsub_rn(__fadd_rn(zz, ee[j]), __fmul_rn(2.f, dot));
    if (d < bd) {
      bd = d;
      bi = j;
    }
  }
  if (gridDim.y == 1) {
    out[row] = bi == 0x7fffffff ? 0 : bi;
  } else {
    best_d[(pmx_i64)blockIdx.y * n + row] = bd;
    best_i[(pmx_i64)blockIdx.y * n + row] = bi;
  }
}

// ---------------------------------------------------------------- cfg_sample
// Pass 1 (cfg_stats): grid (chunks, B); max / sum-exp of cond and uncond per chunk of about 2048 logits.
// Pass 2 (cfg_select): one 1024-thread block per row; merges the chunk statistics into the two log-softmax
// normalisers, then works on the allowed range [lo, hi) only: greedy argmax, or (scores cached in shared memory
// when the range fits) top-k by one histogram pass plus a select among the few scores of the k-th's bin, top-p by
// a radix walk on the probability mass from below, and the inverse-CDF draw in index order (over the kept tokens
// only, gathered in index order, when top-k is the only filter).
constexpr int CFG_THREADS = 1024;
constexpr int CFG_UNROLL = 8;   // range elements loaded per thread before any math in the first pass
constexpr int CFG_BINS = 2048;  // bins of the top-k histogram

struct CfgArgs {
  pmx_i64 vocab;
  int chunks;
  int guide;        // uncond given and scale != 1
  float scale;
  int greedy;
  int top_k;        // <= 0: off
  int use_top_p;
  float top_p_thr;  // float(1 - top_p)
  int use_temp;
  float temperature;
  int cache_cap;    // scores of the range held in dynamic shared memory (floats); larger ranges re-read the logits
};

__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -PMX_INF) return;
  if (m == -PMX_INF) {
    m = m2;
    s = s2;
    return;
  }
  const float mx = fmaxf(m, m2);
  s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
  m = mx;
}
__device__ void block_online_merge(float& m, float& s, float* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    online_merge(m, s, m2, s2);
  }
  __syncthreads();
  if (lane == 0) {
    sh[2 * wid] = m;
    sh[2 * wid + 1] = s;
  }
  __syncthreads();
  m = lane < nw ? sh[2 * lane] : -PMX_INF;
  s = lane < nw ? sh[2 * lane + 1] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    online_merge(m, s, m2, s2);
  }
}

constexpr int CFG_STATS_UNROLL = 8;  // elements of each branch loaded per thread before any math (memory parallelism)

// max and sum of exp(x - max) of up to CFG_STATS_UNROLL values held in registers, merged into (m, s)
__device__ __forceinline__ void online_add_regs(float& m, float& s, const float* x, int cnt) {
  float mx = -PMX_INF;
#pragma unroll
  for (int j = 0; j < CFG_STATS_UNROLL; ++j)
    if (j < cnt) mx = fmaxf(mx, x[j]);
  if (mx == -PMX_INF) return;
  float t = 0.f;
#pragma unroll
  for (int j = 0; j < CFG_STATS_UNROLL; ++j)
    if (j < cnt) t += __expf(x[j] - mx);
  online_merge(m, s, mx, t);
}

template <typename T>
__device__ void cfg_stats_impl(const T* cond, const T* uncond, CfgArgs a, float* partial) {
  __shared__ float sh[64];
  const int b = blockIdx.y;
  const pmx_i64 per = (a.vocab + a.chunks - 1) / a.chunks;
  const pmx_i64 i0 = (pmx_i64)blockIdx.x * per, i1 = min(a.vocab, i0 + per);
  float mc = -PMX_INF, sc = 0.f, mu = -PMX_INF, su = 0.f;
  const T* c = cond + b * a.vocab;
  const T* u = uncond + b * a.vocab;
  const int step = blockDim.x * CFG_STATS_UNROLL;
  for (pmx_i64 base = i0 + threadIdx.x; base < i1; base += step) {
    const int cnt = (int)min((pmx_i64)CFG_STATS_UNROLL, (i1 - base + blockDim.x - 1) / blockDim.x);
    float x[CFG_STATS_UNROLL], y[CFG_STATS_UNROLL];
#pragma unroll
    for (int j = 0; j < CFG_STATS_UNROLL; ++j) {
      x[j] = j < cnt ? to_f(c[base + j * blockDim.x]) : -PMX_INF;
      y[j] = a.guide && j < cnt ? to_f(u[base + j * blockDim.x]) : -PMX_INF;
    }
    online_add_regs(mc, sc, x, cnt);
    if (a.guide) online_add_regs(mu, su, y, cnt);
  }
  block_online_merge(mc, sc, sh);
  block_online_merge(mu, su, sh);
  if (threadIdx.x == 0) {
    float* p = partial + ((pmx_i64)b * a.chunks + blockIdx.x) * 4;
    p[0] = mc;
    p[1] = sc;
    p[2] = mu;
    p[3] = su;
  }
}

__device__ __forceinline__ unsigned int fkey(float f) {
  const unsigned int u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct CfgRow {
  float mc, lc, mu, lu;
};

__device__ __forceinline__ float cfg_score_of(float cv, float uv, const CfgRow& r, const CfgArgs& a, bool sampling) {
  float s = __fsub_rn(__fsub_rn(cv, r.mc), r.lc);
  if (a.guide) {
    const float su = __fsub_rn(__fsub_rn(uv, r.mu), r.lu);
    s = __fadd_rn(__fmul_rn(a.scale, __fsub_rn(s, su)), su);
  }
  if (sampling && a.use_temp) s = __fdiv_rn(s, a.temperature);
  return s;
}

template <typename T>
__device__ __forceinline__ float cfg_score(const T* c, const T* u, pmx_i64 i, const CfgRow& r, const CfgArgs& a,
                                           bool sampling) {
  return cfg_score_of(to_f(c[i]), a.guide ? to_f(u[i]) : 0.f, r, a, sampling);
}

// Warp 0 finds the digit whose bin holds the k-th largest (descending) of hist; writes digit and the count above.
__device__ void radix_pick_desc(const unsigned int* hist, unsigned int k, int* digit_out, unsigned int* above_out) {
  const int lane = threadIdx.x;
  unsigned int loc[8], tot = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    loc[i] = hist[lane * 8 + i];
    tot += loc[i];
  }
  unsigned int suf = tot;  // inclusive suffix sum over lanes >= lane
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned int y = __shfl_down_sync(0xffffffffu, suf, o);
    if (lane + o < 32) suf += y;
  }
  unsigned int above = suf - tot;  // count in lanes > lane
  if (above < k && k <= suf) {
    for (int i = 7; i >= 0; --i) {
      if (above + loc[i] >= k) {
        *digit_out = lane * 8 + i;
        *above_out = above;
        break;
      }
      above += loc[i];
    }
  }
}

// k-th largest key (1-based k) of key_of(0 .. n-1) by a 4 x 8-bit radix select over the whole block.
template <typename KeyOf>
__device__ unsigned int radix_kth_key(KeyOf key_of, int n, unsigned int k, unsigned int* hist, int* sh_digit,
                                      unsigned int* sh_above) {
  const int tid = threadIdx.x;
  unsigned int prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    // every lane of a warp runs the same iterations, so lanes hitting the same bin add once (__match_any_sync):
    // the high digits of similar scores all fall in one or two bins
    for (int base = 0; base < n; base += blockDim.x) {
      const int i = base + tid;
      unsigned int bin = 256u;
      if (i < n) {
        const unsigned int key = key_of(i);
        if ((key & mask) == prefix) bin = (key >> shift) & 255u;
      }
      const unsigned int peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256u && (tid & 31) == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned int)__popc(peers));
    }
    __syncthreads();
    if (tid < 32) radix_pick_desc(hist, k, sh_digit, sh_above);
    __syncthreads();
    prefix |= (unsigned int)*sh_digit << shift;
    mask |= 255u << shift;
    k -= *sh_above;
    __syncthreads();
  }
  return prefix;
}

// Warp 0 finds the first digit (ascending) where below + cumulative weight exceeds thr.
__device__ void radix_pick_mass_asc(const float* hw, float below, float thr, int* digit_out, float* below_out) {
  const int lane = threadIdx.x;
  float loc[8], tot = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    loc[i] = hw[lane * 8 + i];
    tot += loc[i];
  }
  float pre = tot;  // inclusive prefix over lanes <= lane
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, pre, o);
    if (lane >= o) pre += y;
  }
  float acc = below + pre - tot;
  const bool last = (lane == 31);
  if ((acc <= thr && below + pre > thr) || (last && below + pre <= thr)) {
    int d = lane * 8 + 7;
    for (int i = 0; i < 8; ++i) {
      if (acc + loc[i] > thr) {
        d = lane * 8 + i;
        break;
      }
      acc += loc[i];
    }
    if (last && below + pre <= thr) {  // rounding: take the highest non-empty bin
      acc = below + pre;
      for (int i = 7; i >= 0; --i) {
        acc -= loc[i];
        if (loc[i] > 0.f || i == 0) {
          d = lane * 8 + i;
          break;
        }
      }
    }
    *digit_out = d;
    *below_out = acc;
  }
}

template <typename T>
__device__ void cfg_select_impl(const T* cond, const T* uncond, const pmx_i64* allowed, const float* random,
                                pmx_i64* out, const float* partial, CfgArgs a) {
  __shared__ float shf[66];
  __shared__ unsigned int hist[CFG_BINS];
  __shared__ float histw[256];
  __shared__ int sh_digit;
  __shared__ unsigned int sh_above;
  __shared__ float sh_below;
  __shared__ pmx_i64 sh_pick;
  const int b = blockIdx.x, tid = threadIdx.x;
  const T* c = cond + b * a.vocab;
  const T* u = a.guide ? uncond + b * a.vocab : nullptr;

  // log-softmax normalisers from the chunk statistics
  CfgRow row;
  {
    float m1 = -PMX_INF, s1 = 0.f, m2 = -PMX_INF, s2 = 0.f;
    for (int i = tid; i < a.chunks; i += blockDim.x) {
      const float* p = partial + ((pmx_i64)b * a.chunks + i) * 4;
      online_merge(m1, s1, p[0], p[1]);
      online_merge(m2, s2, p[2], p[3]);
    }
    block_online_merge(m1, s1, shf);
    block_online_merge(m2, s2, shf);
    row.mc = m1;
    row.lc = logf(s1);
    row.mu = m2;
    row.lu = a.guide ? logf(s2) : 0.f;
  }
  pmx_i64 lo = 0, hi = a.vocab;
  if (allowed) {
    lo = max(allowed[2 * b], (pmx_i64)0);
    hi = min(allowed[2 * b + 1], a.vocab);
  }
  if (hi <= lo) {
    if (tid == 0) out[b] = lo < a.vocab ? lo : 0;
    return;
  }
  const pmx_i64 n = hi - lo;
  c += lo;
  if (u) u += lo;
  const bool sampling = !a.greedy;
  // sampling makes several passes over the range: its scores are kept in shared memory when they fit
  extern __shared__ float cache[];
  const bool use_cache = sampling && n <= a.cache_cap;
  auto score = [&](int i) -> float { return use_cache ? cache[i] : cfg_score(c, u, i, row, a, true); };

  // max (first index on ties): the greedy answer, and the softmax shift when sampling; min: the top-k histogram's
  // span. CFG_UNROLL elements per thread are loaded before any math, so that the loads of the pass are in flight
  // together (one block per row is latency bound otherwise).
  const int ni = (int)n;
  float bm = -PMX_INF, bmin = PMX_INF;
  int bidx = ni;
  for (int base = tid; base < ni; base += CFG_UNROLL * blockDim.x) {
    float cv[CFG_UNROLL], uv[CFG_UNROLL];
#pragma unroll
    for (int j = 0; j < CFG_UNROLL; ++j) {
      const int i = base + j * blockDim.x;
      cv[j] = i < ni ? to_f(c[i]) : 0.f;
      uv[j] = i < ni && u ? to_f(u[i]) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < CFG_UNROLL; ++j) {
      const int i = base + j * blockDim.x;
      if (i < ni) {
        const float s = cfg_score_of(cv[j], uv[j], row, a, sampling);
        if (use_cache) cache[i] = s;
        if (s > bm) {
          bm = s;
          bidx = i;
        }
        bmin = fminf(bmin, s);
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, bm, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, bidx, o);
    if (m2 > bm || (m2 == bm && i2 < bidx)) {
      bm = m2;
      bidx = i2;
    }
    bmin = fminf(bmin, __shfl_xor_sync(0xffffffffu, bmin, o));
  }
  __shared__ float shm[32], shmin[32];
  __shared__ int shi[32];
  if ((tid & 31) == 0) {
    shm[tid >> 5] = bm;
    shi[tid >> 5] = bidx;
    shmin[tid >> 5] = bmin;
  }
  __syncthreads();
  if (tid < 32) {
    bm = tid < (int)(blockDim.x >> 5) ? shm[tid] : -PMX_INF;
    bidx = tid < (int)(blockDim.x >> 5) ? shi[tid] : ni;
    bmin = tid < (int)(blockDim.x >> 5) ? shmin[tid] : PMX_INF;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, bm, o);
      const int i2 = __shfl_xor_sync(0xffffffffu, bidx, o);
      if (m2 > bm || (m2 == bm && i2 < bidx)) {
        bm = m2;
        bidx = i2;
      }
      bmin = fminf(bmin, __shfl_xor_sync(0xffffffffu, bmin, o));
    }
    if (tid == 0) {
      shm[0] = bm;
      shi[0] = bidx < ni ? bidx : 0;
      shmin[0] = bmin;
    }
  }
  __syncthreads();
  const float smax = shm[0], smin = shmin[0];
  if (!sampling) {
    if (tid == 0) out[b] = lo + shi[0];
    return;
  }

  // top-k: key of the k-th largest score. A histogram of CFG_BINS equal bins of smax - s over [0, smax - smin]
  // (the bin is monotone in s) gives the bin of the k-th largest; its scores, gathered in the shared memory left
  // after the cache, give the key by counting (up to 256 of them) or a radix select on them. When that bin holds
  // more scores than fit, the radix select runs on the whole range instead.
  unsigned int kth = 0;
  const int lane = tid & 31, wid = tid >> 5, nw = blockDim.x >> 5;
  const unsigned int lanes_below = (1u << lane) - 1u;
  // dynamic shared memory left after the score cache: top-k candidates, then the kept tokens' indices
  unsigned int* spare = reinterpret_cast<unsigned int*>(cache) + (use_cache ? ni : 0);
  const int spare_cap = a.cache_cap - (use_cache ? ni : 0);
  if (a.top_k > 0 && a.top_k < n) {
    const unsigned int k = (unsigned int)a.top_k;
    unsigned int* keys = spare;
    const int key_cap = spare_cap;
    const float span = __fsub_rn(smax, smin);
    const float inv = span > 0.f ? __fdiv_rn((float)CFG_BINS, span) : 0.f;
    auto bin_of = [&](float s) -> int {
      const float f = __fmul_rn(__fsub_rn(smax, s), inv);
      return f < (float)CFG_BINS ? (int)f : CFG_BINS - 1;  // NaN (all scores -inf) to the last bin
    };
    for (int i = tid; i < CFG_BINS; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < ni; i += blockDim.x) atomicAdd(&hist[bin_of(score(i))], 1u);
    __syncthreads();
    // each thread sums a run of consecutive bins; an exclusive scan over the threads gives the count above it
    const int per = (CFG_BINS + blockDim.x - 1) / blockDim.x;
    const int b0 = min(CFG_BINS, tid * per), b1 = min(CFG_BINS, b0 + per);
    unsigned int cnt = 0;
    for (int i = b0; i < b1; ++i) cnt += hist[i];
    unsigned int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned int y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    __shared__ unsigned int warp_tot[32];
    __shared__ unsigned int sh_count;
    if (lane == 31) warp_tot[wid] = incl;
    __syncthreads();
    unsigned int above = incl - cnt;
    for (int w = 0; w < wid; ++w) above += warp_tot[w];
    if (above < k && k <= above + cnt) {
      for (int i = b0; i < b1; ++i) {
        if (above + hist[i] >= k) {
          sh_digit = i;
          sh_above = above;
          break;
        }
        above += hist[i];
      }
    }
    if (tid == 0) sh_count = 0;
    __syncthreads();
    const int kbin = sh_digit;
    const unsigned int kabove = sh_above;
    const int m = (int)hist[kbin];
    __syncthreads();
    if (m <= key_cap) {
      for (int base = 0; base < ni; base += blockDim.x) {
        const int i = base + tid;
        float s = 0.f;
        bool take = false;
        if (i < ni) {
          s = score(i);
          take = bin_of(s) == kbin;
        }
        const unsigned int sel = __ballot_sync(0xffffffffu, take);
        if (sel) {
          const int leader = __ffs(sel) - 1;
          unsigned int pos = 0;
          if (lane == leader) pos = atomicAdd(&sh_count, (unsigned int)__popc(sel));
          pos = __shfl_sync(0xffffffffu, pos, leader);
          if (take) keys[pos + __popc(sel & lanes_below)] = fkey(s);
        }
      }
      __syncthreads();
      const unsigned int kk = k - kabove;
      if (m <= 256) {
        // few candidates (the usual case): the kk-th largest is the key with fewer than kk greater and at least
        // kk greater or equal; every thread that finds it holds the same key
        __shared__ unsigned int sh_kth;
        if (tid < m) {
          const unsigned int mine = keys[tid];
          unsigned int gt = 0, ge = 0;
          for (int j = 0; j < m; ++j) {
            const unsigned int o = keys[j];
            gt += o > mine;
            ge += o >= mine;
          }
          if (gt < kk && kk <= ge) sh_kth = mine;
        }
        __syncthreads();
        kth = sh_kth;
      } else {
        kth = radix_kth_key([&](int i) { return keys[i]; }, m, kk, hist, &sh_digit, &sh_above);
      }
    } else {
      kth = radix_kth_key([&](int i) { return fkey(score(i)); }, ni, k, hist, &sh_digit, &sh_above);
    }
  }

  // top-p: the tokens removed are the lowest (in ascending (score, index) order) whose cumulative probability
  // is <= 1 - top_p; find the key T where that cumulative mass crosses the threshold and how many of the tokens
  // tied at T (in index order) are removed.
  unsigned int pkey = 0;
  pmx_i64 ptie_removed = 0;
  if (a.use_top_p) {
    float z = 0.f;
    for (int i = tid; i < ni; i += blockDim.x) {
      const float s = score(i);
      if (fkey(s) >= kth) z += expf(s - smax);
    }
    z = block_sum(z, shf);
    const float thr = a.top_p_thr * z;
    unsigned int prefix = 0, mask = 0;
    float below = 0.f;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += blockDim.x) histw[i] = 0.f;
      __syncthreads();
      for (int i = tid; i < ni; i += blockDim.x) {
        const float s = score(i);
        const unsigned int key = fkey(s);
        if (key >= kth && (key & mask) == prefix) atomicAdd(&histw[(key >> shift) & 255u], expf(s - smax));
      }
      __syncthreads();
      if (tid < 32) radix_pick_mass_asc(histw, below, thr, &sh_digit, &sh_below);
      __syncthreads();
      prefix |= (unsigned int)sh_digit << shift;
      mask |= 255u << shift;
      below = sh_below;
      __syncthreads();
    }
    pkey = prefix;
    // tied tokens at T: same weight w each; the first r of them (index order) go while below + j w <= thr
    unsigned int cnt = 0;
    for (int i = tid; i < ni; i += blockDim.x) cnt += fkey(score(i)) == pkey;
    cnt = block_sum(cnt, (unsigned int*)hist);
    // the weight every tied token shares
    float wone = 0.f;
    for (int i = tid; i < ni && wone == 0.f; i += blockDim.x) {
      const float s = score(i);
      if (fkey(s) == pkey) wone = expf(s - smax);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) wone = fmaxf(wone, __shfl_xor_sync(0xffffffffu, wone, o));
    if ((tid & 31) == 0) shf[tid >> 5] = wone;
    __syncthreads();
    if (tid == 0) {
      float w1 = 0.f;
      for (int i = 0; i < (int)(blockDim.x >> 5); ++i) w1 = fmaxf(w1, shf[i]);
      pmx_i64 r = 0;
      while (r + 1 < (pmx_i64)cnt && below + (float)(r + 1) * w1 <= thr) ++r;
      sh_pick = r;
    }
    __syncthreads();
    ptie_removed = sh_pick;
    __syncthreads();
  }

  // top-k alone keeps few tokens: their indices, in index order, are gathered in the spare shared memory (the
  // candidate keys are no longer needed) and the draw runs over them only. Each warp counts the kept tokens of its
  // contiguous segment, then writes their indices from its offset on.
  __shared__ unsigned int seg_t[32];
  bool compact = false;
  int nd = ni;  // tokens the draw runs over: j in [0, nd) stands for token idx(j)
  if (a.top_k > 0 && a.top_k < n && !a.use_top_p) {
    const int kseg = ((ni + nw - 1) / nw + 31) / 32 * 32;
    const int k0 = min(ni, wid * kseg), k1 = min(ni, k0 + kseg);
    unsigned int cnt = 0;
    for (int base = k0; base < k1; base += 32) {
      const int i = base + lane;
      cnt += __popc(__ballot_sync(0xffffffffu, i < k1 && fkey(score(i)) >= kth));
    }
    if (lane == 0) seg_t[wid] = cnt;
    __syncthreads();
    unsigned int off = 0, tot = 0;
    for (int w = 0; w < nw; ++w) {
      if (w < wid) off += seg_t[w];
      tot += seg_t[w];
    }
    if ((int)tot <= spare_cap) {
      for (int base = k0; base < k1; base += 32) {
        const int i = base + lane;
        const bool keep = i < k1 && fkey(score(i)) >= kth;
        const unsigned int mask = __ballot_sync(0xffffffffu, keep);
        if (keep) spare[off + __popc(mask & lanes_below)] = (unsigned int)i;
        off += __popc(mask);
      }
      compact = true;
      nd = (int)tot;
    }
    __syncthreads();
  }
  auto idx = [&](int j) -> int { return compact ? (int)spare[j] : j; };

  // inverse CDF in index order: each warp owns a contiguous segment and walks it 32 tokens at a time (coalesced);
  // the warps' totals, summed in warp order, give each segment its offset.
  __shared__ float seg_w[32];
  __shared__ int seg_last[32];
  const int seg = ((nd + nw - 1) / nw + 31) / 32 * 32;
  const int s0 = min(nd, wid * seg), s1 = min(nd, s0 + seg);
  // weight of token i if it survives top-k and top-p; tr: rank of i among the tokens tied at the top-p key
  auto weight = [&](float s, unsigned int key, unsigned int tr) -> float {
    bool keep = key >= kth;
    if (a.use_top_p) keep = keep && (key > pkey || (key == pkey && tr >= (unsigned int)ptie_removed));
    return keep ? expf(s - smax) : 0.f;
  };
  // this lane's weight in the 32 tokens from base; tr: tie rank at base, advanced past them
  auto chunk_weight = [&](int base, unsigned int& tr) -> float {
    const int i = base + lane;
    float s = 0.f;
    unsigned int key = 0;
    if (i < s1) {
      s = score(idx(i));
      key = fkey(s);
    }
    const unsigned int tie_mask = a.use_top_p ? __ballot_sync(0xffffffffu, i < s1 && key == pkey) : 0u;
    const float w = i < s1 ? weight(s, key, tr + __popc(tie_mask & lanes_below)) : 0.f;
    tr += __popc(tie_mask);
    return w;
  };
  unsigned int ties = 0;
  float wsum = 0.f;
  int last = -1;
  if (a.use_top_p) {  // tokens tied at the top-p key per segment, so that each knows its rank among them
    for (int base = s0; base < s1; base += 32) {
      const int i = base + lane;
      ties += __popc(__ballot_sync(0xffffffffu, i < s1 && fkey(score(idx(i))) == pkey));
    }
  }
  if (lane == 0) seg_t[wid] = ties;
  __syncthreads();
  unsigned int tie_base = 0;
  for (int w = 0; w < wid; ++w) tie_base += seg_t[w];
  {
    unsigned int tr = tie_base;
    for (int base = s0; base < s1; base += 32) {
      const float w = chunk_weight(base, tr);
      wsum += w;
      if (w > 0.f) last = base + lane;
    }
  }
  wsum = warp_sum(wsum);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int y = __shfl_xor_sync(0xffffffffu, last, o);
    last = y > last ? y : last;
  }
  if (lane == 0) {
    seg_w[wid] = wsum;
    seg_last[wid] = last;
  }
  if (tid == 0) sh_pick = -1;
  __syncthreads();
  float wbase = 0.f, total = 0.f;
  int last_all = -1;
  for (int w = 0; w < nw; ++w) {
    if (w < wid) wbase += seg_w[w];
    total += seg_w[w];
    last_all = seg_last[w] > last_all ? seg_last[w] : last_all;
  }
  const float target = random[b] * total;
  if (wsum > 0.f && wbase <= target && target < wbase + wsum) {  // this warp's segment holds the draw
    // groups of 32 chunks of 32 tokens: the chunks' totals (lane j holds chunk j's, no dependency between them),
    // a scan over the lanes finds the chunk, a scan inside it the token
    unsigned int tr = tie_base;
    float cum = wbase;
    for (int group = s0; group < s1; group += 32 * 32) {
      float ctot = 0.f;
      unsigned int ctr = 0;
#pragma unroll 4
      for (int j = 0; j < 32; ++j) {
        const unsigned int t0 = tr;
        const float t = warp_sum(chunk_weight(group + 32 * j, tr));
        if (lane == j) {
          ctot = t;
          ctr = t0;
        }
      }
      float incl = ctot;  // inclusive prefix over the chunks, in index order
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      const unsigned int hit = __ballot_sync(0xffffffffu, ctot > 0.f && cum + incl > target);
      if (hit) {
        const int j = __ffs(hit) - 1;
        const int base = group + 32 * j;
        const float cum_j = cum + __shfl_sync(0xffffffffu, incl - ctot, j);
        unsigned int tr_j = __shfl_sync(0xffffffffu, ctr, j);
        const float w = chunk_weight(base, tr_j);
        float wincl = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const float y = __shfl_up_sync(0xffffffffu, wincl, o);
          if (lane >= o) wincl += y;
        }
        const unsigned int hit_w = __ballot_sync(0xffffffffu, w > 0.f && cum_j + wincl > target);
        const unsigned int kept = __ballot_sync(0xffffffffu, w > 0.f);
        // rounding inside the chunk: its last kept token
        if (lane == 0) sh_pick = base + (hit_w ? __ffs(hit_w) - 1 : 31 - __clz(kept));
        break;
      }
      cum += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0 && sh_pick < 0) sh_pick = last;  // rounding inside the segment: its last kept token
  }
  __syncthreads();
  if (tid == 0 && sh_pick < 0) sh_pick = last_all;  // target at or past the total (rounding): the last kept token
  __syncthreads();
  if (tid == 0) out[b] = lo + (sh_pick >= 0 ? idx((int)sh_pick) : 0);
}

}  // namespace pmx_cuda

// ---------------------------------------------------------------- extern "C" entry points
#define PMX_RMS(NAME, T)                                                                                           \
  extern "C" __global__ void NAME(const T* x, const T* w, T* y, pmx_i64 rows, int hidden, float eps) {            \
    pmx_cuda::rms_norm_impl<T>(x, w, y, rows, hidden, eps);                                                        \
  }
PMX_RMS(pmx_rms_norm_f32, float)
PMX_RMS(pmx_rms_norm_bf16, __nv_bfloat16)
PMX_RMS(pmx_rms_norm_f16, __half)

#define PMX_ROPE(NAME, T)                                                                                          \
  extern "C" __global__ void NAME(const T* q, const T* k, const pmx_i64* pos, const float* inv_freq, T* qo, T* ko, \
                                  int q_heads, int k_heads, int dim) {                                             \
    pmx_cuda::rotary_impl<T>(q, k, pos, inv_freq, qo, ko, q_heads, k_heads, dim);                                 \
  }
PMX_ROPE(pmx_rotary_f32, float)
PMX_ROPE(pmx_rotary_bf16, __nv_bfloat16)
PMX_ROPE(pmx_rotary_f16, __half)

extern "C" __global__ void pmx_vq_norms(const float* e, float* ee, int k, int c_dim) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= k) return;
  float s = 0.f;
  for (int c = 0; c < c_dim; ++c) s = __fadd_rn(s, __fmul_rn(e[(pmx_i64)j * c_dim + c], e[(pmx_i64)j * c_dim + c]));
  ee[j] = s;
}
// C == 4 (Emu3's codebook), 4 rows per thread; launch with VQ_THREADS threads, grid (ceil(n / 512), segments).
// With one segment the kernel writes out[] itself; with several, pmx_vq_merge combines the segments' minima.
extern "C" __global__ void __launch_bounds__(128) pmx_vq_partial_c4(const float* z, const float* e, const float* ee,
                                                                    float* best_d, int* best_i, pmx_i64* out, int n,
                                                                    int k, int seg_len) {
  pmx_cuda::vq_partial_impl<4, 4>(z, e, ee, best_d, best_i, out, n, k, seg_len);
}
extern "C" __global__ void pmx_vq_partial_generic(const float* z, const float* e, const float* ee, float* best_d,
                                                  int* best_i, pmx_i64* out, int n, int k, int c_dim, int seg_len) {
  pmx_cuda::vq_partial_generic(z, e, ee, best_d, best_i, out, n, k, c_dim, seg_len);
}
extern "C" __global__ void pmx_vq_merge(const float* best_d, const int* best_i, pmx_i64* out, int n, int segments) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= n) return;
  float bd = best_d[r];
  int bi = best_i[r];
  for (int s = 1; s < segments; ++s) {
    const float d = best_d[(pmx_i64)s * n + r];
    const int i = best_i[(pmx_i64)s * n + r];
    if (d < bd || (d == bd && i < bi)) {
      bd = d;
      bi = i;
    }
  }
  out[r] = bi == 0x7fffffff ? 0 : bi;
}

// scalar arguments (not the CfgArgs struct) so that any launcher, CuPy included, can call them
#define PMX_CFG(SUFFIX, T)                                                                                         \
  extern "C" __global__ void pmx_cfg_stats_##SUFFIX(const T* cond, const T* uncond, pmx_i64 vocab, int chunks,    \
                                                      int guide, float* partial) {                                 \
    pmx_cuda::CfgArgs a = {vocab, chunks, guide, 1.f, 0, 0, 0, 0.f, 0, 1.f, 0};                                       \
    pmx_cuda::cfg_stats_impl<T>(cond, uncond, a, partial);                                                         \
  }                                                                                                                \
  extern "C" __global__ void __launch_bounds__(1024) pmx_cfg_select_##SUFFIX(                                      \
      const T* cond, const T* uncond, const pmx_i64* allowed, const float* random, pmx_i64* out,                   \
      const float* partial, pmx_i64 vocab, int chunks, int guide, float scale, int greedy, int top_k,              \
      int use_top_p, float top_p_thr, int use_temp, float temperature, int cache_cap) {                            \
    pmx_cuda::CfgArgs a = {vocab, chunks, guide, scale, greedy, top_k, use_top_p, top_p_thr, use_temp,             \
                           temperature, cache_cap};                                                                \
    pmx_cuda::cfg_select_impl<T>(cond, uncond, allowed, random, out, partial, a);                                  \
  }
PMX_CFG(f32, float)
PMX_CFG(bf16, __nv_bfloat16)
PMX_CFG(f16, __half)
