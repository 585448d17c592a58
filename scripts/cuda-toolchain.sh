#!/usr/bin/env bash
# The CUDA toolchain for `--features cuda`, from PyPI, on a machine without a GPU, a driver or
# an NVIDIA apt repository. Source it, then build:
#
#   source scripts/cuda-toolchain.sh        # installs once into $TEMPER_CUDA_CACHE, exports
#   cargo build --release --features cuda
#
# Why CUDA 13.0: of NVIDIA's PyPI wheels only the CUDA 13 `nvidia-cuda-nvcc` carries the nvcc
# driver itself (the cu12 wheels, 12.0 to 12.9, ship ptxas and libnvvm alone). A CUDA 13 build
# runs on a driver of the R580 branch or newer (`nvidia-smi` prints "CUDA Version: 13.0" or
# higher); with an older driver, build in docker/Dockerfile.cuda's nvidia/cuda:12 image instead.
#
# What it exports:
#   PATH, CUDA_ROOT, CUDA_PATH, CUDA_HOME   the toolkit (nvcc, cicc, headers, libraries)
#   CUDA_COMPUTE_CAP                        the GPU generation the kernels are compiled for:
#                                           90 (H100/H200, the default), 80 (A100),
#                                           86 (RTX 30xx, A10), 89 (L4, RTX 40xx), 100 (B200)
#   LIBRARY_PATH, LD_LIBRARY_PATH           the CUDA libraries candle links against
#
# The driver library: candle links libcuda (cudarc's `dynamic-linking`), which only a driver
# installs. Where none is installed, a stub libcuda.so.1 is generated under stubs/ (every driver
# entry point returns CUDA_ERROR_STUB_LIBRARY, as the toolkit's own stub does), so the binary
# links, starts with `--devices cpu`, and refuses `--devices cuda:0` at start-up. The stub is on
# LIBRARY_PATH always but on LD_LIBRARY_PATH only when no real driver is found, so it never
# shadows one.
TEMPER_CUDA_VERSION="${TEMPER_CUDA_VERSION:-13.0}"
TEMPER_CUDA_CACHE="${TEMPER_CUDA_CACHE:-$HOME/.cache/temper-cuda-$TEMPER_CUDA_VERSION}"
# Pinned, so every build compiles with the same nvcc: the 13.0 update 2 components.
TEMPER_CUDA_WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

temper_cuda_install() {
  local site="$TEMPER_CUDA_CACHE/site"
  local root="$site/nvidia/cu13"
  if [ ! -x "$root/bin/nvcc" ] || [ ! -f "$TEMPER_CUDA_CACHE/.complete" ]; then
    echo "cuda-toolchain: installing CUDA $TEMPER_CUDA_VERSION from PyPI into $TEMPER_CUDA_CACHE" >&2
    rm -rf "$TEMPER_CUDA_CACHE"
    mkdir -p "$site"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$site" \
      "${TEMPER_CUDA_WHEELS[@]}"
    # The wheels name their libraries by soname only; the linker asks for libNAME.so.
    local lib so
    for lib in "$root"/lib/lib*.so.*; do
      so="${lib%%.so.*}.so"
      [ -e "$so" ] || ln -s "$(basename "$lib")" "$so"
    done
    # Tools that look in lib64 (cudarc's link search among them) find the same libraries.
    [ -e "$root/lib64" ] || ln -s lib "$root/lib64"
    temper_cuda_stub "$root"
    touch "$TEMPER_CUDA_CACHE/.complete"
  fi
  echo "$root"
}

# libcuda.so.1 with every driver entry point cudarc binds (the names its bindings load), each
# returning CUDA_ERROR_STUB_LIBRARY (34). The names are read from the driver API header, so
# the stub covers whatever the toolkit's cudarc version asks for.
temper_cuda_stub() {
  local root="$1"
  mkdir -p "$root/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\(' "$root/include/cuda.h" \
    | tr -d '(' | sort -u \
    | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$root/stubs/libcuda_stub.c"
  # cuda.h maps the public names onto versioned symbols (cuMemAlloc -> cuMemAlloc_v2, ...);
  # the bindings link the versioned ones, so export both spellings.
  grep -ohE '#define (cu[A-Za-z0-9_]+) +(cu[A-Za-z0-9_]+)' "$root/include/cuda.h" \
    | awk '{ print $3 }' | sort -u \
    | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >>"$root/stubs/libcuda_stub.c"
  sort -u "$root/stubs/libcuda_stub.c" -o "$root/stubs/libcuda_stub.c"
  cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$root/stubs/libcuda.so.1" \
    "$root/stubs/libcuda_stub.c"
  ln -sf libcuda.so.1 "$root/stubs/libcuda.so"
}

# Installed in a subshell with errexit, so a failed download stops here without changing the
# options of the shell that sources this file.
TEMPER_CUDA_ROOT="$(set -euo pipefail; temper_cuda_install)" || return 1 2>/dev/null || exit 1
export CUDA_ROOT="$TEMPER_CUDA_ROOT" CUDA_PATH="$TEMPER_CUDA_ROOT" CUDA_HOME="$TEMPER_CUDA_ROOT"
export PATH="$TEMPER_CUDA_ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$TEMPER_CUDA_ROOT/lib:$TEMPER_CUDA_ROOT/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  export LD_LIBRARY_PATH="$TEMPER_CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  export LD_LIBRARY_PATH="$TEMPER_CUDA_ROOT/lib:$TEMPER_CUDA_ROOT/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
