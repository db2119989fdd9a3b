// Host launchers of the CUDA kernels in ops.cuh, on raw device pointers. No Paddle types.
//
// Each launcher runs its kernels on `device` (the tensors' GPU, made current for the launches and restored after)
// and `stream` (a cudaStream_t of that device), checks every launch, and returns 0 or the first CUDA error
// (a cudaError_t value; cuda_error_string names it): the Paddle binding turns it into an exception, so a failed
// launch never leaves an uninitialised output behind.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pmx {

enum DType { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct CfgSampleArgs {
  int64_t batch;
  int64_t vocab;
  bool guide;
  float guidance_scale;
  bool greedy;
  int64_t top_k;
  bool use_top_p;
  float top_p_thr;  // float32(1 - top_p)
  bool use_temperature;
  float temperature;
};

const char* cuda_error_string(int status);

int rms_norm_cuda(const void* x, const void* w, void* y, int64_t rows, int64_t hidden, float eps, DType dtype,
                  int device, void* stream);
int rotary_embedding_cuda(const void* q, const void* k, const int64_t* pos, const float* inv_freq, void* q_out,
                          void* k_out, int64_t tokens, int64_t q_heads, int64_t k_heads, int64_t dim, DType dtype,
                          int device, void* stream);
// workspace: vq_nearest_workspace_bytes(n, k) bytes of device memory
size_t vq_nearest_workspace_bytes(int64_t n, int64_t k);
int vq_nearest_cuda(const float* z, const float* codebook, int64_t* out, int64_t n, int64_t k, int64_t c,
                    void* workspace, int device, void* stream);
size_t cfg_sample_workspace_bytes(int64_t batch, int64_t vocab);
int cfg_sample_cuda(const void* cond, const void* uncond, const int64_t* allowed, const float* random, int64_t* out,
                    const CfgSampleArgs& args, DType dtype, void* workspace, int device, void* stream);

}  // namespace pmx
