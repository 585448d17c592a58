"""The whole flow through the official `openai` Python SDK against a running temper.

Not part of `cargo test`: it needs `pip install openai` and a real base model. Usage:

    temper serve --port 8080 --models-dir /path/to/models --api-key sk-test &
    python tests/sdk/openai_sdk_smoke.py http://127.0.0.1:8080 sentence-transformers/all-MiniLM-L6-v2

Exits non-zero on the first mismatch.
"""

import base64
import io
import json
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
from openai import OpenAI


def write_data(folder: Path) -> tuple[Path, Path]:
    train, valid = folder / "train.jsonl", folder / "valid.csv"
    with train.open("w") as f:
        for i in range(40):
            positive = i % 2 == 0
            text = f"good great happy film {i}" if positive else f"bad awful sad film {i}"
            f.write(json.dumps({"text": text, "label": "positive" if positive else "negative"}) + "\n")
    with valid.open("w") as f:
        f.write("text,label\n")
        for i in range(10):
            f.write(f"good happy {i},positive\n" if i % 2 == 0 else f"bad sad {i},negative\n")
    return train, valid


def main(base_url: str, base_model: str) -> None:
    client = OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
    train_path, valid_path = write_data(Path(tempfile.mkdtemp()))
    train = client.files.create(file=train_path.open("rb"), purpose="fine-tune")
    valid = client.files.create(file=valid_path.open("rb"), purpose="fine-tune")
    assert train.status == "processed", train
    assert client.files.content(train.id).read() == train_path.read_bytes()

    job = client.fine_tuning.jobs.create(
        model=base_model,
        training_file=train.id,
        validation_file=valid.id,
        suffix="sdk",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
    )
    assert job.status == "validating_files" and isinstance(job.seed, int), job
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job
    assert job.hyperparameters.n_epochs == 2 and job.error is None, job
    print("fine-tuned:", job.fine_tuned_model)

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # pages with after=
    assert events[0].message == "The job has successfully completed", events[0]
    assert events[-1].message == f"Created fine-tuning job: {job.id}", events[-1]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.endswith(
        f":ckpt-step-{checkpoints[0].step_number}"
    )
    csv = base64.b64decode(client.files.content(job.result_files[0]).read()).decode()
    assert csv.startswith("step,train_loss"), csv[:80]

    models = [m.id for m in client.models.list()]
    assert job.fine_tuned_model in models and base_model in models, models
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    reply = client.post(
        "/classifications",
        body={"model": job.fine_tuned_model, "input": ["good great film", "bad sad film"]},
        cast_to=object,
    )
    for item in reply["data"]:
        assert abs(sum(item["scores"].values()) - 1.0) < 1e-4, item

    request = urllib.request.Request(
        f"{base_url}/v1/fine_tuning/jobs/{job.id}/download?format=merged",
        headers={"Authorization": "Bearer sk-test"},
    )
    with urllib.request.urlopen(request) as response:
        names = tarfile.open(fileobj=io.BytesIO(response.read())).getnames()
    assert any(n.endswith("/config.json") for n in names), names
    assert any(n.endswith("/model.safetensors") for n in names), names

    try:
        client.fine_tuning.jobs.cancel(job.id)
        raise AssertionError("cancelling a succeeded job must fail")
    except openai.BadRequestError as error:
        assert error.code == "invalid_job_state", error
    try:
        OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key must be refused")
    except openai.AuthenticationError as error:
        assert error.code == "invalid_api_key", error

    assert client.models.delete(job.fine_tuned_model).deleted
    try:
        client.models.retrieve(job.fine_tuned_model)
        raise AssertionError("a deleted model must be gone")
    except openai.NotFoundError as error:
        assert error.code == "model_not_found", error
    assert client.files.delete(valid.id).deleted
    print("ok: the openai SDK drove the whole flow")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
