#!/usr/bin/env bash
# Runs both sides of the chat SFT benchmark (SmolLM2-135M-Instruct + LoRA on the sarcasm chat
# split), one after the other, on the same machine, data and recipe, then prints the two JSON
# lines and a comparison line.
#
#   bench/run_sft.sh [--limit N] [--epochs E] [--lr ...] [--targets q_proj,v_proj] ...   # recipe flags go to both
#
# Environment: ASSETS (default ./assets; fetched with --llm), TEMPER (default
# target/release/temper, built by `cargo build --release` beforehand), TEMPER_BASE_URL (use a
# running temper instead; its --models-dir must hold HuggingFaceTB/SmolLM2-135M-Instruct.gguf) with
# TEMPER_PID (its pid, for the peak RSS), THREADS (torch threads for the reference; default
# torch's choice = physical cores). Needs scripts/bench-env.sh once (and `pip install gguf`
# into .venv-bench: transformers reads GGUF files through it).
# Results are also appended to bench/out/sft.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-assets}
TEMPER=${TEMPER:-target/release/temper}
PY=.venv-bench/bin/python
[ -x "$PY" ] || { echo "run scripts/bench-env.sh first" >&2; exit 1; }
"$PY" -c "import gguf" 2>/dev/null || { echo "the reference needs gguf: $PY -m pip install gguf" >&2; exit 1; }
scripts/fetch-assets.sh "$ASSETS" --llm >&2

temper_args=(--assets "$ASSETS")
if [ -n "${TEMPER_BASE_URL:-}" ]; then
  temper_args+=(--base-url "$TEMPER_BASE_URL")
  [ -n "${TEMPER_PID:-}" ] && temper_args+=(--pid "$TEMPER_PID")
else
  [ -x "$TEMPER" ] || { echo "$TEMPER not found: run cargo build --release first" >&2; exit 1; }
  temper_args+=(--temper "$TEMPER")
fi
reference_args=(--assets "$ASSETS")
[ -n "${THREADS:-}" ] && reference_args+=(--threads "$THREADS")

echo "temper: LoRA fine-tuning through the service ..." >&2
temper=$("$PY" bench/sft.py "${temper_args[@]}" "$@")
echo "reference: transformers + peft ..." >&2
reference=$("$PY" bench/reference_sft.py "${reference_args[@]}" "$@")

comparison=$("$PY" - "$temper" "$reference" <<'PY'
import json, sys
t, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = lambda key: round(t[key] / r[key], 3) if t.get(key) and r.get(key) else None
delta = lambda key: round(t[key] - r[key], 4) if t.get(key) is not None and r.get(key) is not None else None
print(json.dumps({
    "comparison": "temper / transformers+peft",
    "train_tokens_per_s_ratio": ratio("train_tokens_per_s"),
    "train_samples_per_s_ratio": ratio("train_samples_per_s"),
    "generate_tokens_per_s_ratio": ratio("generate_tokens_per_s"),
    "generate_requests_per_s_ratio": ratio("generate_requests_per_s"),
    "long_single_tokens_per_s_ratio": ratio("long_single_tokens_per_s"),
    "long_batch_tokens_per_s_ratio": ratio("long_batch_tokens_per_s"),
    "peak_rss_ratio": ratio("peak_rss_mb"),
    "trained_tokens_ratio": ratio("trained_tokens"),
    "valid_loss_before_delta": delta("valid_loss_before"),
    "valid_loss_after_delta": delta("valid_loss_after"),
    "valid_mean_token_accuracy_after_delta": delta("valid_mean_token_accuracy_after"),
    "answer_accuracy_delta": delta("answer_accuracy"),
}, sort_keys=True))
PY
)
mkdir -p bench/out
printf '%s\n%s\n%s\n' "$temper" "$reference" "$comparison" | tee -a bench/out/sft.jsonl
