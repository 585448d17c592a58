"""The temper side of the chat SFT benchmark: fine-tunes SmolLM2-135M-Instruct with LoRA on
the seeded sarcasm chat split through temper with the official openai SDK, then answers
validation prompts through /v1/chat/completions with the merged model. Prints one JSON line
on stdout with the same keys as bench/reference_sft.py.

    .venv-bench/bin/python bench/sft.py --assets assets [--temper target/release/temper | --base-url URL [--pid PID]]
        [--limit N] [--epochs 1 --lr 2e-4 --warmup-ratio 0 --batch-size 4 --max-seq-len 256 --lora-rank 8
         --lora-alpha 16 --lora-dropout 0 --targets ... --seed 0 --gen-prompts 20 --max-new-tokens 32]

Without --base-url it starts `TEMPER serve` on a free loopback port with a fresh --data-dir
and --models-dir ASSETS/models (the model id is the GGUF's path without `.gguf`,
HuggingFaceTB/SmolLM2-135M-Instruct),
and stops it at the end (see bench/classification.py, whose helpers it reuses).

Flow: files.create(chat_train.jsonl), files.create(chat_valid.jsonl), then
fine_tuning.jobs.create(model=..., training_file, validation_file, seed, suffix="bench",
method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs", "batch_size",
"learning_rate_multiplier": "auto", and temper's extra keys "learning_rate", "lora_rank",
"lora_alpha", "lora_dropout", "max_seq_len", "lr_scheduler", "warmup_ratio"
(+ "target_modules" when --targets is not the default)}}}); poll every second to a terminal
state; read every event (the SDK pages on).

From the events (`type: "metrics"`, data {step, train_loss, train_mean_token_accuracy,
valid_loss, valid_mean_token_accuracy, full_valid_loss, full_valid_mean_token_accuracy, ...}):
- `valid_loss_before` / `valid_mean_token_accuracy_before`: the step-0 event (the validation
  pass before training); `..._after`: the last event with full-validation metrics (the epoch
  end), else the last with valid_loss.
- `train_tokens_per_s`: job.trained_tokens (real tokens, all epochs) x timed steps / total
  steps / timed seconds, where timed steps and seconds are summed over consecutive step events
  whose interval touches no evaluation (step 0, an epoch end, an event with validation metrics),
  as bench/classification.py does. When the events carry `tokens_seen` the token count of
  those intervals is used instead of the average. created_at is whole seconds: the error is
  about one second per run of timed intervals. Without timed intervals (smoke runs) it falls
  back to trained_tokens / train_wall_seconds.
- `train_wall_seconds`: "Fine-tuning job started" to "New fine-tuned model created" (else
  job.created_at to job.finished_at): loading, tokenization, training, evaluations, checkpoints.
Generation: one untimed warm-up request (it loads the fine-tuned model), then the first
--gen-prompts validation prompts one at a time with chat.completions.create(max_tokens=32,
temperature=0). `generate_tokens` = summed usage.completion_tokens; `generate_tokens_per_s` =
that / summed request wall time (HTTP included); `answer_accuracy` = exact match of the
stripped answer with the expected "0"/"1".
Long generation (sft_common.LONG_PROMPTS, max_tokens 64, temperature 0): the first prompt
alone, then all eight as concurrent requests; tokens = summed usage.completion_tokens, seconds
= wall time from the first request to the last reply.
`peak_rss_mb`: VmHWM of the server (/proc/PID/status), the started one or --pid; null otherwise.
`memory_estimate_gib`: the job's own peak-memory estimate (its "Estimated peak memory" event),
null when the worker's device reports no free memory.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

from classification import TERMINAL, peak_rss_mb, start_server
from common import emit
from sft_common import (LONG_MAX_TOKENS, SFT_RECIPE, WARMUP_MESSAGES, add_sft_flags, answer_accuracy,
                        generation_cases, long_generation_fields, long_messages, lora_hyperparameters, read_chat,
                        sarcasm_paths, sft_recipe_of, write_chat)

VALID_KEYS = ("full_valid_loss", "valid_loss")


def hyperparameters_of(args):
    """method.supervised.hyperparameters: OpenAI's keys plus temper's extra ones."""
    return lora_hyperparameters(args, SFT_RECIPE)


def metric_events(events):
    """{step: (created_at, data)} of the metrics events, the first event of each step."""
    steps = {}
    for e in sorted(events, key=lambda e: e.created_at):
        data = e.data if isinstance(e.data, dict) else None
        if e.type == "metrics" and data and data.get("step") is not None:
            steps.setdefault(int(data["step"]), (e.created_at, data))
    return steps


def has_validation(data):
    return any(data.get(k) is not None for k in VALID_KEYS + ("valid_mean_token_accuracy",))


def validation_of(data):
    """(loss, mean token accuracy), full-validation numbers first."""
    if data.get("full_valid_loss") is not None:
        return data["full_valid_loss"], data.get("full_valid_mean_token_accuracy")
    return data.get("valid_loss"), data.get("valid_mean_token_accuracy")


BEFORE_TRAINING = re.compile(
    r"Before training: full validation loss=([0-9.]+), full validation mean token accuracy=([0-9.]+)")


def before_after(steps, events=()):
    """Validation (loss, accuracy) before training (a step-0 metrics event, or temper's
    "Before training: …" event) and at the last evaluated step."""
    before = validation_of(steps[0][1]) if 0 in steps else (None, None)
    for e in events:
        match = BEFORE_TRAINING.match(e.message or "")
        if before == (None, None) and match:
            before = float(match.group(1)), float(match.group(2))
    evaluated = [s for s in sorted(steps) if s > 0 and has_validation(steps[s][1])]
    full = [s for s in evaluated if steps[s][1].get("full_valid_loss") is not None]
    last = (full or evaluated or [None])[-1]
    return before, validation_of(steps[last][1]) if last is not None else (None, None)


def pure_training_pace(steps, n_epochs):
    """(timed steps, timed seconds, timed tokens or None, total steps) over the intervals
    between consecutive step events that hold no evaluation or checkpoint."""
    trained = [s for s in steps if s > 0]
    if not trained:
        return 0, 0, None, 0
    total = int(steps[max(trained)][1].get("total_steps") or max(trained))
    per_epoch = max(total // max(n_epochs, 1), 1)

    def boundary(step, data):
        return step == 0 or step % per_epoch == 0 or has_validation(data)

    ordered = sorted((s, t, boundary(s, d), d.get("tokens_seen")) for s, (t, d) in steps.items())
    n_steps = seconds = 0
    tokens = 0
    for (s0, t0, b0, k0), (s1, t1, b1, k1) in zip(ordered, ordered[1:]):
        if not (b0 or b1):
            n_steps, seconds = n_steps + s1 - s0, seconds + t1 - t0
            tokens = tokens + k1 - k0 if tokens is not None and k0 is not None and k1 is not None else None
    return n_steps, seconds, tokens, total


def event_time(events, prefix):
    times = [e.created_at for e in events if e.message.startswith(prefix)]
    return min(times) if times else None


def chat(client, model, messages, max_tokens):
    """(answer, completion tokens, seconds)."""
    start = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    seconds = time.perf_counter() - start
    tokens = reply.usage.completion_tokens if reply.usage else 0
    return reply.choices[0].message.content or "", tokens, seconds


def long_generation(client, model):
    prompts = long_messages()
    _, single_tokens, single_seconds = chat(client, model, prompts[0], LONG_MAX_TOKENS)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        replies = list(pool.map(lambda m: chat(client, model, m, LONG_MAX_TOKENS), prompts))
    batch_seconds = time.perf_counter() - start
    return long_generation_fields(single_tokens, single_seconds, sum(n for _, n, _ in replies), batch_seconds)


def fine_tune(client, args, train_path, valid_path):
    with open(train_path, "rb") as f:
        training_file = client.files.create(file=("sarcasm_chat_train.jsonl", f), purpose="fine-tune")
    with open(valid_path, "rb") as f:
        validation_file = client.files.create(file=("sarcasm_chat_valid.jsonl", f), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=SFT_RECIPE["model"], training_file=training_file.id, validation_file=validation_file.id,
        seed=args.seed, suffix="bench",
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters_of(args)}})
    print(f"job {job.id} created", file=sys.stderr)
    while job.status not in TERMINAL:
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded" or not job.fine_tuned_model:
        sys.exit(f"job {job.id} ended {job.status}: {job.error}")
    return job


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sft_flags(parser)
    parser.add_argument("--temper", default="target/release/temper", help="temper binary to start")
    parser.add_argument("--base-url", help="use an already running temper (e.g. http://127.0.0.1:8080)")
    parser.add_argument("--pid", type=int, help="with --base-url: the server's pid, for its peak RSS")
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the started temper's data dir (it is kept anyway when the run fails)")
    args = parser.parse_args()

    train_path, valid_path = sarcasm_paths(args.assets)
    train_chats, valid_chats = read_chat(train_path, args.limit), read_chat(valid_path, args.limit)
    upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
    train_path, valid_path = os.path.join(upload_dir, "train.jsonl"), os.path.join(upload_dir, "valid.jsonl")
    write_chat(train_path, train_chats)
    write_chat(valid_path, valid_chats)

    proc, base, server_dir = (None, args.base_url.rstrip("/"), None) if args.base_url else start_server(
        args.temper, os.path.abspath(os.path.join(args.assets, "models")))
    pid = proc.pid if proc else args.pid
    succeeded = False
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, timeout=1800, max_retries=0)
        job = fine_tune(client, args, train_path, valid_path)
        shutil.rmtree(upload_dir, ignore_errors=True)
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))  # the SDK pages on
        steps = metric_events(events)
        started, created = event_time(events, "Fine-tuning job started"), event_time(events, "New fine-tuned model created")
        if started is None or created is None:
            started, created = job.created_at, job.finished_at or job.created_at
        wall = max(created - started, 1)
        (loss_before, acc_before), (loss_after, acc_after) = before_after(steps, events)
        pace_steps, pace_seconds, pace_tokens, total_steps = pure_training_pace(steps, args.epochs)
        trained_tokens = job.trained_tokens or 0
        if pace_steps and pace_seconds:
            timed_tokens = pace_tokens if pace_tokens else trained_tokens * pace_steps / max(total_steps, 1)
            tokens_per_s = timed_tokens / pace_seconds
            samples_per_s = pace_steps * args.batch_size / pace_seconds
            train_seconds = total_steps * pace_seconds / pace_steps
        else:  # too few steps to see a pace (smoke runs): fall back to the wall time
            tokens_per_s, samples_per_s = trained_tokens / wall, len(train_chats) * args.epochs / wall
            train_seconds = wall
        estimates = [re.search(r"Estimated peak memory ([0-9.]+) GiB", e.message) for e in events]
        memory_estimate_gib = next((float(m.group(1)) for m in estimates if m), None)
        train_losses = [steps[s][1].get("train_loss") for s in sorted(steps) if s > 0]
        train_losses = [x for x in train_losses if x is not None]
        last = train_losses[-10:]

        _, _, first_request_seconds = chat(client, job.fine_tuned_model, WARMUP_MESSAGES, args.max_new_tokens)
        cases = generation_cases(valid_chats, args.gen_prompts)
        answers, gen_tokens, gen_seconds = [], 0, 0.0
        for messages, _ in cases:
            text, n, seconds = chat(client, job.fine_tuned_model, messages, args.max_new_tokens)
            answers.append(text)
            gen_tokens, gen_seconds = gen_tokens + n, gen_seconds + seconds
        long = long_generation(client, job.fine_tuned_model)
        peak_rss = peak_rss_mb(pid) if pid else None
        rounded = lambda x, n=4: round(x, n) if isinstance(x, (int, float)) else None  # noqa: E731
        emit({
            "impl": "temper", "model": SFT_RECIPE["model"], "fine_tuned_model": job.fine_tuned_model,
            "train_examples": len(train_chats), "valid_examples": len(valid_chats), "epochs": args.epochs,
            "optimizer_steps": total_steps, "trained_tokens": trained_tokens,
            "train_seconds": round(train_seconds, 2), "train_wall_seconds": wall,
            "job_seconds": (job.finished_at - job.created_at) if job.finished_at else None,
            "train_tokens_per_s": round(tokens_per_s, 1), "train_samples_per_s": round(samples_per_s, 2),
            "timed_steps": pace_steps, "timed_seconds": pace_seconds,
            "train_loss_first": rounded(train_losses[0]) if train_losses else None,
            "train_loss_last10": rounded(sum(last) / len(last)) if last else None,
            "valid_loss_before": rounded(loss_before), "valid_loss_after": rounded(loss_after),
            "valid_mean_token_accuracy_before": rounded(acc_before),
            "valid_mean_token_accuracy_after": rounded(acc_after),
            "first_request_seconds": round(first_request_seconds, 2),  # loads the model
            "generate_prompts": len(cases), "generate_tokens": gen_tokens,
            "generate_seconds": round(gen_seconds, 3),
            "generate_tokens_per_s": round(gen_tokens / gen_seconds, 1) if gen_seconds else None,
            "generate_requests_per_s": round(len(cases) / gen_seconds, 2) if gen_seconds else None,
            "answer_accuracy": answer_accuracy([e for _, e in cases], answers),
            "answers_sample": answers[:5],
            **long,
            "peak_rss_mb": round(peak_rss, 1) if peak_rss else None,
            "memory_estimate_gib": memory_estimate_gib,
            "loadavg_1m_end": os.getloadavg()[0],
            "recipe": sft_recipe_of(args),
        })
        succeeded = True
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if succeeded and not args.keep_data:
                shutil.rmtree(server_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
