#!/usr/bin/env bash
# Runs both sides of the image-classification benchmark (EfficientNet-Lite0 on Fashion-MNIST),
# one after the other, on the same machine, split and recipe, then prints the two JSON lines
# and a comparison line (bench/compare.py: ratios temper ÷ reference, deltas temper −
# reference, quality_no_worse).
#
#   bench/run_image.sh [--limit N] [--image-size 112] [--epochs E] [--no-augment] ...   # recipe flags go to both sides
#   bench/run_image.sh --limit 200 --image-size 64                                     # smoke run
#
# Environment: ASSETS (default ./assets), TEMPER (default target/release/temper, built by
# `cargo build --release` beforehand), TEMPER_BASE_URL (use a running temper instead) with
# TEMPER_PID (its pid, for the peak RSS), THREADS (torch threads for the reference; default
# torch's choice = physical cores), CHECK_EXPORT=1 (temper side: also load the merged download
# with timm and compare, bench/check_image_export.py). Needs scripts/bench-env.sh once (timm,
# torchvision, pillow).
# Results are also appended to bench/out/image.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-assets}
TEMPER=${TEMPER:-target/release/temper}
PY=.venv-bench/bin/python
[ -x "$PY" ] || { echo "run scripts/bench-env.sh first" >&2; exit 1; }
scripts/fetch-assets.sh "$ASSETS" --vision >&2

temper_args=(--assets "$ASSETS")
if [ -n "${TEMPER_BASE_URL:-}" ]; then
  temper_args+=(--base-url "$TEMPER_BASE_URL")
  [ -n "${TEMPER_PID:-}" ] && temper_args+=(--pid "$TEMPER_PID")
else
  [ -x "$TEMPER" ] || { echo "$TEMPER not found: run cargo build --release first" >&2; exit 1; }
  temper_args+=(--temper "$TEMPER")
fi
[ "${CHECK_EXPORT:-0}" = 1 ] && temper_args+=(--check-export)
reference_args=(--assets "$ASSETS")
[ -n "${THREADS:-}" ] && reference_args+=(--threads "$THREADS")

echo "temper: fine-tuning through the service ..." >&2
temper=$("$PY" bench/image.py "${temper_args[@]}" "$@")
echo "reference: timm + torch ..." >&2
reference=$("$PY" bench/reference_image.py "${reference_args[@]}" "$@")
comparison=$("$PY" bench/compare.py image "$temper" "$reference")
mkdir -p bench/out
printf '%s\n%s\n%s\n' "$temper" "$reference" "$comparison" | tee -a bench/out/image.jsonl
