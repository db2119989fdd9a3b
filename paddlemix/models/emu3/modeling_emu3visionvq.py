"""The Emu3 VQ vision tokenizer (MoVQ-style encoder/decoder with causal temporal blocks) in Paddle.

Parameter names are the original ``state_dict()`` keys of ``baaivision/Emu3``'s ``Emu3VisionVQModel``
(``encoder.down.3.attn.0.q.weight``, ``decoder.up.0.block.1.norm1.conv_y.bias``,
``encoder.time_res_stack.0.norm1.running_var``, ``quantize.embedding.weight``), so original checkpoints load as they
are. The computation is the original's, with two exact shortcuts:

* An image is encoded by running the 2-D encoder on the one frame and repeating its latent
  ``temporal_downsample_factor`` times before the temporal blocks, instead of encoding that many identical frames.
* An image is decoded as one frame: the temporal convolutions are causal (2 frames of zero padding in front, none
  behind), so the first output frame depends only on the first latent frame, and the temporal upsampling (nearest
  repetition) can be skipped for it. The original decodes ``temporal_downsample_factor`` frames and keeps the first.

transformers' ``Emu3VQVAE`` ("-hf") checkpoints load too. Their key layout maps onto the original one as follows
(this table is the whole mapping, implemented by ``Emu3VisionVQModel._map_checkpoint_key``):

=============================================================  ===============================================
transformers ``Emu3VQVAE`` key                                  original key
=============================================================  ===============================================
``model.vqmodel.<key>`` / ``vqmodel.<key>``                     ``<key>`` (then the rules below)
``text_model.*``, ``model.text_model.*``, ``lm_head.*``         dropped (the LM of a full Emu3 -hf checkpoint)
``encoder.down_block.down.<i>.<rest>``                          ``encoder.down.<i>.<rest>``
``decoder.up_block.up.<i>.<rest>``                              ``decoder.up.<i>.<rest>``
``{encoder,decoder}.middle_block.<rest>``                       ``{encoder,decoder}.mid.<rest>``
``<level>.attn_norms.<j>.<param>``                              ``<level>.attn.<j>.norm.<param>``
``<mid>.attn_norm.<param>``                                     ``<mid>.attn_1.norm.<param>``
``<attn>.q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj``       ``<attn>.q`` / ``k`` / ``v`` / ``proj_out``
=============================================================  ===============================================

The attention projections are ``nn.Linear`` ``[C, C]`` there and 1x1 convolutions ``[C, C, 1, 1]`` here: the loader
reshapes them (size-1 axes). Every other key (convolutions, GroupNorm, SpatialNorm ``norm_layer``/``conv_y``/
``conv_b``, BatchNorm3d temporal blocks, ``time_conv.<i>.conv.conv``, ``quant_conv.conv``, ``post_quant_conv.conv``,
``quantize.embedding.weight``) is the same in both layouts.
"""

import math
import re

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from ...ops import conv2d, group_norm, vq_nearest
from ..model_utils import PretrainedModel
from .configuration_emu3visionvq import Emu3VisionVQConfig

_HF_KEY_RULES = [
    (re.compile(r"^(encoder)\.down_block\.down\."), r"\1.down."),
    (re.compile(r"^(decoder)\.up_block\.up\."), r"\1.up."),
    (re.compile(r"^(encoder|decoder)\.middle_block\."), r"\1.mid."),
    (re.compile(r"\.attn_norms\.(\d+)\."), r".attn.\1.norm."),
    (re.compile(r"\.mid\.attn_norm\."), r".mid.attn_1.norm."),
    (re.compile(r"\.q_proj\.(weight|bias)$"), r".q.\1"),
    (re.compile(r"\.k_proj\.(weight|bias)$"), r".k.\1"),
    (re.compile(r"\.v_proj\.(weight|bias)$"), r".v.\1"),
    (re.compile(r"\.out_proj\.(weight|bias)$"), r".proj_out.\1"),
]


def _group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, epsilon=1e-6)


def _norm(norm, x, zq=None, silu=False):
    """A GroupNorm or SpatialNorm layer applied to x, followed by SiLU when ``silu``, as one ``ops.group_norm``."""
    if isinstance(norm, Emu3VisionVQSpatialNorm):
        return norm(x, zq, silu=silu)
    return group_norm(x, norm.weight, norm.bias, norm._num_groups, norm._epsilon, silu=silu)


class Emu3VisionVQConv2d(nn.Conv2D):
    """``nn.Conv2D`` (same parameters and checkpoint keys) computed by ``paddlemix.ops.conv2d``: the fused CPU kernel
    when the extension is built, ``F.conv2d`` otherwise. Zero padding, no groups or dilation."""

    def forward(self, x, upsample=1):
        """upsample: convolve the nearest-neighbour upsampling of x by this integer factor (never materialised by
        the CPU kernel)."""
        return conv2d(x, self.weight, self.bias, self._stride, self._padding, upsample)


def _conv2d(cin, cout, kernel_size):
    return Emu3VisionVQConv2d(cin, cout, kernel_size, padding=kernel_size // 2)


class Emu3VisionVQCausalConv3d(nn.Layer):
    """Conv3D padded causally in time (2 frames in front, none behind) and "same"-style in space.

    The spatial padding per side is ``((k - s) // 2 + (k - s) % 2, (k - s) // 2)``; it is passed to the convolution
    itself, which pads asymmetrically without a separate padded copy of the input.
    """

    def __init__(self, in_channels, out_channels, kernel_size=(3, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        padding = [2, 0]
        for k, s in zip(kernel_size[1:], stride[1:]):
            p = k - s
            padding += [p // 2 + p % 2, p // 2]
        self.conv = nn.Conv3D(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


def repeat_interleave(x, repeats, axis):
    """``paddle.repeat_interleave(x, repeats, axis)`` for an integer ``repeats`` (each slice along ``axis`` repeated
    in place), as unsqueeze + expand + reshape, which Paddle runs in every dtype. Paddle 3.3's repeat_interleave has
    no float16 kernel (none on CPU; the GPU one came with PR #78039 on the develop branch, after release/3.3), so the
    image encode and video decode of a float16 VQ model would stop there."""
    shape = list(x.shape)
    axis = axis % len(shape)
    x = x.unsqueeze(axis + 1).expand(shape[: axis + 1] + [repeats] + shape[axis + 1:])
    shape[axis] *= repeats
    return x.reshape(shape)


def _temporal_norm(norm, x):
    """BatchNorm3D with its running statistics (eval), computed in float32 for other input dtypes.

    The temporal blocks run on the small latent, so the upcast costs little, and Paddle's half-precision
    batch_norm kernels expect float32 statistics.
    """
    if x.dtype == paddle.float32:
        return norm(x)
    f32 = [t.astype("float32") for t in (x, norm._mean, norm._variance, norm.weight, norm.bias)]
    return F.batch_norm(*f32, training=False, epsilon=norm._epsilon).astype(x.dtype)


class Emu3VisionVQResnetTemporalBlock(nn.Layer):
    """BatchNorm3D (eval statistics) -> SiLU -> causal conv, twice, plus the residual; on [B, C, T, H, W]."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = nn.BatchNorm3D(in_channels, epsilon=1e-5)
        self.conv1 = Emu3VisionVQCausalConv3d(in_channels, out_channels, (3, 3, 3))
        self.norm2 = nn.BatchNorm3D(out_channels, epsilon=1e-5)
        self.conv2 = Emu3VisionVQCausalConv3d(out_channels, out_channels, (3, 3, 3))
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv3D(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x):
        h = self.conv1(F.silu(_temporal_norm(self.norm1, x)))
        h = self.conv2(F.silu(_temporal_norm(self.norm2, h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class Emu3VisionVQTemporalDownsample(nn.Layer):
    """Causal conv with time kernel 4, stride 2: halves the number of frames."""

    def __init__(self, channels):
        super().__init__()
        self.conv = Emu3VisionVQCausalConv3d(channels, channels, (4, 3, 3), (2, 1, 1))

    def forward(self, x):
        return self.conv(x)


class Emu3VisionVQTemporalUpsample(nn.Layer):
    """Repeat every frame twice (nearest), then a causal conv.

    ``repeat=False`` skips the repetition; used for the first frame alone (images), whose causal output is the same.
    """

    def __init__(self, channels):
        super().__init__()
        self.conv = Emu3VisionVQCausalConv3d(channels, channels, (3, 3, 3))

    def forward(self, x, repeat=True):
        if repeat:
            x = repeat_interleave(x, 2, axis=2)
        return self.conv(x)


class Emu3VisionVQSpatialNorm(nn.Layer):
    """GroupNorm of x, then scaled and shifted by 1x1 convolutions of the quantized latent zq.

    zq is resized to x's size by nearest neighbour. A 1x1 convolution commutes with that resizing, so conv_y and
    conv_b run (as one convolution) on the small zq, and ``ops.group_norm`` reads their outputs through the resizing
    (together with the SiLU that follows the norm in the residual blocks, ``silu=True``).
    """

    def __init__(self, channels, zq_channels):
        super().__init__()
        self.norm_layer = _group_norm(channels)
        self.conv_y = nn.Conv2D(zq_channels, channels, 1)
        self.conv_b = nn.Conv2D(zq_channels, channels, 1)

    def forward(self, x, zq, silu=False):
        c = x.shape[1]
        weight = paddle.concat([self.conv_y.weight, self.conv_b.weight])
        bias = paddle.concat([self.conv_y.bias, self.conv_b.bias])
        scale, shift = paddle.split(conv2d(zq, weight, bias), [c, c], axis=1)
        norm = self.norm_layer
        return group_norm(x, norm.weight, norm.bias, norm._num_groups, norm._epsilon, scale, shift, silu)


class Emu3VisionVQResnetBlock(nn.Layer):
    """norm -> SiLU -> 3x3 conv, twice, plus the residual (1x1 ``nin_shortcut`` when channels change).

    The norm is GroupNorm(32) in the encoder and SpatialNorm conditioned on zq (``zq_channels``) in the decoder.
    """

    def __init__(self, in_channels, out_channels, zq_channels=None):
        super().__init__()
        self.spatial = zq_channels is not None
        if self.spatial:
            self.norm1 = Emu3VisionVQSpatialNorm(in_channels, zq_channels)
            self.norm2 = Emu3VisionVQSpatialNorm(out_channels, zq_channels)
        else:
            self.norm1 = _group_norm(in_channels)
            self.norm2 = _group_norm(out_channels)
        self.conv1 = _conv2d(in_channels, out_channels, 3)
        self.conv2 = _conv2d(out_channels, out_channels, 3)
        self.nin_shortcut = Emu3VisionVQConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, zq=None):
        h = self.conv1(_norm(self.norm1, x, zq, silu=True))
        h = self.conv2(_norm(self.norm2, h, zq, silu=True))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class Emu3VisionVQAttnBlock(nn.Layer):
    """Single-head self-attention over the pixels of a feature map; q, k, v, proj_out are 1x1 convolutions.

    The three input projections run as one matrix product over the pixel tokens.
    """

    def __init__(self, channels, zq_channels=None):
        super().__init__()
        self.spatial = zq_channels is not None
        self.norm = Emu3VisionVQSpatialNorm(channels, zq_channels) if self.spatial else _group_norm(channels)
        self.q = nn.Conv2D(channels, channels, 1)
        self.k = nn.Conv2D(channels, channels, 1)
        self.v = nn.Conv2D(channels, channels, 1)
        self.proj_out = nn.Conv2D(channels, channels, 1)

    def forward(self, x, zq=None):
        n, c, height, width = x.shape
        normed = _norm(self.norm, x, zq)
        tokens = normed.reshape([n, c, height * width]).transpose([0, 2, 1])
        weight = paddle.concat([self.q.weight, self.k.weight, self.v.weight]).reshape([3 * c, c])
        bias = paddle.concat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = paddle.split(paddle.matmul(tokens, weight, transpose_y=True) + bias, 3, axis=-1)
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(c)
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(v.dtype)
        out = paddle.matmul(paddle.matmul(probs, v), self.proj_out.weight.reshape([c, c]), transpose_y=True)
        out = out + self.proj_out.bias
        return x + out.transpose([0, 2, 1]).reshape([n, c, height, width])


class Emu3VisionVQDownsample(nn.Layer):
    """Stride-2 3x3 conv after zero padding the right column and the bottom row only."""

    def __init__(self, channels):
        super().__init__()
        self.conv = Emu3VisionVQConv2d(channels, channels, 3, stride=2, padding=[0, 1, 0, 1])

    def forward(self, x):
        return self.conv(x)


class Emu3VisionVQUpsample(nn.Layer):
    """Nearest 2x upsampling, then a 3x3 conv (one op: the conv reads its input through the upsampling)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = _conv2d(channels, channels, 3)

    def forward(self, x):
        return self.conv(x, upsample=2)


class Emu3VisionVQLevel(nn.Layer):
    """One resolution level: residual blocks, an attention block after each (if the level has attention), resampling."""

    def __init__(self, blocks, attns, resample):
        super().__init__()
        self.block = nn.LayerList(blocks)
        self.attn = nn.LayerList(attns)
        if isinstance(resample, Emu3VisionVQDownsample):
            self.downsample = resample
        elif isinstance(resample, Emu3VisionVQUpsample):
            self.upsample = resample

    def forward(self, h, zq=None):
        args = () if zq is None else (zq,)
        for i, block in enumerate(self.block):
            h = block(h, *args)
            if len(self.attn) > 0:
                h = self.attn[i](h, *args)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


class Emu3VisionVQMid(nn.Layer):
    def __init__(self, channels, zq_channels=None):
        super().__init__()
        self.block_1 = Emu3VisionVQResnetBlock(channels, channels, zq_channels)
        self.attn_1 = Emu3VisionVQAttnBlock(channels, zq_channels)
        self.block_2 = Emu3VisionVQResnetBlock(channels, channels, zq_channels)

    def forward(self, h, zq=None):
        args = () if zq is None else (zq,)
        return self.block_2(self.attn_1(self.block_1(h, *args), *args), *args)


class Emu3VisionVQEncoder(nn.Layer):
    def __init__(self, config):
        super().__init__()
        ch, ch_mult = config.ch, config.ch_mult
        self.conv_in = _conv2d(config.in_channels, ch, 3)
        levels = []
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attns = [], []
            for _ in range(config.num_res_blocks):
                blocks.append(Emu3VisionVQResnetBlock(block_in, block_out))
                block_in = block_out
                if i in config.attn_resolutions:
                    attns.append(Emu3VisionVQAttnBlock(block_in))
            resample = Emu3VisionVQDownsample(block_in) if i != len(ch_mult) - 1 else None
            levels.append(Emu3VisionVQLevel(blocks, attns, resample))
        self.down = nn.LayerList(levels)
        self.mid = Emu3VisionVQMid(block_in)
        self.norm_out = _group_norm(block_in)
        z = config.z_channels
        self.conv_out = _conv2d(block_in, z, 3)
        n_time = int(math.log2(config.temporal_downsample_factor))
        self.time_conv = nn.LayerList([Emu3VisionVQTemporalDownsample(z) for _ in range(n_time)])
        blocks = [Emu3VisionVQResnetTemporalBlock(z, z) for _ in range(config.num_res_blocks)]
        self.time_res_stack = nn.LayerList(blocks)

    def encode_frames(self, frames):
        """The per-frame 2-D encoder: [N, C, H, W] -> [N, z, H/f, W/f]."""
        h = self.conv_in(frames)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_norm(self.norm_out, h, silu=True))

    def forward(self, frames, batch_size, time_repeat=1, frames_per_pass=None):
        """frames [B*T, C, H, W] (batch-major) -> latent [B, z, T * time_repeat / factor, H/f, W/f].

        ``time_repeat`` repeats every frame's 2-D latent that many times before the temporal blocks (an image is
        encoded as ``temporal_downsample_factor`` identical frames, without running the 2-D encoder on each).
        ``frames_per_pass`` bounds how many frames go through the 2-D encoder at once (activation memory).
        """
        step = frames_per_pass or frames.shape[0]
        h = paddle.concat([self.encode_frames(frames[i : i + step]) for i in range(0, frames.shape[0], step)])
        _, c, height, width = h.shape
        h = h.reshape([batch_size, -1, c, height, width]).transpose([0, 2, 1, 3, 4])
        if time_repeat > 1:
            h = repeat_interleave(h, time_repeat, axis=2)
        for conv in self.time_conv:
            h = F.silu(conv(h))
        for block in self.time_res_stack:
            h = block(h)
        return h


class Emu3VisionVQDecoder(nn.Layer):
    def __init__(self, config):
        super().__init__()
        ch, ch_mult, z = config.ch, config.ch_mult, config.z_channels
        zq_ch = config.embed_dim
        blocks = [Emu3VisionVQResnetTemporalBlock(z, z) for _ in range(config.num_res_blocks)]
        self.time_res_stack = nn.LayerList(blocks)
        n_time = int(math.log2(config.temporal_downsample_factor))
        self.time_conv = nn.LayerList([Emu3VisionVQTemporalUpsample(z) for _ in range(n_time)])
        block_in = ch * ch_mult[-1]
        self.conv_in = _conv2d(z, block_in, 3)
        self.mid = Emu3VisionVQMid(block_in, zq_ch)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks, attns = [], []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(Emu3VisionVQResnetBlock(block_in, block_out, zq_ch))
                block_in = block_out
                if i in config.attn_resolutions:
                    attns.append(Emu3VisionVQAttnBlock(block_in, zq_ch))
            levels[i] = Emu3VisionVQLevel(blocks, attns, Emu3VisionVQUpsample(block_in) if i != 0 else None)
        self.up = nn.LayerList(levels)
        self.norm_out = Emu3VisionVQSpatialNorm(block_in, zq_ch)
        self.conv_out = _conv2d(block_in, config.out_channels, 3)

    def decode_frames(self, h, zq):
        """The per-frame 2-D decoder: latent frames [N, z, h, w] conditioned on zq [N, C, h, w] -> [N, 3, H, W]."""
        h = self.conv_in(h)
        h = self.mid(h, zq)
        for level in reversed(self.up):
            h = level(h, zq)
        return self.conv_out(_norm(self.norm_out, h, zq, silu=True))

    def forward(self, z, zq, first_frame_only=False, frames_per_pass=None):
        """z (post_quant_conv output) and zq (codebook vectors), both [B, C, t, h, w] -> frames [B*T, 3, H, W].

        T = t * factor, or 1 with ``first_frame_only`` (t must be 1 then): the first of the original's frames.
        ``frames_per_pass`` bounds how many frames go through the 2-D decoder at once (activation memory).
        """
        batch_size = z.shape[0]
        h = paddle.concat([z, zq], axis=0)
        for block in self.time_res_stack:
            h = block(h)
        for conv in self.time_conv:
            h = F.silu(conv(h, repeat=not first_frame_only))
        c, frames, height, width = h.shape[1:]
        h = h.transpose([0, 2, 1, 3, 4]).reshape([2 * batch_size * frames, c, height, width])
        h, zq = paddle.split(h, 2, axis=0)
        n = h.shape[0]
        step = frames_per_pass or n
        return paddle.concat([self.decode_frames(h[i : i + step], zq[i : i + step]) for i in range(0, n, step)])


class Emu3VisionVQVectorQuantizer(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.embed_dim)

    def forward(self, latent):
        """latent [B, t, C, h, w] -> codes [B, t, h, w] int64 (nearest codebook row, squared L2)."""
        b, t, c, h, w = latent.shape
        flat = latent.transpose([0, 1, 3, 4, 2]).reshape([-1, c])
        return vq_nearest(flat, self.embedding.weight).reshape([b, t, h, w])


class Emu3VisionVQModel(PretrainedModel):
    """Emu3 vision tokenizer: images/videos <-> grids of codebook indices.

    * ``encode(pixel_values)``: ``[B, 3, H, W]`` -> codes ``[B, H/f, W/f]``; ``[B, T, 3, H, W]`` (T a multiple of
      ``temporal_downsample_factor``) -> ``[B, T/factor, H/f, W/f]``; int64, f = ``config.spatial_factor``.
    * ``decode(codes)``: ``[B, h, w]`` -> images ``[B, 3, h*f, w*f]``; ``[B, t, h, w]`` -> video
      ``[B, t*factor, 3, h*f, w*f]``.
    * ``encode_to_latent(pixel_values)``: the latent that enters the quantizer, ``[B, t, embed_dim, h, w]``
      (t = 1 for images).
    """

    config_class = Emu3VisionVQConfig
    # frames (images, or video frames) that go through the 2-D encoder/decoder at once; the frames are independent
    # there, so this only bounds activation memory (None: all at once)
    frames_per_pass = 4

    def __init__(self, config):
        super().__init__(config)
        self.encoder = Emu3VisionVQEncoder(config)
        self.decoder = Emu3VisionVQDecoder(config)
        self.quantize = Emu3VisionVQVectorQuantizer(config)
        self.quant_conv = Emu3VisionVQCausalConv3d(config.z_channels, config.embed_dim)
        self.post_quant_conv = Emu3VisionVQCausalConv3d(config.embed_dim, config.z_channels)
        self.spatial_scale_factor = config.spatial_factor

    @classmethod
    def _map_checkpoint_key(cls, key):
        """Original keys pass unchanged; transformers ``Emu3VQVAE`` keys follow the table in the module docstring."""
        for prefix in ("model.vqmodel.", "vqmodel."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            if key.startswith(("text_model.", "model.text_model.", "lm_head.")):
                return None
        for pattern, replacement in _HF_KEY_RULES:
            key = pattern.sub(replacement, key)
        return key

    @property
    def dtype(self):
        return self.quantize.embedding.weight.dtype

    # ------------------------------------------------------------------ input checks
    def _pixels(self, pixel_values):
        if isinstance(pixel_values, np.ndarray):
            pixel_values = paddle.to_tensor(pixel_values)
        if not isinstance(pixel_values, paddle.Tensor):
            raise TypeError(f"pixel_values must be a paddle.Tensor or numpy array, got {type(pixel_values).__name__}")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point (normalized pixels), got {pixel_values.dtype}")
        shape = list(pixel_values.shape)
        if len(shape) not in (4, 5):
            raise ValueError(
                f"pixel_values must be [B, C, H, W] (images) or [B, T, C, H, W] (video), got shape {shape}"
            )
        config = self.config
        c, height, width = shape[-3:]
        if c != config.in_channels:
            raise ValueError(f"pixel_values have {c} channels at axis {len(shape) - 3}, expected {config.in_channels}")
        f = config.spatial_factor
        if height < f or width < f or height % f or width % f:
            raise ValueError(
                f"height and width must be positive multiples of the spatial factor {f}, got {height}x{width}"
            )
        if len(shape) == 5 and (shape[1] == 0 or shape[1] % config.temporal_downsample_factor):
            raise ValueError(
                f"the number of frames T={shape[1]} must be a positive multiple of "
                f"temporal_downsample_factor={config.temporal_downsample_factor}"
            )
        if shape[0] == 0:
            raise ValueError("pixel_values has an empty batch")
        if not bool(paddle.isfinite(pixel_values).all()):
            raise ValueError("pixel_values hold NaN or infinite values")
        return pixel_values.astype(self.dtype) if pixel_values.dtype != self.dtype else pixel_values

    def _codes(self, codes):
        if isinstance(codes, np.ndarray):
            codes = paddle.to_tensor(codes)
        if not isinstance(codes, paddle.Tensor):
            raise TypeError(f"codes must be a paddle.Tensor or numpy array, got {type(codes).__name__}")
        if codes.dtype not in (paddle.int64, paddle.int32, paddle.int16, paddle.int8, paddle.uint8):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        shape = list(codes.shape)
        if len(shape) not in (3, 4) or 0 in shape:
            raise ValueError(f"codes must be [B, h, w] (images) or [B, t, h, w] (video), got shape {shape}")
        lo, hi = int(codes.min()), int(codes.max())
        size = self.config.codebook_size
        if lo < 0 or hi >= size:
            raise ValueError(f"codes must lie in [0, {size}) (codebook_size), got values in [{lo}, {hi}]")
        return codes.astype("int64")

    # ------------------------------------------------------------------ API
    @paddle.no_grad()
    def encode_to_latent(self, pixel_values):
        """The pre-quantisation latent ``[B, t, embed_dim, h, w]`` of images ``[B,3,H,W]`` (t=1) or video."""
        x = self._pixels(pixel_values)
        factor = self.config.temporal_downsample_factor
        if x.ndim == 4:
            h = self.encoder(x, x.shape[0], time_repeat=factor, frames_per_pass=self.frames_per_pass)
        else:
            b, t = x.shape[:2]
            h = self.encoder(x.reshape([b * t] + list(x.shape[2:])), b, frames_per_pass=self.frames_per_pass)
        return self.quant_conv(h).transpose([0, 2, 1, 3, 4])

    @paddle.no_grad()
    def quantize_latent(self, latent):
        """Codebook indices ``[B, t, h, w]`` (int64) of a latent ``[B, t, embed_dim, h, w]``."""
        return self.quantize(latent)

    @paddle.no_grad()
    def encode(self, pixel_values):
        """Images ``[B,3,H,W]`` -> codes ``[B,h,w]``; video ``[B,T,3,H,W]`` -> ``[B,T/factor,h,w]`` (int64)."""
        codes = self.quantize(self.encode_to_latent(pixel_values))
        return codes.squeeze(1) if pixel_values.ndim == 4 else codes

    @paddle.no_grad()
    def decode(self, codes):
        """Codes ``[B,h,w]`` -> images ``[B,3,H,W]``; ``[B,t,h,w]`` -> video ``[B,t*factor,3,H,W]``."""
        codes = self._codes(codes)
        image = codes.ndim == 3
        if image:
            codes = codes.unsqueeze(1)
        b, t, h, w = codes.shape
        quant = self.quantize.embedding(codes).transpose([0, 4, 1, 2, 3])  # [B, C, t, h, w]
        frames = self.decoder(
            self.post_quant_conv(quant), quant, first_frame_only=image, frames_per_pass=self.frames_per_pass
        )
        f = self.spatial_scale_factor
        if image:
            return frames.reshape([b, self.config.out_channels, h * f, w * f])
        return frames.reshape([b, -1, self.config.out_channels, h * f, w * f])

    @paddle.no_grad()
    def forward(self, pixel_values):
        """Reconstruction: ``decode(encode(pixel_values))``."""
        return self.decode(self.encode(pixel_values))
