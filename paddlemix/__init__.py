"""paddlemix: a PaddlePaddle model zoo (Emu3: vision tokenizer, text-to-image, visual question answering)."""

from ._cpu_tuning import keep_freed_memory, set_cpu_threads, tune_mkl_for_amd  # noqa: F401

tune_mkl_for_amd()
keep_freed_memory()

__version__ = "0.1.0"
