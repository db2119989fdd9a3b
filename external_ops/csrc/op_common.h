// Shared helpers of the Paddle bindings: dtype and device checks.
#pragma once

#include "paddle/extension.h"

#ifdef PADDLEMIX_WITH_CUDA
#include "kernels/launch.h"
#include "paddle/phi/core/cuda_stream.h"

// The device and stream the kernels of tensor `t` run on. Tensor::stream() would give the stream of the current
// device (phi::backends::gpu::GetCurrentDeviceId() in paddle/phi/api/lib/tensor.cc), which need not be t's.
inline int pmx_device(const paddle::Tensor& t) { return t.place().GetDeviceId(); }
inline void* pmx_stream(const paddle::Tensor& t) { return paddle::GetCurrentCUDAStream(t.place())->raw_stream(); }

// A launcher's status (0 or a cudaError_t) as an exception naming the op and the CUDA error.
#define PMX_CHECK_LAUNCH(status, op) \
  PD_CHECK((status) == 0, "paddlemix_ops.", op, ": CUDA kernel launch failed: ", pmx::cuda_error_string(status))

inline pmx::DType pmx_cuda_dtype(const paddle::Tensor& t) {
  switch (t.dtype()) {
    case paddle::DataType::FLOAT32:
      return pmx::kFloat32;
    case paddle::DataType::BFLOAT16:
      return pmx::kBFloat16;
    case paddle::DataType::FLOAT16:
      return pmx::kFloat16;
    default:
      PD_THROW("paddlemix_ops: CUDA kernels take float32, bfloat16 or float16, got another dtype");
  }
}
#endif

// Every tensor of an op must be where its first input is: a kernel given another device's (or the host's) pointer
// would fault instead of raising.
#define PMX_CHECK_SAME_PLACE(op, first, other)                                                                   \
  PD_CHECK((other).place() == (first).place(), "paddlemix_ops.", op, ": ", #other, " is on ",                   \
           (other).place().DebugString(), " but ", #first, " is on ", (first).place().DebugString())

#define PMX_CHECK_CPU_F32(t, name)                                                                          \
  PD_CHECK((t).dtype() == paddle::DataType::FLOAT32, "paddlemix_ops: ", name,                               \
           " must be float32 on CPU (the CPU kernels are float32 only)")

#define PMX_NO_CUDA(op) PD_THROW("paddlemix_ops: ", op, " got a GPU tensor but the extension was built without CUDA")

#include <cstdlib>

#include "kernels/decoder_step_cpu.h"

// how a CPU weight tensor is stored, for the kernels that read float32, bf16 or int8 weights (linear, decoder_step)
inline pmx::WeightKind pmx_weight_kind(const paddle::Tensor& w, const char* op) {
  switch (w.dtype()) {
    case paddle::DataType::FLOAT32:
      return pmx::WeightKind::kFloat32;
    case paddle::DataType::BFLOAT16:
      return pmx::WeightKind::kBFloat16;
    case paddle::DataType::INT8:
      return pmx::WeightKind::kInt8;
    default:
      PD_THROW("paddlemix_ops.", op, ": weights must be float32, bfloat16 or int8 on CPU");
  }
}

// the instruction set of the bf16 / int8 products for this call, from the environment variable PADDLEMIX_OPS_AVX512
// (AVX-512 only where the CPU has it, else the portable AVX2 path): unset or "": int8 AVX-512, bf16 AVX2; "0": both
// AVX2; anything else: both AVX-512. Measured on the 2-core AMD EPYC here at one row: the int8 widening (two converts
// per 8 weights with AVX2) is compute-bound, AVX-512 streams it at the copy bandwidth (int8 [4096, 14336]: 2.1 ms
// AVX2, 1.6 ms AVX-512); bf16 streams at the memory bandwidth with AVX2 and AVX-512 measured no faster (bf16
// [4096, 14336]: 3.3-3.5 ms AVX2, 3.9-4.3 ms AVX-512)
inline void pmx_select_isa() {
  const char* env = std::getenv("PADDLEMIX_OPS_AVX512");
  const bool unset = env == nullptr || env[0] == '\0', off = !unset && env[0] == '0' && env[1] == '\0';
  pmx::linear_set_isa(!unset && !off, !off);
}

// the raw storage of a float32, bf16 (as uint16_t bits) or int8 weight
inline const void* pmx_weight_data(const paddle::Tensor& w) {
  switch (w.dtype()) {
    case paddle::DataType::BFLOAT16:
      return w.data<paddle::bfloat16>();
    case paddle::DataType::INT8:
      return w.data<int8_t>();
    default:
      return w.data<float>();
  }
}
