"""Validates temper's responses against OpenAI's published OpenAPI spec.

Drives a running temper (tiny random models from `write_tiny_models`) through every object
on the OpenAI surface and checks each real response against the spec's component schema:
files (upload, retrieve, list, delete), fine-tuning jobs (created, succeeded, failed,
cancelled, paused, DPO), their events and checkpoints, models (list, retrieve, delete),
chat completions and completions (plain and every streamed chunk, with usage and
logprobs), and error envelopes (400, 401, 404, 413).

    python openai_conformance.py BASE_URL API_KEY SPEC_YAML

The spec is OpenAPI 3.1 with OpenAI's 3.0 leftovers, converted before use (see
`convert_openapi_30`). Exits 1 listing every violation. Standard library + jsonschema +
PyYAML only.
"""

import copy
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import jsonschema
import yaml

CLASSIFIER = "test-org/tiny-bert"
DECODER = "test-org/tiny-llama"

# Values temper returns on purpose that the spec's enums do not list. OpenAI's own example
# for `POST /fine_tuning/jobs/{id}/pause` answers `"status": "paused"`, an enum value its
# `FineTuningJob` schema omits; `pausing` is the step before it.
STATUS_EXTENSIONS = ["pausing", "paused"]

# OpenAI's spec has no schema for streamed text completions: they are
# `CreateCompletionResponse` objects with the two differences OpenAI documents for streams
# (`stream_options.include_usage`: "All other chunks will also include a usage field, but
# with a null value"; `finish_reason` is null until a choice's last chunk). This derived
# schema allows exactly those; `check_completion_stream` requires each choice's last chunk
# to carry a real `finish_reason`.
COMPLETION_CHUNK = "CompletionStreamChunk"


def convert_openapi_30(node):
    """OpenAPI 3.0 keywords the 3.1 document still uses, as JSON Schema 2020-12:
    `nullable: true` → the type or schema also admits null; boolean `exclusiveMinimum` /
    `exclusiveMaximum` → the number from `minimum` / `maximum`."""
    if isinstance(node, list):
        return [convert_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: convert_openapi_30(value) for key, value in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), bool):
            if node.pop(exclusive) and bound in node:
                node[exclusive] = node.pop(bound)
    if node.pop("nullable", False):
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
            if "enum" in node:
                node["enum"] = list(node["enum"]) + [None]
        elif isinstance(kind, list):
            node["type"] = list(kind) + ["null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


class Spec:
    def __init__(self, path):
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
        self.components = convert_openapi_30(document["components"])
        status = self.components["schemas"]["FineTuningJob"]["properties"]["status"]
        status["enum"] = status["enum"] + STATUS_EXTENSIONS
        schemas = self.components["schemas"]
        chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
        choice = chunk["properties"]["choices"]["items"]["properties"]
        choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
        chunk["properties"]["usage"] = {"anyOf": [chunk["properties"]["usage"], {"type": "null"}]}
        schemas[COMPLETION_CHUNK] = chunk
        self.failures = []
        self.checked = {}

    def check(self, schema_name, instance, what):
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": self.components}
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        self.checked[schema_name] = self.checked.get(schema_name, 0) + 1
        for error in errors:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            self.failures.append(f"{what} vs {schema_name}: at {path}: {error.message[:300]}")


class Client:
    def __init__(self, base_url, key):
        self.base_url = base_url.rstrip("/")
        self.key = key

    def request(self, method, path, body=None, headers=None, key=None, raw=None):
        data = raw
        all_headers = {"Authorization": f"Bearer {key or self.key}"}
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                return reply.status, reply.read(), dict(reply.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def json(self, method, path, body=None, expect=200, **kwargs):
        status, payload, _ = self.request(method, path, body, **kwargs)
        if status != expect:
            raise AssertionError(f"{method} {path}: {status} (wanted {expect}): {payload[:500]!r}")
        return json.loads(payload)

    def upload(self, purpose, filename, content):
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
        status, payload, _ = self.request(
            "POST",
            "/v1/files",
            raw=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        if status != 200:
            raise AssertionError(f"upload: {status}: {payload[:500]!r}")
        return json.loads(payload)

    def stream(self, path, body):
        """The JSON chunks of an SSE response, up to `data: [DONE]`."""
        status, payload, headers = self.request("POST", path, body)
        if status != 200:
            raise AssertionError(f"stream {path}: {status}: {payload[:500]!r}")
        chunks, done = [], False
        for line in payload.decode().splitlines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            chunks.append(json.loads(data))
        if not done:
            raise AssertionError(f"stream {path} ended without [DONE]")
        return chunks

    def wait(self, job_id, statuses):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = self.json("GET", f"/v1/fine_tuning/jobs/{job_id}")
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} stuck in {job['status']}")


def classification_jsonl(n):
    lines = [
        json.dumps({"text": f"example number {i}", "label": "pos" if i % 2 else "neg"})
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def dpo_jsonl(n):
    lines = [
        json.dumps({
            "input": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        })
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def files_and_jobs(client, spec):
    training = client.upload("fine-tune", "train.jsonl", classification_jsonl(24))
    spec.check("OpenAIFile", training, "POST /v1/files (processed)")
    broken = client.upload("fine-tune", "broken.jsonl", b'{"text": "a"}\n{oops\n')
    spec.check("OpenAIFile", broken, "POST /v1/files (error)")
    other = client.upload("batch", "batch.jsonl", b"{}\n")
    spec.check("OpenAIFile", other, "POST /v1/files (batch)")
    spec.check("OpenAIFile", client.json("GET", f"/v1/files/{training['id']}"), "GET /v1/files/{id}")
    spec.check("ListFilesResponse", client.json("GET", "/v1/files"), "GET /v1/files")
    spec.check(
        "DeleteFileResponse", client.json("DELETE", f"/v1/files/{other['id']}"), "DELETE /v1/files/{id}"
    )

    body = {
        "model": CLASSIFIER,
        "training_file": training["id"],
        "suffix": "conformance",
        "metadata": {"run": "conformance"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    }
    created = client.json("POST", "/v1/fine_tuning/jobs", body)
    spec.check("FineTuningJob", created, "POST /v1/fine_tuning/jobs")
    succeeded = client.wait(created["id"], {"succeeded", "failed", "cancelled"})
    spec.check("FineTuningJob", succeeded, "GET /v1/fine_tuning/jobs/{id} (finished)")
    if succeeded["status"] != "succeeded":
        raise AssertionError(f"classifier job did not succeed: {succeeded}")
    job_id = succeeded["id"]
    spec.check(
        "ListPaginatedFineTuningJobsResponse",
        client.json("GET", "/v1/fine_tuning/jobs?limit=5"),
        "GET /v1/fine_tuning/jobs",
    )
    spec.check(
        "ListFineTuningJobEventsResponse",
        client.json("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000"),
        "GET …/events",
    )
    checkpoints = client.json("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
    spec.check("ListFineTuningJobCheckpointsResponse", checkpoints, "GET …/checkpoints")
    if not checkpoints["data"]:
        raise AssertionError("the job listed no checkpoints")
    for result_file in succeeded["result_files"]:
        spec.check("OpenAIFile", client.json("GET", f"/v1/files/{result_file}"), "results file")

    few = client.upload("fine-tune", "few.jsonl", classification_jsonl(3))
    failed = client.json("POST", "/v1/fine_tuning/jobs", {"model": CLASSIFIER, "training_file": few["id"]})
    spec.check("FineTuningJob", client.wait(failed["id"], {"failed", "succeeded"}), "failed job")

    # Workers are busy with nothing now; queue two jobs at once so one can be paused and
    # cancelled before it runs.
    first = client.json("POST", "/v1/fine_tuning/jobs", {"model": CLASSIFIER, "training_file": training["id"]})
    second = client.json("POST", "/v1/fine_tuning/jobs", {"model": CLASSIFIER, "training_file": training["id"]})
    paused = client.request("POST", f"/v1/fine_tuning/jobs/{second['id']}/pause")
    if paused[0] == 200:
        spec.check("FineTuningJob", json.loads(paused[1]), "POST …/pause")
    for job in (first, second):
        status, payload, _ = client.request("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        spec.check("FineTuningJob" if status == 200 else "ErrorResponse", json.loads(payload), "POST …/cancel")

    dpo_file = client.upload("fine-tune", "dpo.jsonl", dpo_jsonl(12))
    dpo = client.json(
        "POST",
        "/v1/fine_tuning/jobs",
        {"model": DECODER, "training_file": dpo_file["id"], "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}},
    )
    spec.check("FineTuningJob", dpo, "POST /v1/fine_tuning/jobs (dpo)")
    client.request("POST", f"/v1/fine_tuning/jobs/{dpo['id']}/cancel")
    return succeeded


def models(client, spec, job):
    listed = client.json("GET", "/v1/models")
    spec.check("ListModelsResponse", listed, "GET /v1/models")
    model = job["fine_tuned_model"]
    spec.check("Model", client.json("GET", f"/v1/models/{model}"), "GET /v1/models/{fine-tuned}")
    spec.check("Model", client.json("GET", f"/v1/models/{DECODER}"), "GET /v1/models/{base}")
    checkpoint = client.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")["data"][-1]
    deleted = client.json("DELETE", f"/v1/models/{checkpoint['fine_tuned_model_checkpoint']}")
    spec.check("DeleteModelResponse", deleted, "DELETE /v1/models/{id}")


def generations(client, spec):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    plain = {"model": DECODER, "messages": messages, "max_completion_tokens": 8, "seed": 1}
    spec.check("CreateChatCompletionResponse", client.json("POST", "/v1/chat/completions", plain), "chat")
    with_logprobs = dict(plain, logprobs=True, top_logprobs=2, n=2)
    spec.check(
        "CreateChatCompletionResponse",
        client.json("POST", "/v1/chat/completions", with_logprobs),
        "chat (logprobs, n=2)",
    )
    streamed = dict(with_logprobs, stream=True, stream_options={"include_usage": True})
    chunks = client.stream("/v1/chat/completions", streamed)
    for i, chunk in enumerate(chunks):
        spec.check("CreateChatCompletionStreamResponse", chunk, f"chat chunk {i}")

    prompt = {"model": DECODER, "prompt": "Once upon a time", "max_tokens": 8, "seed": 1}
    spec.check("CreateCompletionResponse", client.json("POST", "/v1/completions", prompt), "completion")
    spec.check(
        "CreateCompletionResponse",
        client.json("POST", "/v1/completions", dict(prompt, logprobs=2, n=2)),
        "completion (logprobs, n=2)",
    )
    chunks = client.stream(
        "/v1/completions",
        dict(prompt, logprobs=1, n=2, stream=True, stream_options={"include_usage": True}),
    )
    last_reason = {}
    for i, chunk in enumerate(chunks):
        spec.check(COMPLETION_CHUNK, chunk, f"completion chunk {i}")
        for choice in chunk["choices"]:
            last_reason[choice["index"]] = choice["finish_reason"]
    if sorted(last_reason) != [0, 1] or any(r not in ("stop", "length") for r in last_reason.values()):
        spec.failures.append(f"completion stream: last finish_reason per choice {last_reason}")
    if chunks[-1]["choices"] != [] or not isinstance(chunks[-1].get("usage"), dict):
        spec.failures.append(f"completion stream: no usage-only last chunk: {chunks[-1]}")
    spec.check("CreateCompletionResponse", dict(chunks[-1], choices=[]), "completion usage chunk")


def errors(client, spec):
    cases = [
        ("GET", "/v1/files/file-missing", None, None, 404),
        ("GET", "/v1/fine_tuning/jobs/ftjob-missing", None, None, 404),
        ("GET", "/v1/models/nobody/nothing", None, None, 404),
        ("POST", "/v1/chat/completions", {"model": DECODER, "messages": [], "max_tokens": 1}, None, 400),
        ("POST", "/v1/fine_tuning/jobs", {"model": CLASSIFIER}, None, 400),
        ("GET", "/v1/fine_tuning/jobs?limit=0", None, None, 400),
        ("GET", "/v1/files", None, "sk-wrong", 401),
        ("GET", "/v1/nothing-here", None, None, 404),
    ]
    for method, path, body, key, expected in cases:
        status, payload, _ = client.request(method, path, body, key=key)
        if status != expected:
            spec.failures.append(f"{method} {path}: status {status}, wanted {expected}")
        spec.check("ErrorResponse", json.loads(payload), f"{method} {path} ({status})")
    too_large = b'{"model": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    status, payload, _ = client.request(
        "POST", "/v1/chat/completions", raw=too_large, headers={"Content-Type": "application/json"}
    )
    if status != 413:
        spec.failures.append(f"a 33 MiB JSON body: status {status}, wanted 413")
    spec.check("ErrorResponse", json.loads(payload), f"oversized JSON body ({status})")


def main():
    base_url, key, spec_path = sys.argv[1:4]
    spec = Spec(spec_path)
    client = Client(base_url, key)
    job = files_and_jobs(client, spec)
    models(client, spec, job)
    generations(client, spec)
    errors(client, spec)
    print(json.dumps({"validated": spec.checked, "violations": len(spec.failures)}, sort_keys=True))
    for failure in spec.failures:
        print("VIOLATION", failure)
    sys.exit(1 if spec.failures else 0)


if __name__ == "__main__":
    main()
