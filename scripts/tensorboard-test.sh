#!/usr/bin/env bash
# TensorBoard's own reader as a test: a venv under ASSETS_DIR with the pinned tensorboard
# package (TENSORBOARD_PINNED), then the e2e test that trains a tiny job, downloads
# `format=tensorboard` and loads it with TensorBoard's EventAccumulator
# (tests/e2e/tensorboard.rs + tests/tensorboard/read_events.py). Run by scripts/test.sh.
#
#   scripts/tensorboard-test.sh ASSETS_DIR
#
# Without this script's venv the e2e test uses `python3`, and says "skipped:" when that
# has no tensorboard; with it, a tensorboard that cannot be imported fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${1:-assets}"
ASSETS=$(cd "${1:-assets}" && pwd)
TENSORBOARD_PINNED="${TENSORBOARD_PINNED:-2.21.0}"
venv="$ASSETS/.venv-tensorboard"
if ! "$venv/bin/python" -c "import tensorboard, sys; sys.exit(tensorboard.__version__ != '$TENSORBOARD_PINNED')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "tensorboard==$TENSORBOARD_PINNED" >&2
fi
TEMPER_TENSORBOARD_PYTHON="$venv/bin/python" \
  cargo test --release --locked --test e2e tensorboard -- --nocapture
