#!/usr/bin/env python3
"""SIGKILL at random points: does a fine-tuning job survive its server being killed?

Starts the release binary on a fresh data dir with the tiny random models
(examples/write_tiny_models.rs), uploads a classification set and starts a job on
test-org/tiny-bert with a checkpoint every few steps, then SIGKILLs the server at seeded
random moments N times, restarting it on the same data dir each time. At the end it checks
that the job succeeded, that every checkpoint directory on disk is listed (and every listed
one exists), that each checkpoint downloads as a tar whose safetensors are intact, that the
result files download, and that no tmp leftovers remain; prints what held as JSON (exit 1
when something did not).

    scripts/probe-sigkill.py [--kills 6] [--seed 8] [--keep]

Uses only the standard library. Builds `temper` and the example in release if missing
(CARGO_TARGET_DIR is honoured).
"""

import argparse
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "temper")
TINY = os.path.join(TARGET, "release", "examples", "write_tiny_models")
MODEL = "test-org/tiny-bert"
LEASE_SECS = 2

POSITIVE = ["great movie, amazing acting", "wonderful story and nice music",
            "i love it, would recommend", "amazing service, great place", "nice price, good day"]
NEGATIVE = ["horrible plot and dull acting", "bad movie, never again",
            "poor service, horrible place", "dull story, bad music", "i would never recommend it"]


def build():
    if os.path.exists(BIN) and os.path.exists(TINY):
        return
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "temper",
                    "--example", "write_tiny_models"], cwd=ROOT, check=True)


class Server:
    def __init__(self, work, env):
        self.work, self.env, self.proc, self.url, self.starts = work, env, None, None, 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.work, f"server-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", "0", "--data-dir", os.path.join(self.work, "data"),
             "--models-dir", os.path.join(self.work, "models")],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(log.name) as f:
                m = re.search(r"listening on (http://[0-9.:]+)", f.read())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {log.name}")
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


def request(url, method="GET", body=None, headers=None, raw=False):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = resp.read()
    return data if raw else json.loads(data)


def upload(base, name, content):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    return request(f"{base}/v1/files", "POST", body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def post_json(base, path, payload):
    return request(f"{base}{path}", "POST", json.dumps(payload).encode(),
                   {"Content-Type": "application/json"})


def safetensors_intact(data):
    """Header parses, offsets are contiguous and end exactly at the end of the file."""
    if len(data) < 8:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return len(data) == 8 + n + (max(ends) if ends else 0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--save-steps", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    build()
    work = tempfile.mkdtemp(prefix="temper-sigkill-")
    subprocess.run([TINY, os.path.join(work, "models")], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, TEMPER_WORKER_LEASE_SECS=str(LEASE_SECS),
               TEMPER_WORKER_POLL_MS="200",
               # Every kill is a lost lease, which counts: leave room for all of them.
               TEMPER_WORKER_MAX_ATTEMPTS=str(args.kills + 3), RUST_LOG="info")
    server = Server(work, env)
    server.start()
    rows = [{"text": (POSITIVE if i % 2 == 0 else NEGATIVE)[(i // 2) % 5] + f" #{i}",
             "label": "positive" if i % 2 == 0 else "negative"} for i in range(args.examples)]
    training = "".join(json.dumps(r) + "\n" for r in rows).encode()
    file_id = upload(server.url, "train.jsonl", training)["id"]
    job = post_json(server.url, "/v1/fine_tuning/jobs", {
        "model": MODEL, "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": args.epochs, "batch_size": 2, "save_steps": args.save_steps}}}})
    job_id = job["id"]
    kills = []
    for _ in range(args.kills):
        time.sleep(rng.uniform(0.3, 4.0))
        state = request(f"{server.url}/v1/fine_tuning/jobs/{job_id}")
        events = request(f"{server.url}/v1/fine_tuning/jobs/{job_id}/events?limit=1")["data"]
        server.kill()
        kills.append({"status": state["status"],
                      "last_event": events[0]["message"] if events else None})
        if state["status"] in ("succeeded", "failed", "cancelled"):
            server.start()
            break
        server.start()
    deadline = time.time() + 900
    while time.time() < deadline:
        state = request(f"{server.url}/v1/fine_tuning/jobs/{job_id}")
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    base = server.url
    listed = request(f"{base}/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=100")["data"]
    listed_steps = sorted(c["step_number"] for c in listed)
    ckpt_root = os.path.join(work, "data", "jobs", job_id, "checkpoints")
    names = os.listdir(ckpt_root) if os.path.isdir(ckpt_root) else []
    on_disk = sorted(int(n[5:]) for n in names if re.fullmatch(r"step-\d+", n))
    leftovers = [n for n in names if not re.fullmatch(r"step-\d+", n)]
    tmp_dir = os.path.join(work, "data", "tmp")
    leftovers += [f"tmp/{n}" for n in os.listdir(tmp_dir)] if os.path.isdir(tmp_dir) else []
    downloads, intact = {}, {}
    for step in listed_steps:
        try:
            data = request(f"{base}/v1/fine_tuning/jobs/{job_id}/download?step={step}", raw=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tensors = [m for m in tar.getmembers() if m.name.endswith(".safetensors")]
                downloads[step] = bool(tensors)
                intact[step] = all(safetensors_intact(tar.extractfile(m).read()) for m in tensors)
        except (urllib.error.URLError, tarfile.TarError) as error:
            downloads[step], intact[step] = False, False
            print(f"step {step}: {error}", file=sys.stderr)
    on_disk_intact = all(
        safetensors_intact(open(os.path.join(ckpt_root, f"step-{s}", "trainable.safetensors"),
                                "rb").read()) for s in on_disk)
    results_ok = []
    for fid in state.get("result_files") or []:
        try:
            results_ok.append(len(request(f"{base}/v1/files/{fid}/content", raw=True)) > 0)
        except urllib.error.URLError:
            results_ok.append(False)
    events = request(f"{base}/v1/fine_tuning/jobs/{job_id}/events?limit=1000")["data"]
    server.stop()
    report = {
        "seed": args.seed,
        "kills": len(kills),
        "killed_at": kills,
        "server_starts": server.starts,
        "job_status": state["status"],
        "job_error": state.get("error"),
        "lease_lost_events": sum("stopped responding" in e["message"] for e in events),
        "checkpoints_listed": len(listed_steps),
        "checkpoints_on_disk": len(on_disk),
        "dirs_without_row": sorted(set(on_disk) - set(listed_steps)),
        "rows_without_dir": sorted(set(listed_steps) - set(on_disk)),
        "held": {
            "job_succeeded": state["status"] == "succeeded",
            "every_checkpoint_dir_listed": set(on_disk) <= set(listed_steps),
            "every_listed_checkpoint_on_disk": set(listed_steps) <= set(on_disk),
            "checkpoints_downloadable": bool(downloads) and all(downloads.values()),
            "downloaded_files_intact": bool(intact) and all(intact.values()),
            "files_on_disk_intact": on_disk_intact,
            "result_files_downloadable": bool(results_ok) and all(results_ok),
            "no_tmp_leftovers": not leftovers,
        },
        "leftovers": leftovers,
    }
    print(json.dumps(report, indent=2))
    if args.keep:
        print(f"work dir kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(report["held"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
