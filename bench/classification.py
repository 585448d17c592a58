"""The temper side of the classification benchmark: fine-tunes MiniLM-L6 through a running
temper with the official openai SDK, then classifies the test split through
/v1/classifications. Prints one JSON line with the same keys as the reference.

    python bench/classification.py --assets assets [--temper target/release/temper | --base-url URL]

Training time is measured between the job's "Fine-tuning job started" and "New fine-tuned
model created" events (so it includes checkpoint writes; no validation file is given, as
the reference evaluates only after training too). Peak RSS is the server's VmHWM.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from openai import OpenAI

from common import RECIPE, accuracy_and_macro_f1, emit, read_split


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, assets):
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="temper-bench-")
    proc = subprocess.Popen(
        [binary, "serve", "--port", str(port), "--data-dir", data_dir,
         "--models-dir", os.path.join(assets, "models")],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(data_dir, "server.log"), "w"))
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"temper exited early; see {data_dir}/server.log")
        time.sleep(0.1)
    sys.exit("temper did not become healthy")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def event_time(events, prefix):
    return next(e.created_at for e in events if e.message.startswith(prefix))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--temper", default="target/release/temper")
    parser.add_argument("--base-url", help="use an already running temper instead of starting one")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N train/test rows (smoke runs)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    args = parser.parse_args()

    proc, base = (None, args.base_url) if args.base_url else start_server(args.temper, args.assets)
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=600)
        data_dir = os.path.join(args.assets, "data", "rotten_tomatoes")
        train_path = os.path.join(data_dir, "train.csv")
        test_x, test_y = read_split(os.path.join(data_dir, "test.csv"))
        n_train = len(read_split(train_path)[0])
        if args.limit:
            lines = open(train_path, encoding="utf-8").read().splitlines(keepends=True)
            train_bytes = "".join(lines[:args.limit + 1]).encode()
            test_x, test_y, n_train = test_x[:args.limit], test_y[:args.limit], args.limit
        else:
            train_bytes = open(train_path, "rb").read()
        training_file = client.files.create(file=("train.csv", train_bytes), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=RECIPE["model"], training_file=training_file.id, seed=RECIPE["seed"],
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": args.epochs, "batch_size": RECIPE["batch_size"],
                "learning_rate": RECIPE["learning_rate"], "weight_decay": RECIPE["weight_decay"],
                "warmup_ratio": RECIPE["warmup_ratio"], "max_seq_len": RECIPE["max_seq_len"]}}})
        while job.status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded":
            sys.exit(f"job {job.id} ended {job.status}: {job.error}")
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        train_seconds = event_time(events, "New fine-tuned model created") - event_time(events, "Fine-tuning job started")

        predicted = []
        for start in range(0, len(test_x), 64):
            reply = client.post("/classifications", cast_to=httpx.Response,
                                body={"model": job.fine_tuned_model, "input": test_x[start:start + 64]})
            predicted += [row["label"] for row in reply.json()["data"]]
        accuracy, f1 = accuracy_and_macro_f1(test_y, predicted)
        emit({
            "impl": "temper", "accuracy": round(accuracy, 4), "f1": round(f1, 4),
            "train_examples": n_train, "epochs": args.epochs, "train_seconds": train_seconds,
            "train_samples_per_s": round(n_train * args.epochs / max(train_seconds, 1), 2),
            "trained_tokens": job.trained_tokens, "fine_tuned_model": job.fine_tuned_model,
            "peak_rss_mb": round(peak_rss_mb(proc.pid), 1) if proc else None,
        })
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
