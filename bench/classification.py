"""The temper side of the classification benchmark: fine-tunes MiniLM-L6 through temper with
the official openai SDK, then classifies the test split through /v1/classifications and
scores it here. Prints one JSON line on stdout with the same keys as the reference.

    .venv-bench/bin/python bench/classification.py --assets assets [--temper target/release/temper | --base-url URL]
        [--limit N] [--epochs 2 --lr 5e-5 --batch-size 16 --max-seq-len 128 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Without --base-url it starts `TEMPER serve` on a free loopback port (bound to port 0 first)
with a fresh --data-dir in a temp dir and --models-dir ASSETS/models, and stops it at the end
(its log is server.log in that data dir, whose path goes to stderr; the dir is removed after
a successful run unless --keep-data).

Flow: files.create(train.csv) and files.create(test.csv) with purpose fine-tune; the test
split is the job's validation file (temper evaluates it at each epoch end, checkpoints there
and keeps the best by validation accuracy, as the reference does); fine_tuning.jobs.create
with the recipe as method.supervised.hyperparameters (temper's extra keys learning_rate,
weight_decay, warmup_ratio, max_seq_len sit beside n_epochs and batch_size); poll every
second; then the test texts go to POST /v1/classifications in batches of 64 against
job.fine_tuned_model, and accuracy and macro F1 are computed here from the returned labels.

Timing, from the job's events (created_at is whole unix seconds):
- `train_samples_per_s`: from the per-step metrics events ("Step N/M: ..."). For each pair
  of consecutive step events the steps between them and the seconds between them are summed,
  except for the intervals that touch an evaluation/checkpoint step (a step event carrying
  validation metrics, or the last step of an epoch): those intervals hold a validation pass or
  a checkpoint write, which the reference's number excludes too. samples = steps x batch size.
  The rounding of created_at adds at most about one second per excluded interval.
- `train_seconds`: that pure-training time scaled to all steps (steps x seconds per step).
- `train_wall_seconds`: "Fine-tuning job started" to "New fine-tuned model created", i.e.
  model loading, tokenization, training, evaluations and checkpoints.
`predict_samples_per_s`: the test split through /v1/classifications (64 a request, one at a
time; the first request includes loading the model). `peak_rss_mb`: VmHWM of the temper
process from /proc/<pid>/status (null with --base-url), read before any --check-export.
With --check-export the merged download is loaded in transformers and compared with these
answers (`export_label_agreement`, `export_max_prob_diff`; see bench/check_export.py).
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from openai import OpenAI

from common import (RECIPE, accuracy_and_macro_f1, add_recipe_flags, emit, encoder_hyperparameters, read_split,
                    recipe_of, write_split)

TERMINAL = ("succeeded", "failed", "cancelled")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, models_dir):
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="temper-bench-")
    log = open(os.path.join(data_dir, "server.log"), "w")
    print(f"temper data dir: {data_dir}", file=sys.stderr)
    proc = subprocess.Popen(
        [binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data_dir,
         "--models-dir", models_dir],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base, data_dir
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"temper exited with {proc.returncode}; see {data_dir}/server.log")
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"temper was not healthy within 120 s; see {data_dir}/server.log")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    return None


def event_time(events, prefix):
    times = [e.created_at for e in events if e.message.startswith(prefix)]
    if not times:
        sys.exit(f"no event starting with {prefix!r}")
    return min(times)


def pure_training_pace(events, n_epochs):
    """(steps, seconds, total_steps): steps and seconds summed over the step-to-step intervals
    free of evaluation and checkpoint work, from the metrics events (see the module docstring)."""
    steps = {}
    for e in events:
        data = e.data if isinstance(e.data, dict) else None
        if e.type == "metrics" and data and "step" in data:
            steps.setdefault(int(data["step"]), (e.created_at, data))
    if not steps:
        return 0, 0, 0
    total_steps = int(next(iter(steps.values()))[1].get("total_steps") or max(steps))
    per_epoch = max(total_steps // max(n_epochs, 1), 1)

    def boundary(step, data):
        return data.get("valid_loss") is not None or step % per_epoch == 0

    ordered = sorted((step, t, boundary(step, data)) for step, (t, data) in steps.items())
    n_steps = seconds = 0
    for (s0, t0, b0), (s1, t1, b1) in zip(ordered, ordered[1:]):
        if not (b0 or b1):
            n_steps += s1 - s0
            seconds += t1 - t0
    return n_steps, seconds, total_steps


def classify(client, model, texts, batch=64):
    """(labels, rows): temper's predicted label and its full answer row for each text."""
    rows = []
    for start in range(0, len(texts), batch):
        reply = client.post("/classifications", cast_to=httpx.Response,
                            body={"model": model, "input": texts[start:start + batch]})
        rows += sorted(reply.json()["data"], key=lambda row: row["index"])
    if len(rows) != len(texts):
        sys.exit(f"/v1/classifications answered {len(rows)} rows for {len(texts)} inputs")
    return [row["label"] for row in rows], rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_flags(parser)
    parser.add_argument("--temper", default="target/release/temper", help="temper binary to start")
    parser.add_argument("--base-url", help="use an already running temper (e.g. http://127.0.0.1:8080)")
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the started temper's data dir (it is kept anyway when the run fails)")
    parser.add_argument("--check-export", action="store_true",
                        help="also download the merged export and compare transformers' predictions (bench/check_export.py)")
    args = parser.parse_args()

    data_dir = os.path.join(args.assets, "data", "rotten_tomatoes")
    train_x, train_y = read_split(os.path.join(data_dir, "train.csv"), args.limit)
    test_x, test_y = read_split(os.path.join(data_dir, "test.csv"), args.limit)
    upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
    write_split(os.path.join(upload_dir, "train.csv"), train_x, train_y)
    write_split(os.path.join(upload_dir, "test.csv"), test_x, test_y)

    proc, base, server_dir = (None, args.base_url.rstrip("/"), None) if args.base_url else start_server(
        args.temper, os.path.abspath(os.path.join(args.assets, "models")))
    succeeded = False
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, timeout=600, max_retries=0)
        with open(os.path.join(upload_dir, "train.csv"), "rb") as f:
            training_file = client.files.create(file=("rotten_tomatoes_train.csv", f), purpose="fine-tune")
        with open(os.path.join(upload_dir, "test.csv"), "rb") as f:
            validation_file = client.files.create(file=("rotten_tomatoes_test.csv", f), purpose="fine-tune")
        shutil.rmtree(upload_dir, ignore_errors=True)
        job = client.fine_tuning.jobs.create(
            model=RECIPE["model"], training_file=training_file.id, validation_file=validation_file.id,
            seed=args.seed, suffix="bench",
            method={"type": "supervised", "supervised": {"hyperparameters": encoder_hyperparameters(args)}})
        print(f"job {job.id} created", file=sys.stderr)
        while job.status not in TERMINAL:
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded" or not job.fine_tuned_model:
            sys.exit(f"job {job.id} ended {job.status}: {job.error}")

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))  # the SDK pages on
        started = event_time(events, "Fine-tuning job started")
        wall = event_time(events, "New fine-tuned model created") - started
        pace_steps, pace_seconds, total_steps = pure_training_pace(events, args.epochs)
        if pace_steps and pace_seconds:
            samples_per_s = pace_steps * args.batch_size / pace_seconds
            train_seconds = total_steps * pace_seconds / pace_steps
        else:  # too few steps to see a pace (smoke runs): fall back to the wall time
            samples_per_s = len(train_x) * args.epochs / max(wall, 1)
            train_seconds = wall

        predict_start = time.perf_counter()
        predicted, rows = classify(client, job.fine_tuned_model, test_x)
        predict_seconds = time.perf_counter() - predict_start
        accuracy, f1 = accuracy_and_macro_f1(test_y, predicted)
        peak_rss = peak_rss_mb(proc.pid) if proc else None
        export = {}
        if args.check_export:
            from check_export import check_export
            export = check_export(base, args.api_key, job.id, test_x, rows, args.max_seq_len)
        emit({
            "impl": "temper", "accuracy": round(accuracy, 4), "f1": round(f1, 4),
            "train_examples": len(train_x), "test_examples": len(test_x), "epochs": args.epochs,
            "optimizer_steps": total_steps, "trained_tokens": job.trained_tokens,
            "fine_tuned_model": job.fine_tuned_model,
            "train_seconds": round(train_seconds, 2), "train_wall_seconds": wall,
            "train_samples_per_s": round(samples_per_s, 2),
            "timed_steps": pace_steps, "timed_seconds": pace_seconds,
            "predict_samples_per_s": round(len(test_x) / predict_seconds, 2),
            "peak_rss_mb": round(peak_rss, 1) if peak_rss else None,
            "recipe": recipe_of(args), **export,
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
