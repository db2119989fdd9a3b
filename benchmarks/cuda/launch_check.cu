// Checks the host launchers of external_ops/csrc/kernels/launch.cu (framework-free) on a GPU, without Paddle:
// a good launch returns 0 and the right numbers; a bad one (invalid device, too much shared memory) returns its
// CUDA error instead of leaving the output unwritten; cfg_sample's shared-memory attribute is set on every device.
//
//   nvcc -std=c++17 -O2 -I external_ops/csrc/kernels benchmarks/cuda/launch_check.cu \
//        external_ops/csrc/kernels/launch.cu -o launch_check && ./launch_check
//
// Exit status 1 when a check fails.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "launch.h"

static int failures = 0;

static void check(bool ok, const char* what, const char* detail = "") {
  std::printf("[%s] %s %s\n", ok ? "ok" : "FAIL", what, detail);
  if (!ok) ++failures;
}

template <typename T>
static T* to_device(const std::vector<T>& host) {
  T* ptr = nullptr;
  cudaMalloc(&ptr, host.size() * sizeof(T));
  cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return ptr;
}

template <typename T>
static std::vector<T> to_host(const T* ptr, size_t n) {
  std::vector<T> host(n);
  cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}

// rms_norm float32 on `device`: status 0 and the numbers of a double-precision reference
static void good_rms_norm(int device) {
  cudaSetDevice(device);
  const int64_t rows = 5, hidden = 1000;
  std::vector<float> x(rows * hidden), w(hidden);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i) * 3.0f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.5f + std::cos(0.11f * i);
  float *xd = to_device(x), *wd = to_device(w), *yd = to_device(std::vector<float>(x.size(), NAN));
  const int status = pmx::rms_norm_cuda(xd, wd, yd, rows, hidden, 1e-6f, pmx::kFloat32, device, nullptr);
  const std::vector<float> y = to_host(yd, x.size());
  double err = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < hidden; ++j) ss += double(x[r * hidden + j]) * x[r * hidden + j];
    const double inv = 1.0 / std::sqrt(ss / hidden + 1e-6);
    for (int64_t j = 0; j < hidden; ++j)
      err = std::fmax(err, std::fabs(y[r * hidden + j] - w[j] * x[r * hidden + j] * inv));
  }
  char detail[96];
  std::snprintf(detail, sizeof(detail), "device %d: status %d, max err %.1e", device, status, err);
  check(status == 0 && err < 1e-4, "rms_norm f32 launch", detail);
  cudaFree(xd), cudaFree(wd), cudaFree(yd);
}

// cfg_sample float16, greedy, a 60000-entry range (larger than the 160 KiB score cache): the token of the largest
// logit. Run on each device, so each one's cfg_select gets its own shared-memory attribute.
static void good_cfg_sample(int device) {
  cudaSetDevice(device);
  const int64_t batch = 2, vocab = 70001;
  std::vector<__half> cond(batch * vocab);
  std::vector<int64_t> allowed = {5, 60005, 1000, 70001}, expect(batch);
  for (int64_t b = 0; b < batch; ++b) {
    float best = -1e30f;
    for (int64_t v = 0; v < vocab; ++v) {
      const __half h = __float2half(std::sin(0.001f * v * (b + 1) + b) * 8.0f + 1e-4f * (v % 97));
      cond[b * vocab + v] = h;
      const float f = __half2float(h);
      if (v >= allowed[2 * b] && v < allowed[2 * b + 1] && f > best) best = f, expect[b] = v;
    }
  }
  __half* cd = to_device(cond);
  int64_t *ad = to_device(allowed), *od = to_device(std::vector<int64_t>(batch, -1));
  float* rd = to_device(std::vector<float>(batch, 0.f));
  void* ws = nullptr;
  cudaMalloc(&ws, pmx::cfg_sample_workspace_bytes(batch, vocab));
  const pmx::CfgSampleArgs args{batch, vocab, false, 1.0f, true, 0, false, 0.0f, false, 1.0f};
  const int status = pmx::cfg_sample_cuda(cd, cd, ad, rd, od, args, pmx::kFloat16, ws, device, nullptr);
  const std::vector<int64_t> got = to_host(od, batch);
  char detail[128];
  std::snprintf(detail, sizeof(detail), "device %d: status %d, tokens %lld %lld (expected %lld %lld)", device, status,
                (long long)got[0], (long long)got[1], (long long)expect[0], (long long)expect[1]);
  check(status == 0 && got == expect, "cfg_sample f16 greedy launch", detail);
  cudaFree(cd), cudaFree(ad), cudaFree(od), cudaFree(rd), cudaFree(ws);
}

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device\n");
    return 1;
  }
  for (int d = 0; d < count; ++d) good_rms_norm(d), good_cfg_sample(d);
  cudaSetDevice(0);

  // a device that does not exist: the launcher reports it instead of launching on the current device
  float* buf = nullptr;
  cudaMalloc(&buf, 1 << 20);
  int status = pmx::rms_norm_cuda(buf, buf, buf, 4, 64, 1e-6f, pmx::kFloat32, count, nullptr);
  check(status != 0, "rms_norm on a missing device returns an error", pmx::cuda_error_string(status));
  int current = -1;
  cudaGetDevice(&current);
  check(current == 0, "the caller's current device is restored");

  // 256 KiB of dynamic shared memory for rotary's angle table (dim 65536): more than any block may have, a
  // launch error that must come back
  status = pmx::rotary_embedding_cuda(buf, buf, reinterpret_cast<int64_t*>(buf), buf, buf, buf, 1, 1, 1, 65536,
                                      pmx::kFloat32, 0, nullptr);
  check(status != 0, "rotary with too much shared memory returns an error", pmx::cuda_error_string(status));
  cudaGetLastError();

  // an empty batch launches nothing and succeeds
  status = pmx::rms_norm_cuda(buf, buf, buf, 0, 64, 1e-6f, pmx::kFloat32, 0, nullptr);
  check(status == 0, "rms_norm with no rows", pmx::cuda_error_string(status));
  cudaFree(buf);
  std::printf("%d device(s); %s\n", count, failures ? "FAILED" : "all launch checks passed");
  return failures ? 1 : 0;
}
