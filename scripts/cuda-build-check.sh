#!/usr/bin/env bash
# The `--features cuda` build, checked on a machine without a GPU (CI's): clippy over every
# target with nvcc compiling candle's kernels, the release binary, and what that binary does
# without a driver: `--devices cpu` serves, `--devices cuda:0` stops at start-up saying no
# driver is installed. Prints the wall time of each stage.
#
#   scripts/cuda-build-check.sh          # CARGO_TARGET_DIR is shared with the CPU build
set -euo pipefail
cd "$(dirname "$0")/.."

stage_start=$SECONDS
stage() {
  echo "cuda-build-check: $1 ($((SECONDS - stage_start)) s)" >&2
  stage_start=$SECONDS
}

# shellcheck source=scripts/cuda-toolchain.sh
source scripts/cuda-toolchain.sh
stage "toolchain ready: $(nvcc --version | tail -1), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"

cargo clippy --release --all-targets --locked --features cuda -- -D warnings
stage "clippy --features cuda passed"

cargo build --release --locked --features cuda --bin temper
stage "release binary built"

bin="${CARGO_TARGET_DIR:-target}/release/temper"
work="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT

# Without a driver, a cuda:0 worker is refused before anything is written.
if "$bin" serve --devices cuda:0 --port 0 --data-dir "$work/refused" --models-dir "$work" \
  >"$work/refused.log" 2>&1; then
  echo "cuda-build-check: serve --devices cuda:0 started without a GPU" >&2
  exit 1
fi
if ldconfig -p | grep -q 'libcuda\.so\.1 '; then
  grep -q "the worker device \`cuda:0\` cannot be used" "$work/refused.log"
else
  grep -q "the worker device \`cuda:0\` cannot be used: no NVIDIA driver is installed" \
    "$work/refused.log" || { cat "$work/refused.log" >&2; exit 1; }
fi
[ ! -e "$work/refused" ] || { echo "cuda-build-check: the data dir was created" >&2; exit 1; }
stage "serve --devices cuda:0 refused: $(grep -o 'cannot be used: [^(]*' "$work/refused.log")"

# The same binary serves on the CPU.
"$bin" serve --devices cpu --port 0 --data-dir "$work/data" --models-dir "$work" \
  >"$work/serve.log" 2>&1 &
server=$!
code="$(scripts/serve-probe.sh "$work/serve.log")"
[ "$code" != none ] || { cat "$work/serve.log" >&2; exit 1; }
[ "$code" = 200 ] || { echo "cuda-build-check: GET /v1/models answered $code" >&2; exit 1; }
stage "serve --devices cpu answered GET /v1/models with 200"
