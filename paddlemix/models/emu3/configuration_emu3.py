"""Configuration of the Emu3 language model (``llm/config.json``, model_type ``Emu3``)."""

from ..configuration_utils import PretrainedConfig

# transformers' "-hf" port keeps the special ids in the tokenizer's vocabulary map, not in the text config
_HF_VOCAB_TOKENS = {
    "img_token_id": "<|image token|>",
    "boi_token_id": "<|image start|>",
    "eoi_token_id": "<|image end|>",
    "eol_token_id": "<|extra_200|>",
    "eof_token_id": "<|extra_201|>",
}
_HF_ACCEPTED_DEFAULTS = {"mlp_bias": False, "attention_bias": False}


class Emu3Config(PretrainedConfig):
    """The Emu3 decoder: a Llama-style causal LM over text, special and visual tokens. Defaults are Emu3-8B's."""

    model_type = "Emu3"
    model_type_aliases = ("emu3",)
    # tensor parallelism (``models/tensor_parallel.py``): how the decoder's sublayers split over ranks; heads are
    # split whole, the vocabulary unevenly when the degree does not divide it
    base_model_tp_plan = {
        "embed_tokens": "vocab",
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    # set by from_pretrained(tensor_parallel_degree=, tensor_parallel_rank=) on the loaded model's config (PaddleNLP's
    # names); not saved
    tensor_parallel_degree = 1
    tensor_parallel_rank = 0

    def __init__(
        self,
        vocab_size=184622,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=9216,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        use_cache=True,
        pad_token_id=151643,
        bos_token_id=151849,
        eos_token_id=151850,
        img_token_id=151851,
        boi_token_id=151852,
        eoi_token_id=151853,
        eol_token_id=151846,
        eof_token_id=151847,
        image_area=720 * 720,
        pretraining_tp=1,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_dropout=0.1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.img_token_id = img_token_id
        self.boi_token_id = boi_token_id
        self.eoi_token_id = eoi_token_id
        self.eol_token_id = eol_token_id
        self.eof_token_id = eof_token_id
        self.image_area = image_area
        self.pretraining_tp = pretraining_tp
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_dropout = attention_dropout
        super().__init__(**kwargs)
        self.validate()

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def first_visual_token_id(self):
        """Visual tokens follow ``<|image end|>`` and fill the rest of the vocabulary (151854..184621 for Emu3)."""
        return self.eoi_token_id + 1

    def validate(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "pretraining_tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Emu3Config.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"the head dimension {self.head_dim} must be even for rotary embeddings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act not in ("silu", "gelu", "relu"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (use silu, gelu or relu)")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError("rms_norm_eps and rope_theta must be positive")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "img_token_id", "boi_token_id",
                     "eoi_token_id", "eol_token_id", "eof_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"Emu3Config.{name} = {value!r} is not an id in the vocabulary of {self.vocab_size}")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not isinstance(rs, dict) or set(rs) != {"type", "factor"}:
                raise ValueError(f"rope_scaling must be null or {{'type': 'linear'|'dynamic', 'factor': f}}, got {rs!r}")
            if rs["type"] not in ("linear", "dynamic"):
                raise ValueError(f"rope_scaling type must be 'linear' or 'dynamic', got {rs['type']!r}")
            if not isinstance(rs["factor"], float) or rs["factor"] <= 1.0:
                raise ValueError(f"rope_scaling factor must be a float > 1, got {rs['factor']!r}")

    @classmethod
    def _normalize_dict(cls, d):
        """Accept transformers' ``-hf`` layouts: model_type "emu3" with text_config, vq_config and vocabulary_map, or
        a bare text config (model_type "emu3_text_model"); RoPE as rope_theta/rope_scaling (4.x) or rope_parameters
        (5.x). Such configs carry no image_area: it keeps the default 518400 (Emu3-Gen's 720 x 720, also
        transformers' processor default) unless given, e.g. ``Emu3Config.from_pretrained(path, image_area=...)``."""
        if "text_config" in d:
            text = dict(d["text_config"] or {})
        elif d.get("model_type") == "emu3_text_model":
            text = d
        else:
            return d
        vocab = d.get("vocabulary_map") or {}
        out = {"model_type": cls.model_type}
        fields = set(cls.field_names())
        for key, value in text.items():
            if key in _HF_ACCEPTED_DEFAULTS:
                if value != _HF_ACCEPTED_DEFAULTS[key]:
                    raise ValueError(f"text_config.{key}={value!r} is not supported by Emu3 (it has no biases)")
            elif key in fields:  # other keys are transformers' generic bookkeeping (architectures, dtype, ...)
                out[key] = value
        rs = out.get("rope_scaling")
        params = text.get("rope_parameters")
        if isinstance(params, dict):
            if "rope_theta" in params:
                out["rope_theta"] = params["rope_theta"]
            rs = params
        if isinstance(rs, dict):
            kind = rs.get("rope_type", rs.get("type"))
            if kind in (None, "default"):
                out["rope_scaling"] = None
            elif kind in ("linear", "dynamic"):
                out["rope_scaling"] = {"type": kind, "factor": float(rs["factor"])}
            else:
                raise ValueError(f"rope_scaling type {kind!r} of the -hf config is not supported by Emu3")
        for field, token in _HF_VOCAB_TOKENS.items():
            if token in vocab:
                out[field] = int(vocab[token])
        if "image_area" in d:
            out["image_area"] = d["image_area"]
        return out
