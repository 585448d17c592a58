#!/usr/bin/env python3
"""A stand-in for `temper serve` that speaks only the part of the API that
bench/classification.py uses, so the driver can be checked without a release build:

    .venv-bench/bin/python bench/classification.py --assets assets --limit 64 --temper bench/fake_temper.py

It accepts `serve --host H --port P ...`, stores uploads in memory, "trains" instantly and
writes events whose timestamps follow a known pace: 0.4 s per optimizer step, plus 5 s for
the evaluation and checkpoint at each epoch end. With batch 16 the driver must therefore
report train_samples_per_s = 40. /v1/classifications answers `fresh` for every input.
GET .../download?format=merged serves a tar of the directory named by FAKE_EXPORT_DIR (any
Hugging Face sequence-classification directory, e.g. a reference Trainer checkpoint).
"""
import argparse
import itertools
import json
import io
import math
import os
import re
import tarfile
import threading
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SECONDS_PER_STEP, EVAL_SECONDS, T0 = 0.4, 5, 1_700_000_000
FILES, JOBS, EVENTS = {}, {}, {}
IDS = itertools.count(1)
LOCK = threading.Lock()


def n_examples(data):
    return max(len(data.decode().strip().splitlines()) - 1, 0)


def make_events(job_id, n_train, hp):
    per_epoch = math.ceil(n_train / hp["batch_size"])
    total = per_epoch * hp["n_epochs"]
    events = [(T0, "message", "Fine-tuning job started", None)]
    clock = T0 + 3.0  # model loading and tokenisation
    for step in range(1, total + 1):
        clock += SECONDS_PER_STEP
        epoch_end = step % per_epoch == 0
        if epoch_end:
            clock += EVAL_SECONDS  # validation before the step's event ...
        data = {"step": step, "total_steps": total, "train_loss": 0.5,
                "valid_loss": 0.4 if epoch_end else None}
        events.append((int(clock), "metrics", f"Step {step}/{total}: training loss=0.5000", data))
        if epoch_end:
            clock += 1  # ... and the checkpoint after it
    events.append((int(clock) + 1, "message", f"New fine-tuned model created: ft:{job_id}", None))
    return [{"id": f"ftevent-{i}", "object": "fine_tuning.job.event", "created_at": t, "level": "info",
             "type": kind, "message": message, "data": data}
            for i, (t, kind, message, data) in enumerate(events)][::-1]  # newest first


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body, status=200):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def send_tar(self, directory):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(directory, arcname="export-merged")
        self.send_response(200)
        self.send_header("content-type", "application/x-tar")
        self.send_header("content-length", str(buffer.tell()))
        self.end_headers()
        self.wfile.write(buffer.getvalue())

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/health":
            return self.reply({"status": "ok"})
        if url.path.endswith("/download") and os.environ.get("FAKE_EXPORT_DIR"):
            return self.send_tar(os.environ["FAKE_EXPORT_DIR"])
        match = re.fullmatch(r"/v1/fine_tuning/jobs/([^/]+)(/events)?", url.path)
        if not match or match.group(1) not in JOBS:
            return self.reply({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)
        if not match.group(2):
            return self.reply(JOBS[match.group(1)])
        events, limit = EVENTS[match.group(1)], int(query.get("limit", 20))
        start = next((i + 1 for i, e in enumerate(events) if e["id"] == query.get("after")), 0)
        page = events[start:start + limit]
        return self.reply({"object": "list", "data": page, "has_more": start + limit < len(events)})

    def do_POST(self):
        path = urlparse(self.path).path
        if path == "/v1/files":
            head = f"content-type: {self.headers['content-type']}\r\n\r\n".encode()
            message = BytesParser().parsebytes(head + self.body())
            parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
            data = parts["file"].get_payload(decode=True)
            file_id = f"file-{next(IDS)}"
            FILES[file_id] = data
            return self.reply({"id": file_id, "object": "file", "bytes": len(data), "created_at": T0,
                               "filename": parts["file"].get_filename(), "status": "processed",
                               "purpose": parts["purpose"].get_payload(decode=True).decode()})
        request = json.loads(self.body())
        if path == "/v1/fine_tuning/jobs":
            hp = request["method"]["supervised"]["hyperparameters"]
            job_id = f"ftjob-{next(IDS)}"
            n_train = n_examples(FILES[request["training_file"]])
            with LOCK:
                EVENTS[job_id] = make_events(job_id, n_train, hp)
                JOBS[job_id] = {"id": job_id, "object": "fine_tuning.job", "model": request["model"],
                                "created_at": T0, "status": "succeeded", "fine_tuned_model": f"ft:{job_id}",
                                "trained_tokens": 1234, "training_file": request["training_file"],
                                "validation_file": request.get("validation_file"), "seed": request["seed"],
                                "hyperparameters": hp, "error": None, "finished_at": T0 + 1,
                                "organization_id": "temper", "result_files": []}
                reply = dict(JOBS[job_id], status="validating_files")
            return self.reply(reply)
        if path == "/v1/classifications":
            inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
            data = [{"index": i, "label": "fresh", "score": 0.9, "scores": {"fresh": 0.9, "rotten": 0.1}}
                    for i, _ in enumerate(inputs)]
            return self.reply({"id": "cls-1", "object": "list", "model": request["model"], "data": data})
        return self.reply({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args, _ = parser.parse_known_args()
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
