#!/usr/bin/env python3
"""Long-generation abuse probe (issue 8): starts the release `temper` binary on
SmolLM2-135M-Instruct from the assets, sends the requests that used to take the server
down, samples its RSS, and prints what held as JSON.

    scripts/probe-long-generation.py [ASSETS_DIR] [--abandoned 50] [--events 128]

- `POST /v1/completions {"prompt": "hi", "max_tokens": 100000}` must be a 400
  `context_length_exceeded` naming `max_tokens` (it grew the server to 23 GB);
- chat with `max_tokens: 10**12`, plain and streamed, the same (it grew ~120 MB/s);
- 50 streamed long generations abandoned mid-way (5 at a time) must leave RSS within
  10% of its baseline once the server is idle again (it stayed ~3.5 GB higher).

The binary is `$CARGO_TARGET_DIR/release/temper` (built if missing). The GGUF may be
`models/SmolLM2-135M-Instruct.gguf` or `models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf`
under the assets: the assets' models dir is served as is and the model id read from
`/v1/models`. Only the standard library is used.
"""

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Sampler(threading.Thread):
    """Samples the server's RSS every 100 ms; `peak` is the largest seen."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return
            time.sleep(0.1)


def post(base, path, body, timeout=120):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def refused(base, path, body):
    """Status, error code, param and RSS growth of a request that must be a 400."""
    started = time.time()
    status, kind, raw = post(base, path, body)
    error = {}
    if "json" in kind:
        error = json.loads(raw).get("error", {})
    return {
        "status": status,
        "content_type": kind,
        "code": error.get("code"),
        "param": error.get("param"),
        "message": error.get("message"),
        "seconds": round(time.time() - started, 3),
    }


def abandon_stream(host, port, body, events):
    """Streams a chat completion and closes the socket after `events` SSE events."""
    connection = http.client.HTTPConnection(host, port, timeout=300)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    reply = connection.getresponse()
    if reply.status != 200:
        connection.close()
        return {"status": reply.status, "events": 0}
    seen = 0
    while seen < events:
        line = reply.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            seen += 1
            if line.strip() == b"data: [DONE]":
                break
    # Hang up the way a client that goes away does: the socket closes under the response.
    try:
        connection.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.sock.close()
    return {"status": 200, "events": seen}


def wait_idle(pid, settle_seconds):
    """Waits until the server's CPU time stops moving (no generation left running)."""
    deadline = time.time() + settle_seconds
    last = cpu_ticks(pid)
    while time.time() < deadline:
        time.sleep(1.0)
        now = cpu_ticks(pid)
        if now == last:
            return True
        last = now
    return False


def find_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "temper")
    if not os.access(binary, os.X_OK):
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "--bin", "temper"],
            cwd=ROOT,
            check=True,
        )
    return binary


def start_server(binary, models_dir, work):
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen(
        [binary, "serve", "--port", "0", "--data-dir", os.path.join(work, "data"),
         "--models-dir", models_dir],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "temper=info")},
    )
    for _ in range(600):
        with open(os.path.join(work, "server.log"), "rb") as text:
            found = re.search(rb"listening on (http://[0-9.]+:[0-9]+)", text.read())
        if found:
            return server, found.group(1).decode()
        if server.poll() is not None:
            break
        time.sleep(0.1)
    server.kill()
    sys.exit("temper did not start; see " + os.path.join(work, "server.log"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("assets", nargs="?", default=os.environ.get("TEMPER_ASSETS", "assets"))
    parser.add_argument("--abandoned", type=int, default=50)
    parser.add_argument("--events", type=int, default=128, help="events read before hanging up")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--settle", type=float, default=120, help="seconds to wait for idle")
    args = parser.parse_args()
    models_dir = os.path.join(os.path.abspath(args.assets), "models")
    candidates = [
        os.path.join(models_dir, "SmolLM2-135M-Instruct.gguf"),
        os.path.join(models_dir, "HuggingFaceTB", "SmolLM2-135M-Instruct.gguf"),
    ]
    if not any(os.path.exists(path) for path in candidates):
        sys.exit(f"no SmolLM2-135M-Instruct GGUF under {models_dir} (scripts/fetch-assets.sh)")
    binary = find_binary()
    work = tempfile.mkdtemp(prefix="temper-probe-")
    server, base = start_server(binary, models_dir, work)
    host, port = base[len("http://"):].rsplit(":", 1)
    sampler = Sampler(server.pid)
    sampler.start()
    result = {"binary": binary, "log": os.path.join(work, "server.log")}
    try:
        with urllib.request.urlopen(base + "/v1/models", timeout=60) as reply:
            models = [m["id"] for m in json.loads(reply.read())["data"]]
        model = next(m for m in models if "SmolLM2-135M" in m)
        result["model"] = model
        messages = [{"role": "user", "content": "Tell me a long story about the sea."}]
        status, _, _ = post(base, "/v1/chat/completions",
                            {"model": model, "messages": messages, "max_tokens": 8})
        if status != 200:
            sys.exit(f"warm-up chat answered {status}")
        time.sleep(1.0)
        baseline = rss_bytes(server.pid)
        result["baseline_rss_mb"] = round(baseline / 2**20, 1)
        checks = {}
        checks["completions_max_tokens_100000"] = refused(
            base, "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 100000})
        checks["chat_max_tokens_1e12"] = refused(
            base, "/v1/chat/completions",
            {"model": model, "messages": messages, "max_tokens": 10**12})
        checks["chat_max_tokens_1e12_stream"] = refused(
            base, "/v1/chat/completions",
            {"model": model, "messages": messages, "max_tokens": 10**12, "stream": True})
        checks["chat_max_completion_tokens_1e12"] = refused(
            base, "/v1/chat/completions",
            {"model": model, "messages": messages, "max_completion_tokens": 10**12})
        for name, expected_param in [
            ("completions_max_tokens_100000", "max_tokens"),
            ("chat_max_tokens_1e12", "max_tokens"),
            ("chat_max_tokens_1e12_stream", "max_tokens"),
            ("chat_max_completion_tokens_1e12", "max_completion_tokens"),
        ]:
            check = checks[name]
            check["held"] = (check["status"] == 400
                             and check["code"] == "context_length_exceeded"
                             and check["param"] == expected_param)
        result["rss_after_refusals_mb"] = round(rss_bytes(server.pid) / 2**20, 1)
        body = {"model": model, "messages": messages, "stream": True, "temperature": 0.7}
        started = time.time()
        with ThreadPoolExecutor(args.concurrency) as pool:
            runs = list(pool.map(lambda _: abandon_stream(host, int(port), body, args.events),
                                 range(args.abandoned)))
        idle = wait_idle(server.pid, args.settle)
        time.sleep(1.0)
        final = rss_bytes(server.pid)
        abandoned = {
            "count": len(runs),
            "answered_200": sum(1 for r in runs if r["status"] == 200),
            "events_read": sum(r["events"] for r in runs),
            "seconds": round(time.time() - started, 1),
            "server_went_idle": idle,
            "final_rss_mb": round(final / 2**20, 1),
            "within_10_percent_of_baseline": final <= baseline * 1.10,
        }
        abandoned["held"] = (abandoned["answered_200"] == len(runs) and idle
                             and abandoned["within_10_percent_of_baseline"])
        checks["abandoned_streams"] = abandoned
        result["checks"] = checks
        result["peak_rss_mb"] = round(sampler.peak / 2**20, 1)
        result["server_alive"] = server.poll() is None
        result["held"] = result["server_alive"] and all(c["held"] for c in checks.values())
    finally:
        sampler.running = False
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(result, indent=2))
    return 0 if result.get("held") else 1


if __name__ == "__main__":
    sys.exit(main())
