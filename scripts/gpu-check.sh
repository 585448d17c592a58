#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, its driver (R580 or newer: the build is CUDA
# 13.0, see scripts/cuda-toolchain.sh), Rust and the benchmark venv (scripts/bench-env.sh):
#
#   scripts/gpu-check.sh            # about 10 minutes on an H100/H200 after a warm build
#
# 1. builds temper with `--features cuda` (the toolchain from PyPI unless nvcc is on PATH);
# 2. runs the tests that need a GPU (ignored elsewhere): one LoRA, QLoRA and full step of the
#    tiny Llama, Qwen2 and BERT on cuda:0 against the fused CPU step (loss, every gradient,
#    the AdamW update), and KV-cache greedy decoding on cuda:0 against the CPU;
# 3. the SFT benchmark (bench/sft.py: SmolLM2-135M-Instruct + LoRA on the sarcasm chat split,
#    through the service, then generation) with temper's worker on cuda:0, beside
#    transformers + peft on the same GPU in bf16 (bench/reference_sft.py --device cuda), and
#    prints a JSON line: tokens/s of both, peak GPU memory of both, and each side's MFU:
#    6 · N · tokens/s ÷ the GPU's dense bf16 peak (N = the model's 134.5M parameters; LoRA
#    skips the base's weight gradients, so this overstates the work, as is usual for LoRA).
#
# A lent GPU machine with no Rust and no network (the `device` tool's H200) takes the two
# halves apart:
#   scripts/gpu-check.sh pack       # here: the cuda temper and lib-test binaries, stripped
#                                   # and xz-compressed into .gpu-check/ (about 26 MB)
#   scripts/gpu-check.sh device     # there, with .gpu-check carried: step 2 against the
#                                   # GPU with the CUDA libraries of its PyTorch, then
#                                   # `serve --devices cuda:0` answering GET /v1/models
#
# Environment: GPU_PEAK_TFLOPS (dense bf16 peak; default 989, the H100/H200 SXM figure),
# ASSETS (default ./assets), LIMIT (training examples, default 96), OUT (default bench/out).
set -euo pipefail
cd "$(dirname "$0")/.."

# xz through Python's lzma, which both machines have.
xz_file() { python3 -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as src, lzma.open(sys.argv[2], "wb", preset=6) as dst: shutil.copyfileobj(src, dst)' "$1" "$2"; }
unxz_file() { python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst: shutil.copyfileobj(src, dst)' "$1" "$2"; }

if [ "${1:-}" = pack ]; then
  # shellcheck source=scripts/cuda-toolchain.sh
  source scripts/cuda-toolchain.sh
  target="${CARGO_TARGET_DIR:-target}"
  cargo build --release --locked --features cuda --bin temper
  tests="$(cargo test --release --locked --features cuda --lib --no-run 2>&1 \
    | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p')"
  [ -x "$tests" ] || { echo "gpu-check: no lib test binary" >&2; exit 1; }
  mkdir -p .gpu-check
  for pair in "$target/release/temper:temper" "$tests:temper-tests"; do
    strip -o ".gpu-check/${pair##*:}" "${pair%%:*}"
    xz_file ".gpu-check/${pair##*:}" ".gpu-check/${pair##*:}.xz"
    rm ".gpu-check/${pair##*:}"
  done
  ls -l .gpu-check
  echo "gpu-check: add /.gpu-check/ to .git/info/exclude, then run 'scripts/gpu-check.sh device' there with .gpu-check carried" >&2
  exit 0
fi

if [ "${1:-}" = device ]; then
  OUT=${OUT:-/tmp/gpu-check}
  mkdir -p "$OUT" /tmp/gpu-check-bin
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  for name in temper temper-tests; do
    unxz_file ".gpu-check/$name.xz" "/tmp/gpu-check-bin/$name"
    chmod +x "/tmp/gpu-check-bin/$name"
  done
  # cudart, cublas, cublasLt, curand and nvrtc of CUDA 13: the ones PyPI's PyTorch brings.
  libs="$(python3 - <<'PY'
import glob, os, site
dirs = set()
for root in site.getsitepackages():
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
  # PyTorch's wheels leave out curand; the toolkit beside nvcc has it.
  if command -v nvcc >/dev/null; then
    libs="$libs:$(dirname "$(command -v nvcc)")/../lib64"
  fi
  [ -d /usr/local/cuda/lib64 ] && libs="$libs:/usr/local/cuda/lib64"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if ldd /tmp/gpu-check-bin/temper | grep 'not found'; then
    echo "gpu-check: libraries missing (searched $libs)" >&2
    exit 1
  fi
  # A failing test still lets the serve check run; the exit status says both.
  tests_ok=true
  /tmp/gpu-check-bin/temper-tests on_cuda --ignored --nocapture --test-threads 1 2>&1 \
    | tee "$OUT/gpu-tests.log" || tests_ok=false
  /tmp/gpu-check-bin/temper serve --devices cuda:0 --port 0 --data-dir /tmp/gpu-check-data \
    --models-dir /tmp >"$OUT/serve.log" 2>&1 &
  server=$!
  code="$(scripts/serve-probe.sh "$OUT/serve.log")"
  kill "$server" 2>/dev/null || true
  echo "gpu-check: serve --devices cuda:0 answered GET /v1/models with $code" | tee -a "$OUT/gpu-tests.log"
  [ "$code" = 200 ] && $tests_ok
  exit
fi
ASSETS=${ASSETS:-assets}
LIMIT=${LIMIT:-96}
OUT=${OUT:-bench/out}
GPU_PEAK_TFLOPS=${GPU_PEAK_TFLOPS:-989}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if ! command -v nvcc >/dev/null; then
  # shellcheck source=scripts/cuda-toolchain.sh
  source scripts/cuda-toolchain.sh
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}"
echo "gpu-check: building for compute capability $CUDA_COMPUTE_CAP" >&2
cargo build --release --locked --features cuda --bin temper

echo "gpu-check: CUDA against CPU on the tiny models" >&2
cargo test --release --locked --features cuda --lib on_cuda -- --ignored --nocapture 2>&1 \
  | tee "$OUT/gpu-tests.log"

echo "gpu-check: SFT benchmark on the GPU" >&2
scripts/fetch-assets.sh "$ASSETS" --llm >&2
PY=.venv-bench/bin/python
memory_log="$OUT/gpu-memory.csv"
# The GPU's used memory every 200 ms while temper trains: its peak is temper's (the only
# process on the GPU), nvidia-smi being the one view of a process that is not torch.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$memory_log" &
sampler=$!
temper=$(TEMPER_DEVICES=cuda:0 "$PY" bench/sft.py --assets "$ASSETS" --temper target/release/temper \
  --limit "$LIMIT")
kill "$sampler"
reference=$("$PY" bench/reference_sft.py --assets "$ASSETS" --limit "$LIMIT" --device cuda \
  --dtype bfloat16)
"$PY" - "$temper" "$reference" "$memory_log" "$GPU_PEAK_TFLOPS" <<'PY' | tee -a "$OUT/gpu-check.jsonl"
import json, sys
temper, reference = json.loads(sys.argv[1]), json.loads(sys.argv[2])
used = [int(line) for line in open(sys.argv[3]) if line.strip().isdigit()]
peak = float(sys.argv[4]) * 1e12
params = 134_515_008  # SmolLM2-135M (train::memory's count, tested against the model)
mfu = lambda tokens_per_s: round(6 * params * tokens_per_s / peak, 5)
print(json.dumps({
    "temper_train_tokens_per_s": temper["train_tokens_per_s"],
    "reference_train_tokens_per_s": reference["train_tokens_per_s"],
    "train_ratio": round(temper["train_tokens_per_s"] / reference["train_tokens_per_s"], 3),
    "temper_peak_gpu_mb": max(used) if used else None,
    "reference_peak_gpu_mb": reference.get("peak_gpu_mb"),
    "temper_mfu": mfu(temper["train_tokens_per_s"]),
    "reference_mfu": mfu(reference["train_tokens_per_s"]),
    "temper_valid_loss_after": temper.get("valid_loss_after"),
    "reference_valid_loss_after": reference.get("valid_loss_after"),
    "temper_precision": "bf16 (the default on a GPU)", "reference_dtype": reference.get("dtype"),
}))
PY
