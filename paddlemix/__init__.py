"""paddlemix: a PaddlePaddle model zoo (Emu3: vision tokenizer, text-to-image, visual question answering)."""

import warnings

# Importing Paddle warns "No ccache found" on machines without ccache: a note about compiling C++ extensions, which
# paddlemix never does at run time. Hidden here, before Paddle's first import, so that the scripts print no warning.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from ._cpu_tuning import keep_freed_memory, set_cpu_threads, tune_mkl_for_amd  # noqa: E402, F401

tune_mkl_for_amd()
keep_freed_memory()

__version__ = "0.1.0"
