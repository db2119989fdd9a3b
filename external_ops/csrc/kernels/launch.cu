// Host launchers of the kernels in ops.cuh (plain CUDA, no Paddle includes).
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "launch.h"
#include "ops.cuh"

// returns the error of a CUDA call (or of the launch just before, for cudaGetLastError()) to the binding
#define PMX_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    const cudaError_t pmx_err_ = (expr);           \
    if (pmx_err_ != cudaSuccess) return pmx_err_;  \
  } while (0)

namespace pmx {
namespace {

// Makes `device` the current device for the launches (kernels run on the current device, which need not be the
// tensors' one), and restores the caller's device on the way out.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    status_ = cudaGetDevice(&previous_);
    if (status_ == cudaSuccess && previous_ != device) status_ = cudaSetDevice(device);
    switched_ = status_ == cudaSuccess && previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = 0;
  bool switched_ = false;
  cudaError_t status_;
};

// about 2048 logits per stats block: 91 blocks per row at Emu3's vocabulary
int cfg_chunks(int64_t vocab) { return static_cast<int>(std::min<int64_t>(256, (vocab + 2047) / 2048)); }

// dynamic shared memory for cfg_select's score cache: up to 160 KiB where the card allows it, leaving 16 KiB for
// the kernel's static shared memory. A kernel's attribute belongs to one device (its context), so it is set once
// per kernel and device, with that device current (the DeviceGuard of the launch).
cudaError_t cfg_cache_floats(const void* kernel, int device, int* floats) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> done;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = done.find({kernel, device});
  if (it == done.end()) {
    int optin = 0;
    PMX_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const int bytes = std::max(0, std::min(optin - 16 * 1024, 160 * 1024));
    PMX_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    it = done.emplace(std::make_pair(kernel, device), bytes / 4).first;
  }
  *floats = it->second;
  return cudaSuccess;
}

int vq_segments(int64_t n, int64_t k) {
  // enough blocks to fill the card: about 4 per SM on a large GPU
  const int64_t row_blocks = (n + 511) / 512;
  int64_t seg = (528 + row_blocks - 1) / row_blocks;
  seg = std::max<int64_t>(1, std::min<int64_t>(seg, (k + 1023) / 1024));
  return static_cast<int>(seg);
}

}  // namespace

const char* cuda_error_string(int status) { return cudaGetErrorString(static_cast<cudaError_t>(status)); }

int rms_norm_cuda(const void* x, const void* w, void* y, int64_t rows, int64_t hidden, float eps, DType dtype,
                  int device, void* stream) {
  if (rows == 0) return cudaSuccess;  // an empty grid is a launch error: nothing to compute
  const DeviceGuard guard(device);
  PMX_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = hidden >= 4096 ? 512 : 256;
  const int h = static_cast<int>(hidden);
  if (dtype == kFloat32)
    pmx_rms_norm_f32<<<rows, threads, 0, s>>>((const float*)x, (const float*)w, (float*)y, rows, h, eps);
  else if (dtype == kBFloat16)
    pmx_rms_norm_bf16<<<rows, threads, 0, s>>>((const __nv_bfloat16*)x, (const __nv_bfloat16*)w, (__nv_bfloat16*)y,
                                               rows, h, eps);
  else
    pmx_rms_norm_f16<<<rows, threads, 0, s>>>((const __half*)x, (const __half*)w, (__half*)y, rows, h, eps);
  return cudaGetLastError();
}

int rotary_embedding_cuda(const void* q, const void* k, const int64_t* pos, const float* inv_freq, void* q_out,
                          void* k_out, int64_t tokens, int64_t q_heads, int64_t k_heads, int64_t dim, DType dtype,
                          int device, void* stream) {
  if (tokens == 0) return cudaSuccess;  // an empty grid is a launch error: nothing to compute
  const DeviceGuard guard(device);
  PMX_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int threads = 256;
  const size_t smem = sizeof(float) * dim;
  const int hq = (int)q_heads, hk = (int)k_heads, d = (int)dim;
  const pmx_i64* p = reinterpret_cast<const pmx_i64*>(pos);
  if (dtype == kFloat32)
    pmx_rotary_f32<<<tokens, threads, smem, s>>>((const float*)q, (const float*)k, p, inv_freq, (float*)q_out,
                                                 (float*)k_out, hq, hk, d);
  else if (dtype == kBFloat16)
    pmx_rotary_bf16<<<tokens, threads, smem, s>>>((const __nv_bfloat16*)q, (const __nv_bfloat16*)k, p, inv_freq,
                                                  (__nv_bfloat16*)q_out, (__nv_bfloat16*)k_out, hq, hk, d);
  else
    pmx_rotary_f16<<<tokens, threads, smem, s>>>((const __half*)q, (const __half*)k, p, inv_freq, (__half*)q_out,
                                                 (__half*)k_out, hq, hk, d);
  return cudaGetLastError();
}

size_t vq_nearest_workspace_bytes(int64_t n, int64_t k) {
  const int seg = vq_segments(n, k);
  return sizeof(float) * k + (sizeof(float) + sizeof(int)) * static_cast<size_t>(seg) * n;
}

int vq_nearest_cuda(const float* z, const float* codebook, int64_t* out, int64_t n, int64_t k, int64_t c,
                    void* workspace, int device, void* stream) {
  if (n == 0) return cudaSuccess;  // an empty grid is a launch error: nothing to compute
  const DeviceGuard guard(device);
  PMX_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int seg = vq_segments(n, k);
  const int seg_len = static_cast<int>((k + seg - 1) / seg);
  float* ee = static_cast<float*>(workspace);
  float* best_d = ee + k;
  int* best_i = reinterpret_cast<int*>(best_d + static_cast<size_t>(seg) * n);
  pmx_i64* o = reinterpret_cast<pmx_i64*>(out);
  pmx_vq_norms<<<(k + 255) / 256, 256, 0, s>>>(codebook, ee, (int)k, (int)c);
  PMX_RETURN_IF_ERROR(cudaGetLastError());
  if (c == 4) {
    const dim3 grid((unsigned)((n + 511) / 512), (unsigned)seg);
    pmx_vq_partial_c4<<<grid, pmx_cuda::VQ_THREADS, 0, s>>>(z, codebook, ee, best_d, best_i, o, (int)n, (int)k,
                                                            seg_len);
  } else {
    const dim3 grid((unsigned)((n + 127) / 128), (unsigned)seg);
    pmx_vq_partial_generic<<<grid, 128, 0, s>>>(z, codebook, ee, best_d, best_i, o, (int)n, (int)k, (int)c, seg_len);
  }
  PMX_RETURN_IF_ERROR(cudaGetLastError());
  if (seg > 1) pmx_vq_merge<<<(n + 255) / 256, 256, 0, s>>>(best_d, best_i, o, (int)n, seg);
  return cudaGetLastError();
}

size_t cfg_sample_workspace_bytes(int64_t batch, int64_t vocab) {
  return sizeof(float) * 4 * static_cast<size_t>(batch) * cfg_chunks(vocab);
}

int cfg_sample_cuda(const void* cond, const void* uncond, const int64_t* allowed, const float* random, int64_t* out,
                    const CfgSampleArgs& args, DType dtype, void* workspace, int device, void* stream) {
  if (args.batch == 0) return cudaSuccess;  // an empty grid is a launch error: nothing to compute
  const DeviceGuard guard(device);
  PMX_RETURN_IF_ERROR(guard.status());
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  pmx_cuda::CfgArgs a;
  a.vocab = args.vocab;
  a.chunks = cfg_chunks(args.vocab);
  a.guide = args.guide ? 1 : 0;
  a.scale = args.guidance_scale;
  a.greedy = args.greedy ? 1 : 0;
  a.top_k = static_cast<int>(std::min<int64_t>(args.top_k, 1 << 30));
  a.use_top_p = args.use_top_p ? 1 : 0;
  a.top_p_thr = args.top_p_thr;
  a.use_temp = args.use_temperature ? 1 : 0;
  a.temperature = args.temperature;
  float* partial = static_cast<float*>(workspace);
  const dim3 grid(a.chunks, (unsigned)args.batch);
  const pmx_i64* al = reinterpret_cast<const pmx_i64*>(allowed);
  pmx_i64* o = reinterpret_cast<pmx_i64*>(out);
#define PMX_LAUNCH_CFG(SUFFIX, T)                                                                                  \
  int cap = 0;                                                                                                     \
  PMX_RETURN_IF_ERROR(cfg_cache_floats((const void*)pmx_cfg_select_##SUFFIX, device, &cap));                      \
  pmx_cfg_stats_##SUFFIX<<<grid, 256, 0, s>>>((const T*)cond, (const T*)uncond, a.vocab, a.chunks, a.guide,        \
                                              partial);                                                            \
  PMX_RETURN_IF_ERROR(cudaGetLastError());                                                                         \
  pmx_cfg_select_##SUFFIX<<<(unsigned)args.batch, 1024, cap * sizeof(float), s>>>(                                 \
      (const T*)cond, (const T*)uncond, al, random, o, partial, a.vocab, a.chunks, a.guide, a.scale, a.greedy,     \
      a.top_k, a.use_top_p, a.top_p_thr, a.use_temp, a.temperature, cap)
  if (dtype == kFloat32) {
    PMX_LAUNCH_CFG(f32, float);
  } else if (dtype == kBFloat16) {
    PMX_LAUNCH_CFG(bf16, __nv_bfloat16);
  } else {
    PMX_LAUNCH_CFG(f16, __half);
  }
#undef PMX_LAUNCH_CFG
  return cudaGetLastError();
}

}  // namespace pmx
