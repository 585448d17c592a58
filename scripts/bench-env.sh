#!/usr/bin/env bash
# Creates .venv-bench with the Python stack the benchmarks compare against (CPU PyTorch,
# transformers, peft) and the official openai SDK that drives temper. PyPI's torch wheel
# declares the CUDA runtime packages as dependencies; they are installed but unused on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
. .venv-bench/bin/activate
pip install --quiet torch==2.15.0 transformers==5.23.0 accelerate peft openai safetensors numpy httpx
python -c "import torch, transformers, openai; print('torch', torch.__version__, 'transformers', transformers.__version__, 'openai', openai.__version__)"
