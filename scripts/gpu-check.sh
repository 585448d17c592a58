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
# Environment: GPU_PEAK_TFLOPS (dense bf16 peak; default 989, the H100/H200 SXM figure),
# ASSETS (default ./assets), LIMIT (training examples, default 96), OUT (default bench/out).
set -euo pipefail
cd "$(dirname "$0")/.."
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
    "temper_precision": "f32", "reference_dtype": reference.get("dtype"),
}))
PY
