"""The OpenAI client flow for chat fine-tuning, unchanged, through the official `openai`
Python SDK against a running temper and a decoder base model.

Not part of `cargo test`: scripts/sdk-test.sh starts temper with a tiny random decoder
(written by `examples/write_tiny_models.rs`) and runs this. Usage:

    python tests/sdk/openai_sdk_chat.py http://127.0.0.1:8080 test-org/tiny-llama

Exits non-zero on the first mismatch.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import openai
from openai import OpenAI


def write_chat_data(folder: Path) -> Path:
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for i in range(12):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Answer with the colour."},
                            {"role": "user", "content": f"What colour is item {i}?"},
                            {"role": "assistant", "content": "red" if i % 2 else "blue"},
                        ]
                    }
                )
                + "\n"
            )
    return path


def main(base_url: str, base_model: str) -> None:
    client = OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0)
    path = write_chat_data(Path(tempfile.mkdtemp()))
    train = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert train.status == "processed", train

    job = client.fine_tuning.jobs.create(
        training_file=train.id, model=base_model, hyperparameters={"n_epochs": 3}
    )
    assert job.status == "validating_files", job
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job
    assert job.hyperparameters.n_epochs == 3 and job.trained_tokens > 0, job
    print("fine-tuned:", job.fine_tuned_model)

    # Auto-pagination: the SDK follows `has_more` with `after=<last id>`.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=4))
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed", messages[:3]
    assert messages[-1] == f"Created fine-tuning job: {job.id}", messages[-3:]
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and "train_mean_token_accuracy" in metrics[0].data, metrics[:1]
    assert len({e.id for e in events}) == len(events), "pages must not repeat events"

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints, "a finished job lists its checkpoints"
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(
        f":ckpt-step-{checkpoints[0].step_number}"
    ), checkpoints[0]

    messages = [{"role": "user", "content": "What colour is item 3?"}]
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant", reply
    assert choice.finish_reason in ("stop", "length"), choice
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0, reply.usage

    chunks = list(
        client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == (choice.message.content or ""), (streamed, choice.message.content)
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens, chunks[-1]

    checkpoint_model = checkpoints[-1].fine_tuned_model_checkpoint
    again = client.chat.completions.create(
        model=checkpoint_model, messages=messages, max_tokens=4, temperature=0
    )
    assert again.model == checkpoint_model, again

    try:
        client.fine_tuning.jobs.create(training_file="file-doesnotexist", model=base_model)
        raise AssertionError("a missing training file must be refused")
    except openai.NotFoundError as error:
        assert error.status_code == 404, error
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("an unknown model must be refused")
    except openai.NotFoundError as error:
        assert error.code == "model_not_found", error
    print("ok: the openai SDK drove the chat fine-tuning flow")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
