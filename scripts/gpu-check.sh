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
# A lent GPU machine with no Rust and no network (the `device` tool's H200, whose calls carry
# at most 64 MiB each) takes the halves apart:
#   scripts/gpu-check.sh pack       # here: the cuda temper and lib-test binaries, stripped
#                                   # and xz-compressed into .gpu-check/ (about 26 MB); when
#                                   # ASSETS holds the SmolLM2 GGUF also step 3's inputs: the
#                                   # chat split and the Python wheels the device's image
#                                   # lacks (the openai SDK, gguf) in .gpu-check/, the 98 MB
#                                   # GGUF in two halves, .gpu-check-gguf-1/ and -2/
#   scripts/gpu-check.sh device     # there: step 2 against the GPU with the CUDA libraries of
#                                   # its PyTorch, `serve --devices cuda:0` answering
#                                   # GET /v1/models, and step 3 when both GGUF halves are in
#                                   # /tmp (put there by earlier calls: a carried path is gone
#                                   # at the next call, /tmp stays while the machine is warm)
# With the `device` tool, each call within the machine's warm period of the previous one:
#   carry [".gpu-check-gguf-1"]: cp .gpu-check-gguf-1/part /tmp/gpu-check-gguf-1
#   carry [".gpu-check-gguf-2"]: cp .gpu-check-gguf-2/part /tmp/gpu-check-gguf-2
#   carry [".gpu-check"]:        BENCH_FLAGS="--epochs 3" scripts/gpu-check.sh device
#
# Environment: GPU_PEAK_TFLOPS (dense bf16 peak; default 989, the H100/H200 SXM figure),
# ASSETS (default ./assets), OUT (default bench/out; /tmp/gpu-check on the device),
# BENCH_FLAGS (flags for both sides of step 3, default `--limit 96`).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_PEAK_TFLOPS=${GPU_PEAK_TFLOPS:-989}
BENCH_FLAGS=${BENCH_FLAGS:---limit 96}
SMOLLM2_GGUF=models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf
# What bench/sft.py and the reference's GGUF loading need beyond the device image's packages
# (KINDS.md lists them), for its Python 3.12.
DEVICE_WHEELS=(
  openai==3.54.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 truststore==0.10.5 idna==3.20
  anyio==4.16.0 sniffio==1.3.1 jiter==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-extensions==4.16.0 typing-inspection==0.4.5 gguf==0.19.0
)

# xz through Python's lzma, which both machines have.
xz_file() { python3 -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as src, lzma.open(sys.argv[2], "wb", preset=6) as dst: shutil.copyfileobj(src, dst)' "$1" "$2"; }
unxz_file() { python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst: shutil.copyfileobj(src, dst)' "$1" "$2"; }

# sft_benchmark PYTHON ASSETS TEMPER: step 3. Each side's JSON line goes to $OUT/sft-*.json, the
# comparison to stdout and $OUT/gpu-check.jsonl.
# shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
sft_benchmark() {
  local py=$1 assets=$2 temper_bin=$3 memory_log="$OUT/gpu-memory.csv" temper reference sampler
  echo "gpu-check: SFT benchmark on the GPU ($BENCH_FLAGS)" >&2
  # The GPU's used memory every 200 ms while temper trains: its peak is temper's (the only
  # process on the GPU), nvidia-smi being the one view of a process that is not torch.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$memory_log" &
  sampler=$!
  temper=$(TEMPER_DEVICES=cuda:0 "$py" bench/sft.py --assets "$assets" --temper "$temper_bin" \
    $BENCH_FLAGS) || { kill "$sampler"; tail -n 40 "${TMPDIR:-/tmp}"/temper-bench-*/server.log >&2; return 1; }
  kill "$sampler"
  echo "$temper" >"$OUT/sft-temper.json"
  reference=$("$py" bench/reference_sft.py --assets "$assets" $BENCH_FLAGS --device cuda \
    --dtype bfloat16) || return 1
  echo "$reference" >"$OUT/sft-reference.json"
  "$py" - "$temper" "$reference" "$memory_log" "$GPU_PEAK_TFLOPS" <<'PY' | tee -a "$OUT/gpu-check.jsonl"
import json, sys
temper, reference = json.loads(sys.argv[1]), json.loads(sys.argv[2])
used = [int(line) for line in open(sys.argv[3]) if line.strip().isdigit()]
peak = float(sys.argv[4]) * 1e12
params = 134_515_008  # SmolLM2-135M (train::memory's count, tested against the model)
mfu = lambda tokens_per_s: round(6 * params * tokens_per_s / peak, 5)
both = lambda key: {f"temper_{key}": temper.get(key), f"reference_{key}": reference.get(key)}
print(json.dumps({
    **both("train_tokens_per_s"),
    "train_ratio": round(temper["train_tokens_per_s"] / reference["train_tokens_per_s"], 3),
    "temper_timed_seconds": temper.get("timed_seconds"),
    "temper_peak_gpu_mb": max(used) if used else None,
    "temper_memory_estimate_mb": round(temper["memory_estimate_gib"] * 1024, 1)
    if temper.get("memory_estimate_gib") is not None else None,
    "reference_peak_gpu_mb": reference.get("peak_gpu_mb"),
    "temper_mfu": mfu(temper["train_tokens_per_s"]),
    "reference_mfu": mfu(reference["train_tokens_per_s"]),
    **both("valid_loss_after"), **both("generate_tokens_per_s"), **both("answer_accuracy"),
    "temper_precision": "bf16 (the default on a GPU)", "reference_dtype": reference.get("dtype"),
}))
PY
}

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
  # Step 3's inputs, when the assets are here: a device call carries at most 64 MiB.
  assets="${ASSETS:-assets}"
  if [ -f "$assets/$SMOLLM2_GGUF" ]; then
    rm -rf .gpu-check/assets .gpu-check/wheels .gpu-check-gguf-1 .gpu-check-gguf-2
    mkdir -p .gpu-check/assets/data/sarcasm .gpu-check-gguf-1 .gpu-check-gguf-2
    cp "$assets"/data/sarcasm/chat_{train,valid}.jsonl .gpu-check/assets/data/sarcasm/
    sha256sum "$assets/$SMOLLM2_GGUF" | cut -d' ' -f1 >.gpu-check/gguf.sha256
    half=$(( ($(stat -c %s "$assets/$SMOLLM2_GGUF") + 1) / 2 ))
    head -c "$half" "$assets/$SMOLLM2_GGUF" >.gpu-check-gguf-1/part
    tail -c +"$((half + 1))" "$assets/$SMOLLM2_GGUF" >.gpu-check-gguf-2/part
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform any \
      -d .gpu-check/wheels "${DEVICE_WHEELS[@]}"
  fi
  du -sh .gpu-check*
  echo "gpu-check: add /.gpu-check*/ to .git/info/exclude, then run 'scripts/gpu-check.sh device' there with .gpu-check carried" >&2
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
  bench_ok=true
  if [ -f /tmp/gpu-check-gguf-1 ] && [ -f /tmp/gpu-check-gguf-2 ]; then
    assets=/tmp/gpu-check-assets
    mkdir -p "$assets/$(dirname "$SMOLLM2_GGUF")"
    cp -r .gpu-check/assets/data "$assets/"
    cat /tmp/gpu-check-gguf-1 /tmp/gpu-check-gguf-2 >"$assets/$SMOLLM2_GGUF"
    if [ "$(sha256sum "$assets/$SMOLLM2_GGUF" | cut -d' ' -f1)" != "$(cat .gpu-check/gguf.sha256)" ]; then
      echo "gpu-check: the GGUF halves do not make the packed GGUF" >&2
      bench_ok=false
    else
      python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site .gpu-check/wheels/*.whl \
        && PYTHONPATH=/tmp/gpu-check-site sft_benchmark python3 "$assets" /tmp/gpu-check-bin/temper \
        || bench_ok=false
    fi
  else
    echo "gpu-check: no GGUF halves carried; step 3 skipped" | tee -a "$OUT/gpu-tests.log"
  fi
  [ "$code" = 200 ] && $tests_ok && $bench_ok
  exit
fi
ASSETS=${ASSETS:-assets}
OUT=${OUT:-bench/out}
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

scripts/fetch-assets.sh "$ASSETS" --llm >&2
sft_benchmark .venv-bench/bin/python "$ASSETS" target/release/temper
