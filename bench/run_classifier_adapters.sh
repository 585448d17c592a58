#!/usr/bin/env bash
# Serving many LoRA classifiers of one base, side by side: temper's shared base encoder with
# unmerged adapters, temper's merged models (one per fine-tune), and peft's named adapters on
# one transformers model (bench/reference_classifier_adapters.py); all-MiniLM-L6-v2, one LoRA
# fine-tune loaded FINE_TUNES times, TEXTS Rotten Tomatoes test texts round-robin over them.
# Prints one JSON line per side (without the labels) and a comparison line: texts/s, memory,
# and how often each side's predicted label agrees with temper's adapters.
#
#   bench/run_classifier_adapters.sh
#
# Environment: ASSETS (default ./assets), FINE_TUNES (10), TEXTS (512), THREADS (torch's; all
# cores by default, as temper uses), CARGO_TARGET_DIR as cargo reads it. Needs
# scripts/bench-env.sh for the peft side.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-assets}
FINE_TUNES=${FINE_TUNES:-10}
TEXTS=${TEXTS:-512}
THREADS=${THREADS:-$(nproc)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release --example classifier_adapters >&2
BIN=${CARGO_TARGET_DIR:-target}/release/examples/classifier_adapters
"$BIN" "$ASSETS" "$WORK" train > /dev/null
"$BIN" "$ASSETS" "$WORK" adapters "$FINE_TUNES" "$TEXTS" > "$WORK/adapters.json"
"$BIN" "$ASSETS" "$WORK" merged "$FINE_TUNES" "$TEXTS" > "$WORK/merged.json"
.venv-bench/bin/python bench/reference_classifier_adapters.py --assets "$ASSETS" \
  --adapter "$WORK/peft-adapter" --fine-tunes "$FINE_TUNES" --texts "$TEXTS" --threads "$THREADS" > "$WORK/peft.json"
python3 - "$WORK" <<'PY'
import json, sys, os
work = sys.argv[1]
sides = {name: json.load(open(os.path.join(work, f"{name}.json"))) for name in ["adapters", "merged", "peft"]}
reference = sides["adapters"]["labels"]
summary = {}
for name, result in sides.items():
    labels = result.pop("labels")
    result["side"] = {"adapters": "temper-adapters", "merged": "temper-merged", "peft": "peft"}[name]
    result["label_agreement_with_temper_adapters"] = sum(a == b for a, b in zip(labels, reference)) / len(reference)
    print(json.dumps(result, sort_keys=True))
a, m, p = sides["adapters"], sides["merged"], sides["peft"]
print(json.dumps({
    "temper_adapters_vs_peft_texts_per_s": round(a["texts_per_s"] / p["texts_per_s"], 2),
    "temper_adapters_vs_merged_texts_per_s": round(a["texts_per_s"] / m["texts_per_s"], 2),
    "rss_growth_mib": {"temper-adapters": a["rss_growth_mib"], "temper-merged": m["rss_growth_mib"], "peft": p["rss_growth_mib"]},
}, sort_keys=True))
PY
