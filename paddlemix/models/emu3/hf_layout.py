"""Which files make up an Emu3 model: transformers' one ``-hf`` folder, or the original BAAI repos.

transformers' hub repos ``BAAI/Emu3-Gen-hf`` / ``BAAI/Emu3-Chat-hf`` hold everything in one folder: ``config.json``
(model_type ``emu3`` with a nested ``text_config`` and ``vq_config``), ``model.safetensors`` (keys
``text_model.*`` and ``vqmodel.*``), ``tokenizer.json`` and ``processor_config.json``. Each class loads its part
from that folder (``Emu3ForCausalLM``, ``Emu3VisionVQModel``, ``Emu3VisionVQImageProcessor``, ``Emu3Tokenizer``,
``Emu3Processor``), so the example scripts need only ``--model_path``.

The original layout splits the model into the LM repo (``BAAI/Emu3-Gen``: LM weights and ``emu3.tiktoken``) and
the vision tokenizer repo (``BAAI/Emu3-VisionTokenizer``).

An ``-hf`` config carries no ``image_area`` (the pixel area of a generated image): ``Emu3Config`` then keeps its
default 518400 (720 x 720, Emu3-Gen's value and transformers' processor default); pass ``image_area`` explicitly
for a model trained with another area.
"""

import os

from ..configuration_utils import CONFIG_NAME, read_json_object, resolve_model_dir

DEFAULT_VQ_MODEL = "BAAI/Emu3-VisionTokenizer"
HF_MODEL_TYPE = "emu3"


def is_hf_folder(path):
    """Whether ``path`` is a local folder in transformers' ``-hf`` layout (its config.json has model_type "emu3"
    and a ``vq_config``)."""
    config = os.path.join(os.path.expanduser(str(path)), CONFIG_NAME)
    if not os.path.isfile(config):
        return False
    d = read_json_object(config)
    return d.get("model_type") == HF_MODEL_TYPE and isinstance(d.get("vq_config"), dict)


def resolve_model_paths(model_path, vq_model_path=None, tokenizer_path=None):
    """``(vq_model_path, tokenizer_path)`` with their defaults filled in.

    For an ``-hf`` folder (or a hub id of one, downloaded here) both default to ``model_path``; otherwise the vision
    tokenizer defaults to ``BAAI/Emu3-VisionTokenizer`` and the tokenizer to ``model_path``.
    """
    if vq_model_path is None:
        vq_model_path = model_path if is_hf_folder(resolve_model_dir(model_path)) else DEFAULT_VQ_MODEL
    return vq_model_path, tokenizer_path or model_path
