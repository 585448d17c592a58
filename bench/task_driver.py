"""What the temper-side drivers of the NER, QA, DPO and image benchmarks share: start (or reach) the
service, upload the two files, create the job and wait for it, read its events, and measure
the pure-training pace from the per-step metrics events as bench/classification.py does.

Pace: for each pair of consecutive step events (`type: "metrics"`, data with `step`), the
steps and seconds between them are summed, except for the intervals that touch step 0, an
epoch end, or an event carrying validation metrics (any `valid_*` / `full_valid_*` value):
those hold a validation pass or a checkpoint write, which the references leave out too.
created_at is whole seconds; without such intervals (smoke runs) the caller falls back to
the wall time from "Fine-tuning job started" to "New fine-tuned model created".
"""
import os
import shutil
import subprocess
import sys
import time

import httpx
from openai import OpenAI

from classification import TERMINAL, peak_rss_mb, start_server


class Service:
    """A started `temper serve` (stopped by close) or one already running at --base-url."""

    def __init__(self, args):
        if args.base_url:
            self.proc, self.base, self.data_dir = None, args.base_url.rstrip("/"), None
        else:
            self.proc, self.base, self.data_dir = start_server(
                args.temper, os.path.abspath(os.path.join(args.assets, "models")))
        self.pid = self.proc.pid if self.proc else getattr(args, "pid", None)
        self.keep_data = args.keep_data
        self.client = OpenAI(base_url=f"{self.base}/v1", api_key=args.api_key, timeout=1800, max_retries=0)

    def peak_rss_mb(self):
        return round(peak_rss_mb(self.pid), 1) if self.pid else None

    def post(self, path, body):
        """A JSON POST to a temper route the SDK does not know; exits on an error answer."""
        reply = self.client.post(path, cast_to=httpx.Response, body=body)
        if reply.status_code != 200:
            sys.exit(f"POST {path} answered {reply.status_code}: {reply.text[:500]}")
        return reply.json()

    def close(self, succeeded):
        if not self.proc:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if succeeded and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def add_service_flags(parser):
    parser.add_argument("--temper", default="target/release/temper", help="temper binary to start")
    parser.add_argument("--base-url", help="use an already running temper (e.g. http://127.0.0.1:8080)")
    parser.add_argument("--pid", type=int, help="with --base-url: the server's pid, for its peak RSS")
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the started temper's data dir (it is kept anyway when the run fails)")


def fine_tune(client, model, train_path, valid_path, seed, method, names):
    """Uploads both files (only the training file when valid_path is None: a job without
    validation), creates the job with `method` and waits for it to succeed."""
    with open(train_path, "rb") as f:
        training_file = client.files.create(file=(names[0], f), purpose="fine-tune")
    validation = {}
    if valid_path:
        with open(valid_path, "rb") as f:
            validation["validation_file"] = client.files.create(file=(names[1], f), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=model, training_file=training_file.id, seed=seed, suffix="bench",
                                         method=method, **validation)
    print(f"job {job.id} created", file=sys.stderr)
    while job.status not in TERMINAL:
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded" or not job.fine_tuned_model:
        sys.exit(f"job {job.id} ended {job.status}: {job.error}")
    return job


def metric_steps(events):
    """{step: (created_at, data)}: the first metrics event of each step."""
    steps = {}
    for e in sorted(events, key=lambda e: e.created_at):
        data = e.data if isinstance(e.data, dict) else None
        if e.type == "metrics" and data and data.get("step") is not None:
            steps.setdefault(int(data["step"]), (e.created_at, data))
    return steps


def has_validation(data):
    return any(v is not None and (k.startswith("valid_") or k.startswith("full_valid_")) for k, v in data.items())


def validation_value(data, name):
    """`full_valid_<name>` when the event has it, else `valid_<name>`, else None."""
    for key in (f"full_valid_{name}", f"valid_{name}"):
        if data.get(key) is not None:
            return data[key]
    return None


def pure_training_pace(steps, n_epochs):
    """(timed steps, timed seconds, timed tokens, total steps); see the module docstring.
    Timed tokens come from the events' `tokens_seen` and are None when an event lacks it."""
    trained = [s for s in steps if s > 0]
    if not trained:
        return 0, 0, None, 0
    total = int(steps[max(trained)][1].get("total_steps") or max(trained))
    per_epoch = max(total // max(n_epochs, 1), 1)
    ordered = sorted((s, t, s == 0 or s % per_epoch == 0 or has_validation(d), d.get("tokens_seen"))
                     for s, (t, d) in steps.items())
    n_steps = seconds = tokens = 0
    for (s0, t0, b0, k0), (s1, t1, b1, k1) in zip(ordered, ordered[1:]):
        if not (b0 or b1):
            n_steps, seconds = n_steps + s1 - s0, seconds + t1 - t0
            tokens = tokens + k1 - k0 if tokens is not None and k0 is not None and k1 is not None else None
    return n_steps, seconds, tokens, total


def event_time(events, prefix):
    times = [e.created_at for e in events if (e.message or "").startswith(prefix)]
    return min(times) if times else None


def training_timing(client, job, n_examples, epochs, batch_size):
    """Events, steps and the timing keys every driver prints: train_samples_per_s,
    train_seconds, train_wall_seconds, timed_steps, timed_seconds, timed_tokens, optimizer_steps."""
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))  # the SDK pages on
    steps = metric_steps(events)
    started, created = event_time(events, "Fine-tuning job started"), event_time(events, "New fine-tuned model created")
    if started is None or created is None:
        started, created = job.created_at, job.finished_at or job.created_at
    wall = max(created - started, 1)
    pace_steps, pace_seconds, pace_tokens, total = pure_training_pace(steps, epochs)
    if pace_steps and pace_seconds:
        samples_per_s = pace_steps * batch_size / pace_seconds
        train_seconds = total * pace_seconds / pace_steps
    else:  # too few steps to see a pace (smoke runs): fall back to the wall time
        samples_per_s, train_seconds = n_examples * epochs / wall, wall
    return events, steps, {
        "optimizer_steps": total, "train_seconds": round(train_seconds, 2), "train_wall_seconds": wall,
        "train_samples_per_s": round(samples_per_s, 2), "timed_steps": pace_steps, "timed_seconds": pace_seconds,
        "timed_tokens": pace_tokens if pace_steps else None,
    }
