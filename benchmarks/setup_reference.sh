#!/usr/bin/env bash
# Create the reference environment for the benchmarks: PyTorch (CPU) + transformers' Emu3 port.
# It lives in benchmarks/.ref_venv (git-ignored) and is never a dependency of the package.
# Usage: bash benchmarks/setup_reference.sh [PYTHON]   (PYTHON defaults to python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.ref_venv"
python="${1:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# torch 2.13.0 CPU: a local wheel directory (/opt/wheels on the benchmark machine) is used when present.
find_links=()
if [ -d /opt/wheels ]; then
    find_links=(--find-links /opt/wheels)
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${find_links[@]}" "torch==2.13.0" "transformers>=4.48" safetensors numpy
"$venv/bin/python" - <<'PY'
import torch, transformers
from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3VQVAE  # noqa: F401
print(f"reference venv ready: torch {torch.__version__}, transformers {transformers.__version__}")
PY
