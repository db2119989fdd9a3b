// The extension's single translation unit: registers every op. Each op's binding (checks, CPU/CUDA dispatch,
// shape and dtype inference) is in csrc/<op>_op.h; paddle/extension.h takes about 10 s to parse, so the bindings
// are compiled together rather than one object each. The registrations stay here, in the listed source, because
// Paddle's setup generates the Python API from the PD_BUILD_OP calls it finds in the sources.
#include "build_info_op.h"
#include "cfg_sample_op.h"
#include "conv2d_op.h"
#include "decoder_step_op.h"
#include "group_norm_op.h"
#include "linear_op.h"
#include "masked_softmax_op.h"
#include "rms_norm_op.h"
#include "rotary_op.h"
#include "softmax_xent_op.h"
#include "vq_nearest_op.h"

PD_BUILD_OP(pmx_build_info)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BuildInfoForward))
    .SetInferShapeFn(PD_INFER_SHAPE(BuildInfoShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(BuildInfoDtype));

PD_BUILD_OP(pmx_cfg_sample)
    .Inputs({"Cond", "Uncond", "Allowed", "Random"})
    .Outputs({"Out"})
    .Attrs({"guide: bool", "guidance_scale: float", "greedy: bool", "top_k: int64_t", "use_top_p: bool",
            "top_p_thr: float", "use_temperature: bool", "temperature: float"})
    .SetKernelFn(PD_KERNEL(CfgSampleForward))
    .SetInferShapeFn(PD_INFER_SHAPE(CfgSampleShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(CfgSampleDtype));

PD_BUILD_OP(pmx_conv2d)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Out"})
    .Attrs({"sh: int64_t", "sw: int64_t", "pt: int64_t", "pb: int64_t", "pl: int64_t", "pr: int64_t", "up: int64_t"})
    .SetKernelFn(PD_KERNEL(Conv2dForward))
    .SetInferShapeFn(PD_INFER_SHAPE(Conv2dShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Conv2dDtype));

PD_BUILD_OP(pmx_decoder_step)
    .Inputs({"X", paddle::Vec("Weights"), paddle::Vec("Keys"), paddle::Vec("Values"), "PositionIds", "InvFreq", "Mask"})
    .Outputs({"Out", paddle::Vec("KeysOut"), paddle::Vec("ValuesOut")})
    .Attrs({"slot: int64_t", "eps: float"})
    .SetInplaceMap({{paddle::Vec("Keys"), paddle::Vec("KeysOut")}, {paddle::Vec("Values"), paddle::Vec("ValuesOut")}})
    .SetKernelFn(PD_KERNEL(DecoderStepForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DecoderStepShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecoderStepDtype));

PD_BUILD_OP(pmx_group_norm)
    .Inputs({"X", "Weight", "Bias", paddle::Optional("Scale"), paddle::Optional("Shift")})
    .Outputs({"Out"})
    .Attrs({"groups: int64_t", "eps: float", "silu: bool"})
    .SetKernelFn(PD_KERNEL(GroupNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(GroupNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(GroupNormDtype));

PD_BUILD_OP(pmx_linear)
    .Inputs({"X", "Weight", paddle::Optional("Scale")})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearDtype));

PD_BUILD_OP(pmx_masked_softmax)
    .Inputs({"X", paddle::Optional("Mask")})
    .Outputs({"Out"})
    .Attrs({"scale: float"})
    .SetInplaceMap({{"X", "Out"}})
    .SetKernelFn(PD_KERNEL(MaskedSoftmaxForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MaskedSoftmaxShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MaskedSoftmaxDtype));

PD_BUILD_OP(pmx_rms_norm)
    .Inputs({"X", "Weight"})
    .Outputs({"Out"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RmsNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RmsNormDtype));

PD_BUILD_OP(pmx_rms_norm_grad)
    .Inputs({"X", "Weight", "Dy"})
    .Outputs({"Dx", "Dweight"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNormGradForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RmsNormGradShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RmsNormGradDtype));

PD_BUILD_OP(pmx_rotary_embedding)
    .Inputs({"Q", "K", "PositionIds", "InvFreq"})
    .Outputs({"QOut", "KOut"})
    .SetKernelFn(PD_KERNEL(RotaryForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RotaryShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RotaryDtype));

PD_BUILD_OP(pmx_softmax_xent)
    .Inputs({"Logits", "Targets"})
    .Outputs({"Loss", "LogitsOut"})
    .SetInplaceMap({{"Logits", "LogitsOut"}})
    .SetKernelFn(PD_KERNEL(SoftmaxXentForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SoftmaxXentShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SoftmaxXentDtype));

PD_BUILD_OP(pmx_vq_nearest)
    .Inputs({"Latents", "Codebook"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(VqNearestForward))
    .SetInferShapeFn(PD_INFER_SHAPE(VqNearestShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(VqNearestDtype));
