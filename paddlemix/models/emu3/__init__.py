from .chat_session import ChatSession
from .configuration_emu3 import Emu3Config
from .configuration_emu3visionvq import Emu3VisionVQConfig
from .image_processing_emu3visionvq import Emu3VisionVQImageProcessor, smart_resize
from .modeling_emu3 import Emu3ForCausalLM, Emu3KVCache, Emu3Model
from .modeling_emu3visionvq import Emu3VisionVQModel
from .processing_emu3 import Emu3Processor
from .streaming import TextIteratorStreamer, TextStreamer
from .token_ids import check_token_ids
from .tokenization_emu3 import Emu3Tokenizer

__all__ = [
    "ChatSession",
    "Emu3Config",
    "Emu3ForCausalLM",
    "Emu3KVCache",
    "Emu3Model",
    "Emu3Processor",
    "Emu3Tokenizer",
    "Emu3VisionVQConfig",
    "Emu3VisionVQImageProcessor",
    "Emu3VisionVQModel",
    "TextIteratorStreamer",
    "TextStreamer",
    "check_token_ids",
    "smart_resize",
]
