// Pieces of the CPU 2-D convolution (conv2d_op.h does the GEMM between them). float32, no Paddle types.
// Single-threaded on purpose: they work on cache-sized bands (a few ms for a whole image), and an OpenMP region
// here, inside a process where Paddle runs Intel's OpenMP runtime, measured slower than the loop itself.
#pragma once

#include <cstdint>
#include <cstring>

namespace pmx {

// im2col of one image x [C, H, W], read as its nearest-neighbour upsampling by the integer factor `up` (1: as it
// is), i.e. an input [C, H*up, W*up] with u[c][y][x] = x[c][y / up][x / up], for output rows [row0, row1), zero
// padding done here: cols[(c * kh + i) * kw + j][(oy - row0) * wo + ox] = u[c][oy * sh - pt + i][ox * sw - pl + j]
// (0 outside). This is the column layout of Paddle's own convolution, so the GEMM with the weight [Cout, C*kh*kw]
// sums in the same order as F.conv2d; the upsampled input is never materialised.
static inline void im2col_cpu(const float* x, float* cols, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                              int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t wo, int64_t row0, int64_t row1,
                              int64_t up) {
  const int64_t len = (row1 - row0) * wo, taps = c * kh * kw, hu = h * up, wu = w * up;
  for (int64_t r = 0; r < taps; ++r) {
    const int64_t ch = r / (kh * kw), i = (r / kw) % kh, j = r % kw;
    const float* src = x + ch * h * w;
    float* dst = cols + r * len;
    // output columns ox whose input column ox * sw - pl + j lies inside [0, wu)
    int64_t x0 = pl - j > 0 ? (pl - j + sw - 1) / sw : 0;
    int64_t x1 = wu - 1 + pl - j >= 0 ? (wu - 1 + pl - j) / sw + 1 : 0;
    x0 = x0 < wo ? x0 : wo;
    x1 = x1 < wo ? x1 : wo;
    x1 = x1 > x0 ? x1 : x0;
    for (int64_t oy = row0; oy < row1; ++oy) {
      float* d = dst + (oy - row0) * wo;
      const int64_t iy = oy * sh - pt + i;
      if (iy < 0 || iy >= hu) {
        std::memset(d, 0, sizeof(float) * wo);
        continue;
      }
      std::memset(d, 0, sizeof(float) * x0);
      const float* row = src + (iy / up) * w;
      const int64_t ix0 = x0 * sw - pl + j;  // input column of output column x0
      if (up == 1 && sw == 1) {
        std::memcpy(d + x0, row + ix0, sizeof(float) * (x1 - x0));
      } else if (up == 1) {
        for (int64_t ox = x0; ox < x1; ++ox) d[ox] = row[ix0 + (ox - x0) * sw];
      } else if (up == 2 && sw == 1) {  // each input value fills two neighbouring columns
        int64_t ox = x0, ix = ix0;
        if (ix & 1) d[ox++] = row[(ix++) >> 1];
        for (; ox + 1 < x1; ox += 2, ix += 2) d[ox] = d[ox + 1] = row[ix >> 1];
        if (ox < x1) d[ox] = row[ix >> 1];
      } else {
        for (int64_t ox = x0; ox < x1; ++ox) d[ox] = row[(ix0 + (ox - x0) * sw) / up];
      }
      std::memset(d + x1, 0, sizeof(float) * (wo - x1));
    }
  }
}

// out[co][col0 + p] = band[co][p] + bias[co] for p < len; out rows are `ld` floats apart.
static inline void add_bias_into(const float* band, const float* bias, float* out, int64_t cout, int64_t len,
                                 int64_t col0, int64_t ld) {
  for (int64_t co = 0; co < cout; ++co) {
    const float b = bias[co];
    const float* s = band + co * len;
    float* d = out + co * ld + col0;
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) d[p] = s[p] + b;
  }
}

}  // namespace pmx
