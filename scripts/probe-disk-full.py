#!/usr/bin/env python3
"""Disk-full probe: the data dir on a small tmpfs, filled through uploads and by another
process, then freed; SIGKILL mid-upload; restart. Prints what held as JSON (exit 1 if
anything did not).

Needs root (it mounts a tmpfs) and a release build:

    cargo build --release --locked
    sudo scripts/probe-disk-full.py [--bin target/release/temper] [--size-mib 64]

Only the standard library is used.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

CHUNK = 4 * 1024 * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, data_dir, models_dir, log_path):
        self.args = args
        self.data_dir = data_dir
        self.models_dir = models_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc = None
        self.early_replies = 0

    def start(self):
        log = open(self.log_path, "a")
        env = dict(os.environ, RUST_LOG="temper=info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [
                self.args.bin, "serve",
                "--port", str(self.port),
                "--data-dir", self.data_dir,
                "--models-dir", self.models_dir,
                "--disk-reserve-bytes", str(self.args.reserve_mib * 1024 * 1024),
                "--leftover-grace-secs", "0",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
            except (BrokenPipeError, ConnectionResetError):
                # The server answered (e.g. 507) before reading the whole body and closed
                # the connection; its reply is still there to read.
                self.early_replies += 1
            response = conn.getresponse()
            data = response.read()
            try:
                payload = json.loads(data) if data else None
            except ValueError:
                payload = data[:200].decode("utf-8", "replace")
            return response.status, payload
        finally:
            conn.close()

    def upload(self, size, purpose="user_data"):
        boundary = uuid.uuid4().hex
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = head + os.urandom(size) + tail
        return self.request(
            "POST", "/v1/files", body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    def start_partial_upload(self, sent_bytes):
        """Sends the start of a large upload and leaves it hanging (the socket is returned)."""
        boundary = uuid.uuid4().hex
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        declared = len(head) + 100 * 1024 * 1024
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(
            (
                "POST /v1/files HTTP/1.1\r\nHost: probe\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode() + head + os.urandom(sent_bytes)
        )
        return sock


def ls(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def fill_outside(mount):
    """Another process fills the disk: writes until ENOSPC. Returns the bytes written."""
    path = os.path.join(mount, "ballast")
    written = 0
    block = b"\0" * (1024 * 1024)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
                written += len(block)
        except OSError:
            pass
    return path, written


def log_count(log_path, needle):
    with open(log_path, errors="replace") as f:
        return sum(line.count(needle) for line in f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="target/release/temper")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--reserve-mib", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the probe mounts a tmpfs")
    args.bin = os.path.abspath(args.bin)

    work = tempfile.mkdtemp(prefix="temper-disk-probe-")
    mount = os.path.join(work, "mnt")
    os.makedirs(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mib}m", "tmpfs", mount], check=True)
    models = os.path.join(work, "models")
    os.makedirs(models)
    data = os.path.join(mount, "data")
    log_path = os.path.join(work, "server.log")
    result = {"tmpfs_mib": args.size_mib, "reserve_mib": args.reserve_mib, "server_log": log_path}
    server = Server(args, data, models, log_path)
    try:
        server.start()
        result["reserve_created"] = os.path.getsize(os.path.join(data, "space-reserve")) == args.reserve_mib << 20

        # 1. Fill the disk through uploads.
        acknowledged = []
        failures = []
        for _ in range(64):
            status, body = server.upload(CHUNK)
            if status == 200:
                acknowledged.append(body["id"])
            else:
                failures.append((status, body))
                if len(failures) >= 3:
                    break
        result["uploads_acknowledged_before_full"] = len(acknowledged)
        result["full_disk_statuses"] = [s for s, _ in failures]
        result["full_disk_envelope_ok"] = bool(failures) and all(
            s == 507
            and isinstance(b, dict)
            and b["error"]["code"] == "insufficient_storage"
            and b["error"]["type"] == "server_error"
            and "disk is full" in b["error"]["message"]
            for s, b in failures
        )
        result["reserve_released_when_full"] = not os.path.exists(os.path.join(data, "space-reserve"))
        result["health_while_full"] = server.request("GET", "/health")[0]
        result["list_while_full"] = server.request("GET", "/v1/files")[0]
        result["tmp_entries_after_failed_uploads"] = len(ls(os.path.join(data, "tmp")))

        # 2. Delete through the API on the full disk, then upload again (no restart).
        deleted = acknowledged[:3]
        result["deletes_on_full_disk"] = [
            server.request("DELETE", f"/v1/files/{file_id}")[0] for file_id in deleted
        ]
        acknowledged = acknowledged[3:]
        status, body = server.upload(CHUNK)
        result["upload_after_deletes"] = status
        if status == 200:
            acknowledged.append(body["id"])

        # 3. Another process fills the disk to the last byte; the database and deletes must
        # still work, then the space is freed.
        ballast, ballast_bytes = fill_outside(mount)
        result["ballast_mib"] = ballast_bytes >> 20
        status, body = server.upload(64 * 1024)
        result["upload_with_disk_full_outside"] = status
        if status == 200:
            acknowledged.append(body["id"])
        victim = acknowledged.pop(0)
        result["delete_with_disk_full_outside"] = server.request("DELETE", f"/v1/files/{victim}")[0]
        os.remove(ballast)
        statuses = []
        for _ in range(2):
            status, body = server.upload(CHUNK)
            statuses.append(status)
            if status == 200:
                acknowledged.append(body["id"])
        result["uploads_after_space_freed"] = statuses
        result["reserve_rearmed"] = os.path.exists(os.path.join(data, "space-reserve"))

        # 4. SIGKILL mid-upload: the partial file is left in tmp/ ...
        sock = server.start_partial_upload(6 * 1024 * 1024)
        time.sleep(1.0)
        result["tmp_entries_mid_upload"] = len(ls(os.path.join(data, "tmp")))
        server.stop(signal.SIGKILL)
        sock.close()
        # ... and a blob without a row, as left by a kill during validation.
        with open(os.path.join(data, "files", "file-orphanedbykill"), "wb") as f:
            f.write(os.urandom(1024 * 1024))

        # 5. Restart: every acknowledged upload is there, leftovers are swept.
        server.start()
        lost = []
        for file_id in acknowledged:
            status, body = server.request("GET", f"/v1/files/{file_id}")
            if status != 200 or not os.path.exists(os.path.join(data, "files", file_id)):
                lost.append(file_id)
        status, listing = server.request("GET", "/v1/files?limit=1000")
        listed = {f["id"] for f in listing["data"]} if status == 200 else set()
        result["acknowledged_after_restart"] = len(acknowledged)
        result["acknowledged_lost"] = lost
        result["deleted_still_listed"] = sorted(set(deleted) & listed)
        result["orphan_blobs_after_restart"] = sorted(set(ls(os.path.join(data, "files"))) - listed)
        result["tmp_entries_after_restart"] = len(ls(os.path.join(data, "tmp")))
        result["sweep_logged"] = log_count(log_path, "swept crash leftovers")
        result["database_is_locked_in_log"] = log_count(log_path, "database is locked")
        result["panics_in_log"] = log_count(log_path, "panicked")
        result["replies_before_the_body_was_read"] = server.early_replies
    finally:
        server.stop()
        subprocess.run(["umount", mount], check=False)

    held = {
        "507_with_insufficient_storage": result.get("full_disk_envelope_ok") is True,
        "health_and_reads_while_full": result.get("health_while_full") == 200
        and result.get("list_while_full") == 200,
        "no_partial_upload_left_by_a_507": result.get("tmp_entries_after_failed_uploads") == 0,
        "deletes_work_on_a_full_disk": result.get("deletes_on_full_disk") == [200, 200, 200]
        and result.get("delete_with_disk_full_outside") == 200,
        "recovers_without_restart": result.get("upload_after_deletes") == 200
        and result.get("uploads_after_space_freed") == [200, 200],
        "nothing_acknowledged_lost": result.get("acknowledged_lost") == [],
        "leftovers_swept_at_restart": result.get("orphan_blobs_after_restart") == []
        and result.get("tmp_entries_after_restart") == 0,
        "never_database_is_locked": result.get("database_is_locked_in_log") == 0,
    }
    result["held"] = held
    print(json.dumps(result, indent=2))
    sys.exit(0 if all(held.values()) else 1)


if __name__ == "__main__":
    main()
