#!/usr/bin/env bash
# Runs both sides of the classification benchmark on the same machine, data and recipe,
# and prints both JSON lines plus the throughput ratio. Needs scripts/bench-env.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh assets >/dev/null
cargo build --release --quiet
. .venv-bench/bin/activate
temper=$(python bench/classification.py --assets assets "$@")
reference=$(python bench/reference_classification.py --assets assets "$@")
echo "$temper"
echo "$reference"
python - "$temper" "$reference" <<'PY'
import json, sys
t, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"throughput_ratio": round(t["train_samples_per_s"] / r["train_samples_per_s"], 2),
                  "accuracy_delta": round(t["accuracy"] - r["accuracy"], 4)}))
PY
