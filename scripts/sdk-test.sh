#!/usr/bin/env bash
# The official openai Python SDK as a test: starts the temper binary that `cargo test`
# built, on a free port with a fresh data dir and the real MiniLM-L6 from the assets, and
# runs tests/sdk/openai_sdk_smoke.py against it (upload, create, retrieve, events,
# checkpoints, results file, models, classification, download, error classes), then
# tests/sdk/openai_sdk_chat.py (chat fine-tuning of a tiny random decoder, chat completions
# plain and streamed).
#
#   scripts/sdk-test.sh ASSETS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=$(cd "${1:-assets}" && pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/debug/temper"
[ -x "$BIN" ] || cargo build --locked --bin temper
VENV="$ASSETS/.venv-sdk"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check openai==3.54.0
fi

work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
# The models dir: the real MiniLM from the assets beside a tiny random decoder.
mkdir -p "$work/models"
ln -s "$ASSETS/models/sentence-transformers" "$work/models/sentence-transformers"
TINY="$TARGET_DIR/debug/examples/write_tiny_models"
[ -x "$TINY" ] || cargo build --locked --example write_tiny_models
"$TINY" "$work/models" >/dev/null
"$BIN" serve --port 0 --data-dir "$work/data" --models-dir "$work/models" --api-key sk-test \
  >"$work/server.log" 2>&1 &
server=$!
url=""
for _ in $(seq 1 300); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -1 | sed 's/listening on //') || true
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "temper did not start" >&2; cat "$work/server.log" >&2; exit 1; }
if ! "$VENV/bin/python" tests/sdk/openai_sdk_smoke.py "$url" sentence-transformers/all-MiniLM-L6-v2 \
  || ! "$VENV/bin/python" tests/sdk/openai_sdk_chat.py "$url" test-org/tiny-llama; then
  tail -50 "$work/server.log" >&2
  exit 1
fi
