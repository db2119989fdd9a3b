"""paddlemix: a PaddlePaddle model zoo (Emu3: vision tokenizer, text-to-image, visual question answering)."""

from ._cpu_tuning import tune_mkl_for_amd

tune_mkl_for_amd()

__version__ = "0.1.0"
