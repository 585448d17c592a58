#!/usr/bin/env bash
# Creates .venv-bench (git-ignored) with the Python side of the benchmarks: the official
# openai SDK that drives temper, and the reference stack (CPU PyTorch, transformers, peft,
# TRL for the DPO reference, datasets which TRL's trainers take their data as, seqeval for the
# NER reference's entity-level F1, timm for the image-classification reference and the vision
# parity fixtures: its ResNet / EfficientNet-Lite0 are the layouts temper's vision models load).
#
#   scripts/bench-env.sh          # idempotent; re-running only installs what is missing
#
# About torch: the only registry reachable here is PyPI, and PyPI's Linux x86_64 torch wheel
# is the CUDA build. Its libtorch_cuda.so / libtorch_cpu.so / libtorch_global_deps.so list
# libcudart, libcublas, libcudnn, libnccl, libcupti, ... as DT_NEEDED, so `import torch` fails
# ("libcublasLt.so.*[0-9] not found") when installed with --no-deps and without the
# nvidia-* wheels; no CPU-only x86_64 torch exists on PyPI (the +cpu builds live on PyTorch's
# own index, which is not reachable). So this installs the PyPI wheel with its nvidia-*
# dependencies (about 4 GB more disk, 5.6 GB venv in all); they are only loaded, never used:
# the reference runs on CPU (`use_cpu=True`), and torch.cuda.is_available() is False here.
# On a machine that can reach download.pytorch.org, set TORCH_INDEX_URL to its /whl/cpu index
# to get the ~200 MB CPU build instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  torch==2.15.0
  transformers==5.23.0
  tokenizers==0.23.3
  safetensors==0.8.0
  accelerate==1.15.0
  peft==0.21.2
  numpy==2.4.6
  openai==3.54.0
  httpx==0.28.1
  gguf==0.19.0
  trl==1.16.0
  datasets==5.2.0
  pandas==3.1.1
  pyarrow==26.0.1
  seqeval==1.2.2
  scikit-learn==1.9.1
  # timm 1.0.31 needs torchvision (its data transforms) and pillow; pinned here because timm
  # leaves them open. torchvision 0.29.2 is the newest on PyPI and accepts torch>=2.14.
  timm==1.0.31
  torchvision==0.29.2
  pillow==13.0.0
)

[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
PY=.venv-bench/bin/python
# pip's --dry-run says "Would install ..." only when something is missing (not under --quiet).
if ! "$PY" -m pip install --disable-pip-version-check --dry-run "${PACKAGES[@]}" 2>/dev/null \
    | grep -q '^Would install'; then
  echo ".venv-bench already has ${PACKAGES[*]}"
else
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install --quiet --index-url "$TORCH_INDEX_URL" torch==2.15.0
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
fi
"$PY" -c "import torch, transformers, openai, peft, accelerate, gguf, trl, datasets, seqeval, timm; print('torch', torch.__version__, 'cuda available', torch.cuda.is_available(), 'threads', torch.get_num_threads(), '| transformers', transformers.__version__, '| openai', openai.__version__, '| peft', peft.__version__, '| trl', trl.__version__, '| datasets', datasets.__version__, '| timm', timm.__version__)"
# temper's side: its CPU matrix products run on OpenBLAS when the machine has it (README,
# "Configuration"); the published figures are with it. Installed where apt-get can.
if ! ldconfig -p | grep -q 'libopenblas\.so\.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0 >/dev/null; } \
    || echo "warning: could not install libopenblas0; the products run on the gemm crate" >&2
  else
    echo "warning: no libopenblas.so.0; temper's products will run on the gemm crate (apt-get install libopenblas0)" >&2
  fi
fi
