// Paddle binding of decoder_step (CPU float32): one decode step through L consecutive Llama-style decoder layers
// (all of a model's, in one call: one dispatch per step instead of one per layer), each computed by
// kernels/decoder_step_cpu.h. x [B, 1, hidden] (or [B, hidden]); weights: 9 tensors per layer, layer after layer, in
// the order input_layernorm, q_proj, k_proj, v_proj, o_proj, post_attention_layernorm, gate_proj, up_proj, down_proj
// (norm scales [hidden] float32, projections in Paddle's [in, out] layout, all float32 or all bf16, or all int8 and
// then followed by the layer's 7 projection scales [out] float32 in the same order: 16 tensors per layer);
// keys, values: L tensors [B, kv_heads, capacity, head_dim] that get each layer's new key/value at `slot` (in place);
// position_ids [B] int64; inv_freq [head_dim / 2]; mask: additive float32 [B, 1 or kv_heads, 1 or heads / kv_heads,
// capacity]. Returns the last layer's output, shaped as x.
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
                                               std::vector<paddle::Tensor>& keys, std::vector<paddle::Tensor>& values,
                                               const paddle::Tensor& position_ids, const paddle::Tensor& inv_freq,
                                               const paddle::Tensor& mask, int64_t slot, float eps) {
  const size_t layers = keys.size();
  PD_CHECK(layers > 0 && values.size() == layers && (weights.size() == 9 * layers || weights.size() == 16 * layers),
           "paddlemix_ops.decoder_step: expected 9 weights (int8: 9 weights and 7 scales), one keys and one values "
           "tensor per layer");
  const size_t per_layer = weights.size() / layers;
  const pmx::WeightKind kind = pmx_weight_kind(weights[1], "decoder_step");
  PD_CHECK((kind == pmx::WeightKind::kInt8) == (per_layer == 16),
           "paddlemix_ops.decoder_step: int8 projections need their 7 scales per layer, other weights take none");
  PD_CHECK(x.is_cpu() && mask.is_cpu(), "paddlemix_ops.decoder_step: CPU only");
  PMX_CHECK_CPU_F32(x, "x");
  PMX_CHECK_CPU_F32(mask, "mask");
  PMX_CHECK_CPU_F32(inv_freq, "inv_freq");
  const std::vector<int64_t> cache_shape = keys[0].shape();
  PD_CHECK(cache_shape.size() == 4, "paddlemix_ops.decoder_step: keys and values must be [B, kv_heads, capacity, head_dim]");
  const int64_t B = cache_shape[0], kv_heads = cache_shape[1], capacity = cache_shape[2], D = cache_shape[3];
  const int64_t H = weights[0].numel();
  const int proj[7] = {1, 2, 3, 4, 6, 7, 8};  // the projections among a layer's 9 weights
  PD_CHECK(x.numel() == B * H && x.shape().back() == H, "paddlemix_ops.decoder_step: x must be [B, 1, hidden]");
  PD_CHECK(weights[1].shape().size() == 2 && weights[1].shape()[1] % D == 0,
           "paddlemix_ops.decoder_step: q_proj must be [hidden, heads * head_dim]");
  const int64_t nq = weights[1].shape()[1], heads = nq / D, nkv = kv_heads * D;
  PD_CHECK(heads % kv_heads == 0 && D % 2 == 0,
           "paddlemix_ops.decoder_step: heads must be a multiple of kv_heads and head_dim even");
  PD_CHECK(weights[6].shape().size() == 2, "paddlemix_ops.decoder_step: gate_proj must be 2-D");
  const int64_t I = weights[6].shape()[1];
  for (size_t l = 0; l < layers; ++l) {
    const paddle::Tensor* w = weights.data() + per_layer * l;
    PD_CHECK(keys[l].is_cpu() && values[l].is_cpu(), "paddlemix_ops.decoder_step: CPU only");
    PMX_CHECK_CPU_F32(keys[l], "keys");
    PMX_CHECK_CPU_F32(values[l], "values");
    PD_CHECK(keys[l].shape() == cache_shape && values[l].shape() == cache_shape,
             "paddlemix_ops.decoder_step: every layer's keys and values must be [B, kv_heads, capacity, head_dim]");
    PMX_CHECK_CPU_F32(w[0], "input_layernorm");
    PMX_CHECK_CPU_F32(w[5], "post_attention_layernorm");
    for (int i : proj)
      PD_CHECK(w[i].is_cpu() && w[i].dtype() == weights[1].dtype(),
               "paddlemix_ops.decoder_step: every projection must be stored in one dtype on CPU");
    for (int i = 9; i < static_cast<int>(per_layer); ++i) {
      PMX_CHECK_CPU_F32(w[i], "every scale");
      PD_CHECK(w[i].numel() == w[proj[i - 9]].shape()[1],
               "paddlemix_ops.decoder_step: a scale must have one entry per output column of its projection");
    }
    PD_CHECK(w[0].numel() == H && w[5].numel() == H, "paddlemix_ops.decoder_step: a layernorm has the wrong size");
    pmx_check_shape(w[1], {H, nq}, "q_proj");
    pmx_check_shape(w[2], {H, nkv}, "k_proj");
    pmx_check_shape(w[3], {H, nkv}, "v_proj");
    pmx_check_shape(w[4], {nq, H}, "o_proj");
    pmx_check_shape(w[6], {H, I}, "gate_proj");
    pmx_check_shape(w[7], {H, I}, "up_proj");
    pmx_check_shape(w[8], {I, H}, "down_proj");
  }
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
  pmx_select_isa();
  std::vector<float> between(layers > 1 ? 2 * B * H : 0);  // the hidden state between layers (ping-pong)
  pmx::DecoderStepArgs a;
  a.kind = kind;
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
  a.pos = position_ids.data<int64_t>();
  a.inv_freq = inv_freq.data<float>();
  a.mask = mask.data<float>();
  for (size_t l = 0; l < layers; ++l) {
    const paddle::Tensor* w = weights.data() + per_layer * l;
    a.ln1 = w[0].data<float>();
    a.ln2 = w[5].data<float>();
    const void** ws[7] = {&a.wq, &a.wk, &a.wv, &a.wo, &a.wg, &a.wu, &a.wd};
    const float** ss[7] = {&a.sq, &a.sk, &a.sv, &a.so, &a.sg, &a.su, &a.sd};
    for (int i = 0; i < 7; ++i) {
      *ws[i] = pmx_weight_data(w[proj[i]]);
      *ss[i] = per_layer == 16 ? w[9 + i].data<float>() : nullptr;
    }
    a.keys = keys[l].data<float>();
    a.values = values[l].data<float>();
    a.x = l == 0 ? x.data<float>() : between.data() + ((l - 1) % 2) * B * H;
    a.y = l + 1 == layers ? y.data<float>() : between.data() + (l % 2) * B * H;
    pmx::decoder_step_cpu(a);
  }
  return {y};
}

std::vector<std::vector<int64_t>> DecoderStepShape(const std::vector<int64_t>& x,
                                                   const std::vector<std::vector<int64_t>>& weights,
                                                   const std::vector<std::vector<int64_t>>& keys,
                                                   const std::vector<std::vector<int64_t>>& values,
                                                   const std::vector<int64_t>& position_ids,
                                                   const std::vector<int64_t>& inv_freq,
                                                   const std::vector<int64_t>& mask) {
  return {x};
}
std::vector<paddle::DataType> DecoderStepDtype(const paddle::DataType& x, const std::vector<paddle::DataType>& weights,
                                               const std::vector<paddle::DataType>& keys,
                                               const std::vector<paddle::DataType>& values,
                                               const paddle::DataType& position_ids, const paddle::DataType& inv_freq,
                                               const paddle::DataType& mask) {
  return {x};
}
