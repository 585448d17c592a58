"""Estimates against the runs they estimate, on real weights.

Starts `temper serve` on a fresh data dir, then for each size asks
`POST /v1/fine_tuning/estimates`, creates the same job, waits for it and prints one JSON line:
the estimate's tokens, steps, peak memory and duration (with its basis) beside the job's
trained tokens and its seconds from create to `succeeded`. Sizes run in order, so the first
job is estimated by the FLOPs model and the later ones by the history of the earlier ones.

    python3 bench/estimate_accuracy.py minilm 256 1024 2048
    python3 bench/estimate_accuracy.py smollm 64 256 512

Needs `scripts/fetch-assets.sh assets [--llm]` and a release build (`--bin`).
"""
import argparse
import csv
import json
import random
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

RECIPES = {
    # Full fine-tuning of the classifier, as bench/classification.py's recipe.
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", {"n_epochs": 1, "batch_size": 16}),
    # LoRA on chat data made from the same reviews.
    "smollm": ("HuggingFaceTB/SmolLM2-135M-Instruct",
               {"n_epochs": 1, "batch_size": 8, "lora_rank": 8}),
}


class Temper:
    def __init__(self, base):
        self.base = base

    def call(self, method, path, body=None, raw=None, ctype="application/json"):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", ctype)
        with urllib.request.urlopen(request) as reply:
            return json.loads(reply.read())

    def upload(self, name, content):
        boundary = "temper-estimate-accuracy"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
                f"fine-tune\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
        body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={boundary}"
        return self.call("POST", "/files", raw=body, ctype=ctype)["id"]

    def estimate_then_run(self, body):
        estimate = self.call("POST", "/fine_tuning/estimates", body)
        started = time.monotonic()
        job = self.call("POST", "/fine_tuning/jobs", body)
        while True:
            job = self.call("GET", f"/fine_tuning/jobs/{job['id']}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        actual = time.monotonic() - started
        device = estimate["devices"][0]
        return {
            "status": job["status"],
            "training_examples": estimate["training_examples"],
            "total_steps": estimate["total_steps"],
            "trained_tokens_estimated": estimate["trained_tokens"],
            "trained_tokens_job": job["trained_tokens"],
            "peak_memory_estimated_mib": round(device["memory"]["total_bytes"] / 2**20),
            "seconds_estimated": round(device["duration"]["seconds"], 1),
            "basis": device["duration"]["basis"],
            "seconds_actual": round(actual, 1),
        }


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def training_file(recipe, rows):
    if recipe == "minilm":
        lines = "".join(f"\"{r['text'].replace(chr(34), '')}\",{r['label']}\n" for r in rows)
        return "rt.csv", ("text,label\n" + lines).encode()
    chats = "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Is this review fresh or rotten? {r['text']}"},
        {"role": "assistant", "content": r["label"]}]}) + "\n" for r in rows)
    return "chat.jsonl", chats.encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--bin", default="target/release/temper")
    parser.add_argument("--assets", default="assets")
    args = parser.parse_args()
    model, hyperparameters = RECIPES[args.recipe]
    port = free_port()
    server = subprocess.Popen(
        [args.bin, "serve", "--port", str(port), "--data-dir", tempfile.mkdtemp(),
         "--models-dir", f"{args.assets}/models"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temper = Temper(f"http://127.0.0.1:{port}/v1")
    try:
        for _ in range(200):
            try:
                temper.call("GET", "/models")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        with open(f"{args.assets}/data/rotten_tomatoes/train.csv") as f:
            rows = list(csv.DictReader(f))
        random.Random(0).shuffle(rows)
        for n in args.sizes:
            name, content = training_file(args.recipe, rows[:n])
            body = {"model": model, "training_file": temper.upload(name, content),
                    "method": {"type": "supervised",
                               "supervised": {"hyperparameters": hyperparameters}}}
            result = temper.estimate_then_run(body)
            print(json.dumps({"recipe": args.recipe, "n": n, **result}), flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
