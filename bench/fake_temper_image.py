#!/usr/bin/env python3
"""A stand-in for `temper serve` for bench/image.py: the files, jobs and events routes of
bench/fake_temper.py, with image-classification jobs, and /v1/classifications for image
inputs. It checks the driver's flow and arithmetic without a release build:

    .venv-bench/bin/python bench/image.py --assets assets --limit 200 --temper bench/fake_temper_image.py

Jobs: the training file must be an ImageFolder zip (`<class>/<file>.png` entries, at least two
classes) and the hyperparameters only the keys temper's image jobs take (ACCEPTED; an
unknown key is a 400, as in temper), with an `unfreeze_schedule` of {"epoch", "blocks"}
entries. No validation file, so no step-0 event; 0.4 s per optimizer step and 5 s at each
epoch end (a checkpoint), so the driver must report train_samples_per_s ≈ batch / 0.4 = 80
with batch 32. Each step's train_loss is 2.0 in epoch 1 and 1.0 after it:
train_loss_epochs [2.0, 1.0].

/v1/classifications: each input must be {"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}; the answer is the label of the image with the same bytes in
ASSETS/data/fashion_mnist/test.zip (ASSETS = the parent of --models-dir) or in an uploaded
zip, "unknown" otherwise, and the rows come back in reverse order: a driver that decodes, sends
and re-orders correctly scores accuracy = f1 = 1.0.
"""
import argparse
import base64
import hashlib
import io
import itertools
import json
import math
import os
import zipfile
from urllib.parse import urlparse

import fake_temper
from fake_temper import T0, Handler, ThreadingHTTPServer

SECONDS_PER_STEP, EPOCH_END_SECONDS = 0.4, 5
JOB_IDS = itertools.count(1)
LABELS = {}  # sha256 of PNG bytes -> class folder name
# The keys of method.supervised.hyperparameters an image job takes.
ACCEPTED = {"n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate", "optimizer", "weight_decay",
            "lr_scheduler", "warmup_ratio", "freeze_backbone", "head_hidden", "head_dropout", "unfreeze_schedule",
            "backbone_lr_multiplier", "image_size", "augment"}
DATA_URL = "data:image/png;base64,"


def image_zip(data):
    """{entry name: (label, PNG bytes)} of an ImageFolder zip, or None when it is not one."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return None
    with archive:
        entries = {}
        for name in archive.namelist():
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if len(parts) != 2 or not parts[1].endswith(".png"):
                return None
            entries[name] = (parts[0], archive.read(name))
    return entries if len({label for label, _ in entries.values()}) >= 2 else None


def remember(entries):
    for label, png in entries.values():
        LABELS[hashlib.sha256(png).hexdigest()] = label


def schedule_error(hp):
    schedule = hp.get("unfreeze_schedule", [])
    if not isinstance(schedule, list) or not all(
            isinstance(entry, dict) and set(entry) == {"epoch", "blocks"}
            and all(isinstance(entry[k], int) and entry[k] >= 1 for k in entry) for entry in schedule):
        return "unfreeze_schedule must be a list of {\"epoch\", \"blocks\"} with positive integers"
    return None


def make_events(job_id, n_train, hp):
    per_epoch = math.ceil(n_train / hp["batch_size"])
    total = per_epoch * hp["n_epochs"]
    events = [(T0, "message", "Fine-tuning job started", None)]
    clock = T0 + 3.0  # model loading and decoding
    for step in range(1, total + 1):
        clock += SECONDS_PER_STEP
        loss = 2.0 if step <= per_epoch else 1.0
        events.append((int(clock), "metrics", f"Step {step}/{total}: training loss={loss:.4f}",
                       {"step": step, "total_steps": total, "train_loss": loss}))
        if step % per_epoch == 0:
            clock += EPOCH_END_SECONDS
    events.append((int(clock) + 1, "message", f"New fine-tuned model created: ft:{job_id}", None))
    return [{"id": f"ftevent-{i}", "object": "fine_tuning.job.event", "created_at": t, "level": "info",
             "type": kind, "message": message, "data": data}
            for i, (t, kind, message, data) in enumerate(events)][::-1]  # newest first


def error(message, param=None):
    return {"error": {"message": message, "param": param, "type": "invalid_request_error", "code": None}}


class ImageHandler(Handler):
    def do_POST(self):
        path = urlparse(self.path).path
        if path == "/v1/files":
            super().do_POST()
            entries = image_zip(list(fake_temper.FILES.values())[-1])  # the upload just stored
            if entries:
                remember(entries)
            return None
        request = json.loads(self.body())
        if path == "/v1/fine_tuning/jobs":
            method = request.get("method", {})
            hp = method.get("supervised", {}).get("hyperparameters")
            if method.get("type") != "supervised" or not isinstance(hp, dict):
                return self.reply(error("bad method", "method"), 400)
            unknown = sorted(set(hp) - ACCEPTED)
            if unknown:
                return self.reply(error(f"Unknown hyperparameter `{unknown[0]}`", unknown[0]), 400)
            if schedule_error(hp):
                return self.reply(error(schedule_error(hp), "unfreeze_schedule"), 400)
            entries = image_zip(fake_temper.FILES.get(request["training_file"], b""))
            if entries is None:
                return self.reply(error("the training file is not an image-folder zip", "training_file"), 400)
            job_id = f"ftjob-i{next(JOB_IDS)}"
            fake_temper.EVENTS[job_id] = make_events(job_id, len(entries), hp)
            fake_temper.JOBS[job_id] = {
                "id": job_id, "object": "fine_tuning.job", "model": request["model"], "created_at": T0,
                "status": "succeeded", "fine_tuned_model": f"ft:{job_id}", "trained_tokens": None,
                "training_file": request["training_file"], "validation_file": request.get("validation_file"),
                "seed": request["seed"], "hyperparameters": None, "method": method, "error": None,
                "finished_at": T0 + 1, "organization_id": "temper", "result_files": []}
            return self.reply(dict(fake_temper.JOBS[job_id], status="validating_files"))
        if path == "/v1/classifications":
            items = request["input"] if isinstance(request["input"], list) else [request["input"]]
            data = []
            for i, item in enumerate(items):
                url = item.get("image_url", {}).get("url", "") if isinstance(item, dict) else ""
                if not isinstance(item, dict) or item.get("type") != "image_url" or not url.startswith(DATA_URL):
                    return self.reply(error(f"input {i} is not a PNG data URL image_url part", "input"), 400)
                label = LABELS.get(hashlib.sha256(base64.b64decode(url[len(DATA_URL):])).hexdigest(), "unknown")
                data.append({"index": i, "label": label, "score": 0.9, "scores": {label: 0.9}})
            return self.reply({"object": "list", "model": request["model"], "data": data[::-1]})
        return self.reply(error("not found"), 404)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--models-dir")
    args, _ = parser.parse_known_args()
    if args.models_dir:
        test_zip = os.path.join(os.path.dirname(os.path.abspath(args.models_dir)), "data", "fashion_mnist", "test.zip")
        if os.path.exists(test_zip):
            with open(test_zip, "rb") as f:
                remember(image_zip(f.read()) or {})
    ThreadingHTTPServer((args.host, args.port), ImageHandler).serve_forever()


if __name__ == "__main__":
    main()
