"""temper's webhooks through the official `openai` Python SDK's verifier: every job that
ended while scripts/sdk-test.sh ran (the smoke and chat tests' jobs, and one this script
cancels) reached the receiver as `fine_tuning.job.<status>`, and `client.webhooks.unwrap`
accepts it with the server's secret; a changed body or another secret is refused.

    python tests/sdk/openai_sdk_webhooks.py BASE_URL RECEIVED_DIR SECRET MODEL

Exits non-zero on the first mismatch.
"""

import json
import sys
import time
from pathlib import Path

import openai
from openai import OpenAI

BASE_URL, RECEIVED, SECRET, MODEL = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
OTHER_SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"
client = OpenAI(base_url=BASE_URL.rstrip("/") + "/v1", api_key="sk-test")


def received():
    return [json.loads(p.read_text()) for p in sorted(RECEIVED.glob("*.json"))]


def wait_for(job_id):
    deadline = time.time() + 120
    while time.time() < deadline:
        for record in received():
            if json.loads(record["body"])["data"]["id"] == job_id:
                return record
        time.sleep(0.2)
    raise SystemExit(f"no webhook arrived for {job_id}")


# A job of our own, cancelled: its event is fresh, within the SDK's 5-minute tolerance.
lines = [json.dumps({"text": f"good {i}" if i % 2 else f"bad {i}", "label": "pos" if i % 2 else "neg"}) for i in range(20)]
upload = client.files.create(file=("w.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload.id, hyperparameters={"n_epochs": 50})
cancelled = client.fine_tuning.jobs.cancel(job.id)
assert cancelled.status == "cancelled", cancelled
record = wait_for(job.id)
event = client.webhooks.unwrap(record["body"], record["headers"], secret=SECRET)
assert event.type == "fine_tuning.job.cancelled", event
assert event.data.id == job.id, event
assert event.id.startswith("evt_") and event.id == record["headers"]["webhook-id"], event
assert event.object == "event", event
for body, secret in [(record["body"].replace(job.id, "ftjob-other"), SECRET), (record["body"], OTHER_SECRET)]:
    try:
        client.webhooks.unwrap(body, record["headers"], secret=secret)
    except openai.InvalidWebhookSignatureError:
        pass
    else:
        raise SystemExit("a changed body or another secret was accepted")

# Every job that ended has its event, signed with the secret (the older ones are checked
# without the SDK's 5-minute freshness window: they arrived while earlier tests ran).
by_job = {}
ended = [j for j in client.fine_tuning.jobs.list(limit=100) if j.status in ("succeeded", "failed", "cancelled")]
for ended_job in ended:
    wait_for(ended_job.id)
for record in received():
    client.webhooks.verify_signature(record["body"], record["headers"], secret=SECRET, tolerance=10**9)
    body = json.loads(record["body"])
    by_job.setdefault(body["data"]["id"], []).append(body["type"])
for ended_job in ended:
    # At-least-once: a repeat is allowed, another type is not.
    if set(by_job[ended_job.id]) != {f"fine_tuning.job.{ended_job.status}"}:
        raise SystemExit(f"{ended_job.id} ended {ended_job.status} but its webhooks say {by_job[ended_job.id]}")
succeeded = sum(1 for j in ended if j.status == "succeeded")
assert succeeded >= 1, "no job succeeded before this check"
print(f"webhooks: {len(ended)} ended jobs ({succeeded} succeeded), each signed and accepted by openai {openai.__version__}")
