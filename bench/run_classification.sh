#!/usr/bin/env bash
# Runs both sides of the classification benchmark, one after the other, on the same machine,
# split and recipe, then prints the two JSON lines and a comparison line.
#
#   bench/run_classification.sh [--limit N] [--epochs E] [--lr ...] ...   # recipe flags go to both
#
# Environment: ASSETS (default ./assets), TEMPER (default target/release/temper, built by
# `cargo build --release` beforehand), TEMPER_BASE_URL (use a running temper instead),
# THREADS (torch threads for the reference; default torch's choice = physical cores),
# CHECK_EXPORT=1 (also load temper's merged download in transformers and compare predictions).
# Needs scripts/bench-env.sh once. Results are also appended to bench/out/classification.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-assets}
TEMPER=${TEMPER:-target/release/temper}
PY=.venv-bench/bin/python
[ -x "$PY" ] || { echo "run scripts/bench-env.sh first" >&2; exit 1; }
scripts/fetch-assets.sh "$ASSETS" >&2

temper_args=(--assets "$ASSETS")
if [ -n "${TEMPER_BASE_URL:-}" ]; then
  temper_args+=(--base-url "$TEMPER_BASE_URL")
else
  [ -x "$TEMPER" ] || { echo "$TEMPER not found: run cargo build --release first" >&2; exit 1; }
  temper_args+=(--temper "$TEMPER")
fi
[ "${CHECK_EXPORT:-0}" = 1 ] && temper_args+=(--check-export)
reference_args=(--assets "$ASSETS")
[ -n "${THREADS:-}" ] && reference_args+=(--threads "$THREADS")

echo "temper: fine-tuning through the service ..." >&2
temper=$("$PY" bench/classification.py "${temper_args[@]}" "$@")
echo "reference: transformers Trainer ..." >&2
reference=$("$PY" bench/reference_classification.py "${reference_args[@]}" "$@")

comparison=$("$PY" - "$temper" "$reference" <<'PY'
import json, sys
t, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = lambda key: round(t[key] / r[key], 3) if t.get(key) and r.get(key) else None
print(json.dumps({
    "comparison": "temper / transformers",
    "train_samples_per_s_ratio": ratio("train_samples_per_s"),
    "predict_samples_per_s_ratio": ratio("predict_samples_per_s"),
    "peak_rss_ratio": ratio("peak_rss_mb"),
    "accuracy_delta": round(t["accuracy"] - r["accuracy"], 4),
    "f1_delta": round(t["f1"] - r["f1"], 4),
    "accuracy_no_worse": t["accuracy"] >= r["accuracy"],
}, sort_keys=True))
PY
)
mkdir -p bench/out
printf '%s\n%s\n%s\n' "$temper" "$reference" "$comparison" | tee -a bench/out/classification.jsonl
