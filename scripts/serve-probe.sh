#!/usr/bin/env bash
# Prints the status `GET /v1/models` gets from a `temper serve --port 0` whose log is LOG:
# waits up to 30 s for the address it logs, then asks until it answers 200 (up to 10 s).
# Prints `none` when no address appeared. Python rather than curl: CI's fresh machine is
# promised Python, not curl. Used by cuda-build-check.sh and gpu-check.sh.
#
#   code="$(scripts/serve-probe.sh serve.log)"
set -uo pipefail
log="$1"
address=""
for _ in $(seq 1 150); do
  address="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | cut -d' ' -f3)"
  [ -n "$address" ] && break
  sleep 0.2
done
[ -n "$address" ] || { echo none; exit 0; }
code=""
for _ in $(seq 1 50); do
  code="$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).status)' "$address/v1/models" 2>/dev/null)"
  [ "$code" = 200 ] && break
  sleep 0.2
done
echo "${code:-000}"
