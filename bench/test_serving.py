"""Unit tests of the serving benchmark's arithmetic and client (bench/serving.py): the
percentiles, a run's summary, and the streaming client against a stdlib stand-in server
that streams SSE chunks (with and without usage) and answers 429.

    .venv-bench/bin/python -m unittest discover -s bench -p 'test_*.py'
"""
import asyncio
import json
import os
import pathlib
import sys
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import serving  # noqa: E402

CHUNK_PAUSE = 0.02


class FakeCompletions(BaseHTTPRequestHandler):
    """POST /v1/completions: model "busy" answers 429; otherwise `max_tokens` one-token chunks,
    CHUNK_PAUSE apart, then a usage chunk when stream_options.include_usage, then [DONE]."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body["model"] == "busy":
            payload = b'{"error": {"message": "queue full"}}'
            self.send_response(429)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        usage = (body.get("stream_options") or {}).get("include_usage")
        for i in range(body["max_tokens"]):
            time.sleep(CHUNK_PAUSE)
            chunk = {"choices": [{"index": 0, "text": f" w{i}", "finish_reason": None}]}
            if usage:
                chunk["usage"] = None
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        final = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        self.wfile.write(f"data: {json.dumps(final)}\n\n".encode())
        if usage:
            tail = {"choices": [], "usage": {"prompt_tokens": 64, "completion_tokens": body["max_tokens"]}}
            self.wfile.write(f"data: {json.dumps(tail)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class Percentiles(unittest.TestCase):
    def test_linear_between_closest_ranks(self):
        self.assertEqual(serving.percentile([4, 1, 3, 2], 50), 2.5)
        self.assertEqual(serving.percentile([1, 2, 3, 4, 5], 50), 3)
        self.assertAlmostEqual(serving.percentile(list(range(101)), 99), 99.0)
        self.assertAlmostEqual(serving.percentile([0.0, 10.0], 99), 9.9)
        self.assertEqual(serving.percentile([7], 99), 7)
        self.assertIsNone(serving.percentile([], 50))


class Summary(unittest.TestCase):
    def test_tokens_per_second_and_latencies_over_the_answered_requests(self):
        results = [
            {"status": 200, "tokens": 4, "ttft": 1.0, "gaps": [0.1, 0.1, 0.1], "error": None},
            {"status": 200, "tokens": 3, "ttft": 3.0, "gaps": [0.2, 0.3], "error": None},
            {"status": 429, "tokens": 0, "ttft": None, "gaps": [], "error": "queue full"},
        ]
        run = serving.summarize(3, results, 2.0, 4, 100.0, 150.0, True, "usage")
        self.assertEqual(run["completion_tokens"], 7)
        self.assertEqual(run["tokens_per_s"], 3.5)
        self.assertEqual((run["ok"], run["non_200"]), (2, 1))
        self.assertEqual(run["status_codes"], {"200": 2, "429": 1})
        self.assertEqual(run["requests_exact"], 1)
        self.assertEqual((run["ttft_mean_s"], run["ttft_p50_s"]), (2.0, 2.0))
        self.assertEqual(run["itl_samples"], 5)
        self.assertEqual(run["itl_p50_ms"], 100.0)
        self.assertEqual((run["rss_start_mb"], run["peak_rss_mb"]), (100.0, 150.0))


class StreamingClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCompletions)
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def test_usage_counts_and_chunk_timing(self):
        bodies = [{"model": "m", "prompt": "p", "max_tokens": 5, "stream": True,
                   "stream_options": {"include_usage": True}},
                  {"model": "m", "prompt": "p", "max_tokens": 3, "stream": True},
                  {"model": "busy", "prompt": "p", "max_tokens": 3, "stream": True}]
        results, wall = asyncio.run(serving.load(self.base, bodies))
        with_usage, by_chunks, refused = results
        self.assertEqual(with_usage["tokens"], 5)
        self.assertEqual(with_usage["usage"]["prompt_tokens"], 64)
        self.assertEqual(len(with_usage["gaps"]), 4)
        self.assertGreaterEqual(with_usage["ttft"], CHUNK_PAUSE * 0.9)
        self.assertTrue(all(g >= CHUNK_PAUSE * 0.5 for g in with_usage["gaps"]))
        self.assertEqual((by_chunks["tokens"], by_chunks["usage"], len(by_chunks["gaps"])), (3, None, 2))
        self.assertEqual(refused["status"], 429)
        self.assertIn("queue full", refused["error"])
        # The streams ran at once: the wall time is about the longest, not the sum.
        self.assertLess(wall, 8 * CHUNK_PAUSE + 1.0)


class ProcessMemory(unittest.TestCase):
    def test_reads_and_resets_own_peak(self):
        self.assertGreater(serving.proc_status_mb(os.getpid(), "VmRSS"), 0)
        if serving.reset_peak_rss("self"):
            hwm, rss = serving.proc_status_mb("self", "VmHWM"), serving.proc_status_mb("self", "VmRSS")
            self.assertLess(hwm - rss, 64)


if __name__ == "__main__":
    unittest.main()
