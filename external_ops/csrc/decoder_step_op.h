// Paddle binding of decoder_step (CPU float32): one decode step of a Llama-style decoder layer, computed by
// kernels/decoder_step_cpu.h. x [B, 1, hidden] (or [B, hidden]); weights: the layer's 9 tensors in the order
// input_layernorm, q_proj, k_proj, v_proj, o_proj, post_attention_layernorm, gate_proj, up_proj, down_proj (norm
// scales [hidden], projections in Paddle's [in, out] layout); keys, values [B, kv_heads, capacity, head_dim] get
// the new token's key/value at `slot` (in place); position_ids [B] int64; inv_freq [head_dim / 2]; mask: additive
// float32 [B, 1 or kv_heads, 1 or heads / kv_heads, capacity]. Returns the layer's output, shaped as x.
#pragma once

#include <vector>

#include "kernels/decoder_step_cpu.h"
#include "op_common.h"

namespace {

void pmx_check_shape(const paddle::Tensor& t, const std::vector<int64_t>& want, const char* name) {
  PD_CHECK(t.shape() == want, "paddlemix_ops.decoder_step: ", name, " has the wrong shape");
}

}  // namespace

std::vector<paddle::Tensor> DecoderStepForward(const paddle::Tensor& x, const std::vector<paddle::Tensor>& weights,
                                               paddle::Tensor& keys, paddle::Tensor& values,
                                               const paddle::Tensor& position_ids, const paddle::Tensor& inv_freq,
                                               const paddle::Tensor& mask, int64_t slot, float eps) {
  PD_CHECK(x.is_cpu() && keys.is_cpu() && values.is_cpu() && mask.is_cpu(), "paddlemix_ops.decoder_step: CPU only");
  PD_CHECK(weights.size() == 9, "paddlemix_ops.decoder_step: expected the layer's 9 weights");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(keys, "keys");
  PMX_CHECK_CPU_F32(values, "values");
  PMX_CHECK_CPU_F32(mask, "mask");
  PMX_CHECK_CPU_F32(inv_freq, "inv_freq");
  for (const auto& w : weights) PMX_CHECK_CPU_F32(w, "every weight");
  PD_CHECK(keys.shape().size() == 4 && keys.shape() == values.shape(),
           "paddlemix_ops.decoder_step: keys and values must be [B, kv_heads, capacity, head_dim]");
  const int64_t B = keys.shape()[0], kv_heads = keys.shape()[1], capacity = keys.shape()[2], D = keys.shape()[3];
  const int64_t H = weights[0].numel();
  PD_CHECK(x.numel() == B * H && x.shape().back() == H, "paddlemix_ops.decoder_step: x must be [B, 1, hidden]");
  PD_CHECK(weights[1].shape().size() == 2 && weights[1].shape()[1] % D == 0,
           "paddlemix_ops.decoder_step: q_proj must be [hidden, heads * head_dim]");
  const int64_t nq = weights[1].shape()[1], heads = nq / D, nkv = kv_heads * D;
  PD_CHECK(heads % kv_heads == 0 && D % 2 == 0,
           "paddlemix_ops.decoder_step: heads must be a multiple of kv_heads and head_dim even");
  PD_CHECK(weights[6].shape().size() == 2, "paddlemix_ops.decoder_step: gate_proj must be 2-D");
  const int64_t I = weights[6].shape()[1];
  pmx_check_shape(weights[1], {H, nq}, "q_proj");
  pmx_check_shape(weights[2], {H, nkv}, "k_proj");
  pmx_check_shape(weights[3], {H, nkv}, "v_proj");
  pmx_check_shape(weights[4], {nq, H}, "o_proj");
  PD_CHECK(weights[5].numel() == H, "paddlemix_ops.decoder_step: post_attention_layernorm has the wrong size");
  pmx_check_shape(weights[7], {H, I}, "up_proj");
  pmx_check_shape(weights[8], {I, H}, "down_proj");
  PD_CHECK(0 <= slot && slot < capacity, "paddlemix_ops.decoder_step: slot ", slot, " is outside the cache capacity ",
           capacity);
  PD_CHECK(position_ids.numel() == B && position_ids.dtype() == paddle::DataType::INT64,
           "paddlemix_ops.decoder_step: position_ids must be int64 with one entry per row");
  PD_CHECK(inv_freq.numel() == D / 2, "paddlemix_ops.decoder_step: inv_freq must have head_dim / 2 entries");
  const std::vector<int64_t> m = mask.shape();
  const int64_t group = heads / kv_heads;
  PD_CHECK(m.size() == 4 && m[0] == B && (m[1] == 1 || m[1] == kv_heads) && (m[2] == 1 || m[2] == group) &&
               m[3] == capacity,
           "paddlemix_ops.decoder_step: mask must be [B, 1 or kv_heads, 1 or heads / kv_heads, capacity]");

  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  pmx::DecoderStepArgs a;
  a.batch = B;
  a.hidden = H;
  a.heads = heads;
  a.kv_heads = kv_heads;
  a.head_dim = D;
  a.inter = I;
  a.capacity = capacity;
  a.slot = slot;
  a.mask_group_stride = m[2] == 1 ? 0 : capacity;
  a.mask_kv_stride = m[1] == 1 ? 0 : m[2] * capacity;
  a.mask_batch_stride = m[1] * m[2] * capacity;
  a.eps = eps;
  a.ln1 = weights[0].data<float>();
  a.wq = weights[1].data<float>();
  a.wk = weights[2].data<float>();
  a.wv = weights[3].data<float>();
  a.wo = weights[4].data<float>();
  a.ln2 = weights[5].data<float>();
  a.wg = weights[6].data<float>();
  a.wu = weights[7].data<float>();
  a.wd = weights[8].data<float>();
  a.x = x.data<float>();
  a.pos = position_ids.data<int64_t>();
  a.inv_freq = inv_freq.data<float>();
  a.mask = mask.data<float>();
  a.keys = keys.data<float>();
  a.values = values.data<float>();
  a.y = y.data<float>();
  pmx::decoder_step_cpu(a);
  return {y};
}

std::vector<std::vector<int64_t>> DecoderStepShape(const std::vector<int64_t>& x,
                                                   const std::vector<std::vector<int64_t>>& weights,
                                                   const std::vector<int64_t>& keys,
                                                   const std::vector<int64_t>& values,
                                                   const std::vector<int64_t>& position_ids,
                                                   const std::vector<int64_t>& inv_freq,
                                                   const std::vector<int64_t>& mask) {
  return {x, keys, values};
}
std::vector<paddle::DataType> DecoderStepDtype(const paddle::DataType& x, const std::vector<paddle::DataType>& weights,
                                               const paddle::DataType& keys, const paddle::DataType& values,
                                               const paddle::DataType& position_ids, const paddle::DataType& inv_freq,
                                               const paddle::DataType& mask) {
  return {x, keys, values};
}
