#!/usr/bin/env bash
# OpenAI conformance: validates real responses of every object on temper's OpenAI surface
# (files, jobs, events, checkpoints, models, chat/completions and their stream chunks,
# errors) against OpenAI's published OpenAPI spec, fetched from PyPI by
# scripts/fetch-openai-spec.sh. Starts the temper binary on a free port with a fresh data
# dir and the tiny random models, then runs tests/conformance/openai_conformance.py.
# Prints one JSON line (schemas validated, violations) and exits 1 on any violation.
#
#   scripts/conformance-test.sh [ASSETS_DIR]      (default: assets; the spec is cached there)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/temper-url.sh
. scripts/lib/temper-url.sh
ASSETS="${1:-assets}"
mkdir -p "$ASSETS"
ASSETS=$(cd "$ASSETS" && pwd)
SPEC=$(scripts/fetch-openai-spec.sh "$ASSETS")
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release/temper"
TINY="$TARGET_DIR/release/examples/write_tiny_models"
# Always through cargo (a no-op when fresh), so a stale binary is never the one tested.
cargo build --release --locked --bin temper
cargo build --release --locked --example write_tiny_models
VENV="$ASSETS/.venv-conformance"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check jsonschema==4.26.0 PyYAML==6.0.3
fi

work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$TINY" "$work/models" >/dev/null
"$BIN" serve --port 0 --data-dir "$work/data" --models-dir "$work/models" --api-key sk-conformance \
  2>"$work/server.log" &
server=$!
url=$(temper_url "$work/server.log" "$server") || exit 1
if ! "$VENV/bin/python" tests/conformance/openai_conformance.py "$url" sk-conformance "$SPEC"; then
  tail -30 "$work/server.log" >&2
  exit 1
fi
