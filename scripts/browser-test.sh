#!/usr/bin/env bash
# The dashboard in a real browser: starts the release temper binary (the build `cargo run
# --release` and `scripts/test.sh` share) on a free port with a fresh data dir, the tiny random
# models of the `write_tiny_models` example and an API key, then drives Debian's chromium
# headless with playwright-core (tests/browser/dashboard.test.js): a classification job with a
# validation file, made through the New job form after its estimate is checked against the API,
# its charts and confusion matrix checked against the API, pause/resume/cancel
# buttons, the files and models pages, keyboard reach, and a phone-width viewport.
#
#   scripts/browser-test.sh
#
# Screenshots (1280×800 and 390×844) go to $TEMPER_TEST_ARTIFACTS (default
# $CARGO_TARGET_DIR/browser-artifacts, or target/browser-artifacts). chromium comes from apt
# (installed here when missing and this runs as root with apt-get, as CI does) and
# playwright-core from npm at the version tests/browser/package-lock.json pins; no browser is
# downloaded. Where chromium or node/npm is missing and cannot be installed, the test prints
# "skipped: …" and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/temper-url.sh
. scripts/lib/temper-url.sh
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release/temper"
TINY="$TARGET_DIR/release/examples/write_tiny_models"
ARTIFACTS="${TEMPER_TEST_ARTIFACTS:-$TARGET_DIR/browser-artifacts}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

can_apt_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

if [ ! -x "$CHROMIUM" ]; then
  if can_apt_install; then
    # Where it can be installed it must be: a failure here fails the test.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    [ -x "$CHROMIUM" ] || { echo "chromium was installed but $CHROMIUM is not it" >&2; exit 1; }
  else
    echo "skipped: no chromium at $CHROMIUM, and installing it needs root and apt-get" >&2
    exit 0
  fi
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "skipped: node and npm are needed to run playwright-core" >&2
  exit 0
fi

# playwright-core at the pinned version (npm ci is a no-op's cost only when it differs).
pinned=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
installed=$(node -p "try { require('./tests/browser/node_modules/playwright-core/package.json').version } catch (_) { '' }")
if [ "$pinned" != "$installed" ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

# Fresh with the sources; each is a no-op after the README's commands.
cargo build --release --locked --bin temper
cargo build --release --locked --example write_tiny_models

work=$(mktemp -d)
server=""
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$TINY" "$work/models" >/dev/null
API_KEY="sk-browser-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$BIN" serve --port 0 --data-dir "$work/data" --models-dir "$work/models" --api-key "$API_KEY" \
  >"$work/server.log" 2>&1 &
server=$!
url=$(temper_url "$work/server.log" "$server") || exit 1

mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
echo "browser test against $url; screenshots in $ARTIFACTS" >&2
if ! CHROMIUM="$CHROMIUM" node tests/browser/dashboard.test.js "$url/" "$API_KEY" "$ARTIFACTS"; then
  tail -50 "$work/server.log" >&2
  echo "the browser test failed; screenshots in $ARTIFACTS" >&2
  exit 1
fi
