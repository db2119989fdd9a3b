"""The shared config base: read and write ``config.json``, resolve a local folder or a hub repo id."""

import copy
import inspect
import json
import logging
import os

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Bookkeeping keys that transformers writes into config.json; they carry no model information.
META_KEYS = {
    "architectures",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "auto_map",
    "_name_or_path",
    "_commit_hash",
    "_from_model_config",
    "_attn_implementation_autoset",
    "paddlemix_version",
}


def resolve_model_dir(path_or_repo_id, required_file=None):
    """A local folder, or a hub repo id (``BAAI/Emu3-Gen``) downloaded with huggingface_hub.

    Raises FileNotFoundError naming the path when it is neither a folder nor a downloadable repo id.
    """
    path = os.path.expanduser(str(path_or_repo_id))
    if os.path.isdir(path):
        if required_file is not None and not os.path.isfile(os.path.join(path, required_file)):
            raise FileNotFoundError(f"{required_file} not found in {path}")
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path} is a file; pass the folder that holds {required_file or 'the model files'}")
    looks_like_repo = path.count("/") == 1 and not path.startswith((".", "/")) and all(path.split("/"))
    if not looks_like_repo:
        raise FileNotFoundError(f"no such folder: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{path} is not a local folder, and huggingface_hub is not installed to download it as a repo id"
        ) from None
    try:
        local = snapshot_download(repo_id=path)
    except Exception as e:  # network, auth, missing repo: all end in the same user-facing message
        raise FileNotFoundError(
            f"{path} is not a local folder and could not be downloaded from the hub ({type(e).__name__}: {e}). "
            "Download it on a machine that is online (huggingface-cli download REPO --local-dir DIR) and pass DIR."
        ) from None
    if required_file is not None and not os.path.isfile(os.path.join(local, required_file)):
        raise FileNotFoundError(f"{required_file} not found in the downloaded repo {path} ({local})")
    return local


def read_json_object(path):
    """The JSON object in a config file; FileNotFoundError / ValueError naming the file otherwise."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return d


def reject_unknown_fields(d, fields, ignored, owner, source):
    """ValueError listing the keys of ``d`` that are neither ``fields`` nor ``ignored`` bookkeeping keys."""
    unknown = sorted(k for k in d if k not in fields and k not in ignored)
    if unknown:
        raise ValueError(f"{source} has fields that {owner} does not know: {unknown}")


class PretrainedConfig:
    """Base for model configs. Subclasses declare every field as a keyword of ``__init__`` with its default.

    ``from_dict`` rejects fields the class does not know (a clear error naming them) and checks ``model_type``.
    """

    model_type = ""
    # other model_type values that denote the same config (e.g. the transformers port's names)
    model_type_aliases = ()
    # {"quant_type": "weight_only_int8"} for a checkpoint saved with quantized weights (models/quantization.py):
    # read and written when present, as PaddleNLP's config does, not a field of the model's architecture
    quantization_config = None

    def __init__(self, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unknown fields: {sorted(kwargs)}")

    @classmethod
    def field_names(cls):
        sig = inspect.signature(cls.__init__)
        return [
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    @classmethod
    def _normalize_dict(cls, d):
        """Hook for subclasses: turn another layout (e.g. transformers' nested config) into ours."""
        return d

    @classmethod
    def from_dict(cls, d, source="config"):
        d = cls._normalize_dict(dict(d))
        mt = d.get("model_type")
        if mt is not None and mt != cls.model_type and mt not in cls.model_type_aliases:
            raise ValueError(f"{source} has model_type '{mt}', but {cls.__name__} expects '{cls.model_type}'")
        fields = set(cls.field_names())
        quantization_config = d.pop("quantization_config", None)
        if quantization_config is not None and not isinstance(quantization_config, dict):
            raise ValueError(f"{source}: quantization_config must be an object, got {quantization_config!r}")
        reject_unknown_fields(d, fields, META_KEYS, cls.__name__, source)
        config = cls(**{k: v for k, v in d.items() if k in fields})
        if quantization_config is not None:
            config.quantization_config = quantization_config
        return config

    @classmethod
    def from_json_file(cls, path):
        return cls.from_dict(read_json_object(path), source=path)

    @classmethod
    def from_pretrained(cls, path_or_repo_id, **overrides):
        folder = resolve_model_dir(path_or_repo_id, CONFIG_NAME)
        config = cls.from_json_file(os.path.join(folder, CONFIG_NAME))
        for k, v in overrides.items():
            if k not in cls.field_names():
                raise ValueError(f"{cls.__name__} has no field '{k}'")
            setattr(config, k, v)
        return config

    def to_dict(self):
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.field_names()}
        d["model_type"] = self.model_type
        if self.quantization_config is not None:
            d["quantization_config"] = copy.deepcopy(self.quantization_config)
        return d

    def save_pretrained(self, save_dir):
        os.makedirs(save_dir, exist_ok=True)
        with open(os.path.join(save_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(self.to_dict(), sort_keys=True)}"
