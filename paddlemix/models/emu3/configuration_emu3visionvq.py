"""Configuration of the Emu3 VQ vision tokenizer (``config.json`` of ``BAAI/Emu3-VisionTokenizer``)."""

from ..configuration_utils import PretrainedConfig

# transformers' Emu3VQVAEConfig (model_type "emu3_vqgan") field -> our (original) field
_HF_FIELD_NAMES = {
    "latent_channels": "z_channels",
    "double_latent": "double_z",
    "base_channels": "ch",
    "channel_multiplier": "ch_mult",
}
# transformers-only fields that describe its attention layout; checked in _normalize_dict, not stored
_HF_ATTENTION_FIELDS = ("hidden_size", "num_attention_heads", "attention_dropout")


class Emu3VisionVQConfig(PretrainedConfig):
    """Every field of the original ``config.json``, with the defaults of ``BAAI/Emu3-VisionTokenizer``.

    Args:
        codebook_size: number of codebook entries (visual tokens).
        embed_dim: channels of a codebook entry; must equal ``z_channels`` (the decoder stacks z and zq).
        z_channels: channels of the encoder output latent.
        double_z: whether the encoder outputs 2 * z_channels (always false for Emu3).
        in_channels / out_channels: image channels.
        temporal_downsample_factor: frames per latent frame (a power of two).
        ch: base channel count; ``ch * m`` for every ``m`` in ``ch_mult`` must be a multiple of 32 (GroupNorm).
        ch_mult: channel multiplier per resolution level; the spatial factor is ``2 ** (len(ch_mult) - 1)``.
        num_res_blocks: residual blocks per level (and temporal residual blocks).
        attn_resolutions: the levels (indices into ch_mult) that have attention blocks.
        dropout: dropout probability (inactive at inference).
    """

    model_type = "Emu3VisionVQ"
    model_type_aliases = ("emu3_vqgan",)

    def __init__(
        self,
        codebook_size=32768,
        embed_dim=4,
        z_channels=4,
        double_z=False,
        in_channels=3,
        out_channels=3,
        temporal_downsample_factor=4,
        ch=256,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(3,),
        dropout=0.0,
        **kwargs,
    ):
        self.codebook_size = int(codebook_size)
        self.embed_dim = int(embed_dim)
        self.z_channels = int(z_channels)
        self.double_z = bool(double_z)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.temporal_downsample_factor = int(temporal_downsample_factor)
        self.ch = int(ch)
        self.ch_mult = [int(m) for m in ch_mult]
        self.num_res_blocks = int(num_res_blocks)
        self.attn_resolutions = [int(r) for r in attn_resolutions]
        self.dropout = float(dropout)
        super().__init__(**kwargs)
        self.validate()

    @property
    def spatial_factor(self):
        """Pixels per code along height and width."""
        return 2 ** (len(self.ch_mult) - 1)

    def validate(self):
        problems = []
        for name in ("codebook_size", "embed_dim", "z_channels", "in_channels", "out_channels", "ch"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim != self.z_channels:
            problems.append(
                f"embed_dim ({self.embed_dim}) must equal z_channels ({self.z_channels}): the decoder runs the "
                "latent and the quantized latent through the same temporal blocks"
            )
        if self.double_z:
            problems.append("double_z=true is not supported: the Emu3 decoder expects z_channels latent channels")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            problems.append(f"ch_mult must be a non-empty list of positive integers, got {self.ch_mult}")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32 != 0]
        if bad:
            problems.append(f"every channel count ch * ch_mult[i] must be a multiple of 32 (GroupNorm(32)); got {bad}")
        factor = self.temporal_downsample_factor
        if factor < 1 or factor & (factor - 1):
            problems.append(f"temporal_downsample_factor must be a power of two, got {factor}")
        if self.num_res_blocks < 1:
            problems.append(f"num_res_blocks must be at least 1, got {self.num_res_blocks}")
        outside = [r for r in self.attn_resolutions if not 0 <= r < len(self.ch_mult)]
        if outside:
            problems.append(f"attn_resolutions {outside} name no level of ch_mult (0..{len(self.ch_mult) - 1})")
        if problems:
            raise ValueError("invalid Emu3VisionVQConfig: " + "; ".join(problems))

    @classmethod
    def _normalize_dict(cls, d):
        """Accept transformers' ``emu3_vqgan`` layout (and a full ``emu3`` config's ``vq_config``)."""
        if d.get("model_type") == "emu3" and isinstance(d.get("vq_config"), dict):
            d = dict(d["vq_config"], model_type="emu3_vqgan")
        if d.get("model_type") != "emu3_vqgan":
            return d
        d = dict(d)
        heads = d.pop("num_attention_heads", 1)
        if heads != 1:
            raise ValueError(
                f"num_attention_heads={heads}: the Emu3 vision tokenizer's attention has exactly one head"
            )
        for name in _HF_ATTENTION_FIELDS:
            d.pop(name, None)
        for hf_name, name in _HF_FIELD_NAMES.items():
            if hf_name in d:
                d[name] = d.pop(hf_name)
        return d

    def to_dict(self):
        d = super().to_dict()
        d["architectures"] = ["Emu3VisionVQModel"]
        return d
