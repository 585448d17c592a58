"""A webhook receiver for scripts/sdk-test.sh: listens on 127.0.0.1 (a free port, written to
DIR/port), answers 200 to every POST and stores each as DIR/<n>.json with its headers and
body (verbatim, for signature checks). Runs until killed.

    python tests/sdk/webhook_receiver.py DIR
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

OUT = Path(sys.argv[1])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        count = len(list(OUT.glob("*.json")))
        record = {"headers": dict(self.headers.items()), "body": body.decode("utf-8")}
        tmp = OUT / f"{count}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(OUT / f"{count}.json")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


OUT.mkdir(parents=True, exist_ok=True)
server = HTTPServer(("127.0.0.1", 0), Receiver)
(OUT / "port.tmp").write_text(str(server.server_address[1]))
(OUT / "port.tmp").rename(OUT / "port")
server.serve_forever()
