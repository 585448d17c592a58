#!/usr/bin/env bash
# The official openai Python SDK as a test: starts the release temper binary (the build
# `cargo run --release` and `scripts/test.sh` share) on a free port with a fresh data dir and
# the real MiniLM-L6 from the assets, and runs tests/sdk/openai_sdk_smoke.py against it (upload, create, retrieve, events,
# checkpoints, results file, models, classification, download, error classes), then
# tests/sdk/openai_sdk_chat.py (chat fine-tuning of a tiny random decoder, chat completions
# plain and streamed), then tests/sdk/openai_sdk_webhooks.py (every ended job's webhook,
# verified by the SDK's `client.webhooks.unwrap`).
#
#   scripts/sdk-test.sh ASSETS_DIR
#
# It runs twice, in two venvs under ASSETS_DIR: against the pinned SDK (OPENAI_PINNED) and
# against the newest openai release on PyPI (looked up with `pip index versions openai`;
# OPENAI_LATEST=x.y.z pins it, OPENAI_LATEST=skip skips that run, e.g. offline).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/temper-url.sh
. scripts/lib/temper-url.sh
ASSETS=$(cd "${1:-assets}" && pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release/temper"
TINY="$TARGET_DIR/release/examples/write_tiny_models"
# Fresh with the sources; each is a no-op after the README's commands: the binary is what
# `cargo run --release` built, the example what `cargo test --release --all-targets` built
# (built apart, because an example also unifies the dev-dependencies' features).
cargo build --release --locked --bin temper
cargo build --release --locked --example write_tiny_models
OPENAI_PINNED="${OPENAI_PINNED:-3.54.0}"
OPENAI_LATEST="${OPENAI_LATEST:-}"
if [ -z "$OPENAI_LATEST" ]; then
  # "openai (3.57.0)" is the first line of `pip index versions openai`.
  OPENAI_LATEST=$(python3 -m pip index versions openai 2>/dev/null | sed -n 's/^openai (\(.*\))$/\1/p' | head -1)
  [ -n "$OPENAI_LATEST" ] || { echo "could not look up the newest openai release (set OPENAI_LATEST=x.y.z or skip)" >&2; exit 1; }
fi

# sdk_venv VERSION: a venv under ASSETS with exactly openai==VERSION; prints its python.
sdk_venv() {
  local venv="$ASSETS/.venv-sdk-$1"
  if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$1')" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$1" >&2
  fi
  echo "$venv/bin/python"
}
VERSIONS=("$OPENAI_PINNED")
[ "$OPENAI_LATEST" = skip ] || [ "$OPENAI_LATEST" = "$OPENAI_PINNED" ] || VERSIONS+=("$OPENAI_LATEST")

work=$(mktemp -d)
server="" receiver=""
trap 'kill "$server" "$receiver" 2>/dev/null || true; wait "$server" "$receiver" 2>/dev/null || true; rm -rf "$work"' EXIT
# The models dir: the real MiniLM from the assets beside a tiny random decoder.
mkdir -p "$work/models"
ln -s "$ASSETS/models/sentence-transformers" "$work/models/sentence-transformers"
"$TINY" "$work/models" >/dev/null
# A webhook receiver on a free port (it writes the port it got), so every job's end is
# delivered and tests/sdk/openai_sdk_webhooks.py can check it with the SDK's verifier.
python3 tests/sdk/webhook_receiver.py "$work/webhooks" &
receiver=$!
for _ in $(seq 1 100); do [ -f "$work/webhooks/port" ] && break; sleep 0.1; done
[ -f "$work/webhooks/port" ] || { echo "the webhook receiver did not start" >&2; exit 1; }
WEBHOOK_SECRET="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
"$BIN" serve --port 0 --data-dir "$work/data" --models-dir "$work/models" --api-key sk-test \
  --webhook-url "http://127.0.0.1:$(cat "$work/webhooks/port")/hooks" --webhook-secret "$WEBHOOK_SECRET" \
  >"$work/server.log" 2>&1 &
server=$!
url=$(temper_url "$work/server.log" "$server") || exit 1
for version in "${VERSIONS[@]}"; do
  PY=$(sdk_venv "$version")
  echo "openai $version against $url" >&2
  if ! "$PY" tests/sdk/openai_sdk_smoke.py "$url" sentence-transformers/all-MiniLM-L6-v2 \
    || ! "$PY" tests/sdk/openai_sdk_chat.py "$url" test-org/tiny-llama \
    || ! "$PY" tests/sdk/openai_sdk_webhooks.py "$url" "$work/webhooks" "$WEBHOOK_SECRET" \
      sentence-transformers/all-MiniLM-L6-v2; then
    tail -50 "$work/server.log" >&2
    echo "the SDK tests failed with openai $version" >&2
    exit 1
  fi
done
echo "SDK tests passed with openai ${VERSIONS[*]}" >&2
