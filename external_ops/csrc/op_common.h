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
