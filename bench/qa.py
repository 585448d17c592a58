"""The temper side of the extractive-QA benchmark: fine-tunes MiniLM-L6 on the seeded
Disfl-QA split (SQuAD v2 layout) through temper with the official openai SDK, then answers the
validation questions through POST /v1/question_answering and scores the answers with the
official SQuAD v2 script (bench/qa_common.py), as the reference is scored. Prints one JSON
line with the reference's keys.

    .venv-bench/bin/python bench/qa.py --assets assets [--temper target/release/temper | --base-url URL [--pid PID]]
        [--limit N] [--epochs 2 --lr 5e-5 --batch-size 16 --max-seq-len 384 --doc-stride 128 --max-answer-length 30
         --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Flow: files.create(train.jsonl), files.create(valid.jsonl) (SQuAD-layout lines: temper detects
extractive QA from the data); fine_tuning.jobs.create(model=MiniLM-L6, validation_file, seed,
method.supervised.hyperparameters = n_epochs, batch_size and temper's learning_rate,
weight_decay, warmup_ratio, max_seq_len, and doc_stride / max_answer_length when they are not
temper's defaults 128 / 30); poll to a terminal state. Then the validation questions go to /v1/question_answering as
`{"model", "input": [{"question", "context"}, ...]}`, 16 a request; the `answer` of each row
(empty when temper says unanswerable) is the prediction. Timing from the job's events
(bench/task_driver.py): temper's batches are of windows, so `train_features_per_s` is the
pace in windows and `train_samples_per_s` = train questions x epochs / the pure training
time that pace gives for all steps (`train_seconds`); `predict_samples_per_s` = validation questions / seconds
of those requests (the first one loads the model); `peak_rss_mb` = the server's VmHWM.
"""
import argparse
import os
import shutil
import tempfile
import time

from common import emit, encoder_hyperparameters, read_jsonl, write_jsonl
from qa_common import QA_RECIPE, add_qa_flags, disfl_qa_paths, qa_recipe_of, squad_v2_scores
from task_driver import Service, add_service_flags, fine_tune, training_timing

# temper's own defaults for the QA window knobs: the driver sends a knob only when the recipe
# differs from it, so a temper that predates the knobs runs the default recipe, and one that
# lacks them refuses a non-default value instead of training with another one.
TEMPER_QA_DEFAULTS = {"doc_stride": 128, "max_answer_length": 30}


def hyperparameters_of(args):
    """method.supervised.hyperparameters: the encoder keys, plus doc_stride and
    max_answer_length when they are not temper's defaults."""
    hp = encoder_hyperparameters(args)
    hp.update({key: getattr(args, key) for key, default in TEMPER_QA_DEFAULTS.items()
               if getattr(args, key) != default})
    return hp


def answer(service, model, rows, batch=16):
    """{id: answer text} through /v1/question_answering."""
    predictions = {}
    for first in range(0, len(rows), batch):
        part = rows[first:first + batch]
        reply = service.post("/question_answering", {
            "model": model, "input": [{"question": row["question"], "context": row["context"]} for row in part]})
        answered = sorted(reply["data"], key=lambda item: item["index"])
        if len(answered) != len(part):
            raise SystemExit(f"/v1/question_answering answered {len(answered)} rows for {len(part)} inputs")
        for row, item in zip(part, answered):
            predictions[row["id"]] = item.get("answer") or ""
    return predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_qa_flags(parser)
    add_service_flags(parser)
    args = parser.parse_args()

    train_path, valid_path = disfl_qa_paths(args.assets)
    train, valid = read_jsonl(train_path, args.limit), read_jsonl(valid_path, args.limit)
    upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
    train_path, valid_path = os.path.join(upload_dir, "train.jsonl"), os.path.join(upload_dir, "valid.jsonl")
    write_jsonl(train_path, train)
    write_jsonl(valid_path, valid)

    service, succeeded = Service(args), False
    try:
        job = fine_tune(service.client, QA_RECIPE["model"], train_path, valid_path, args.seed,
                        {"type": "supervised", "supervised": {"hyperparameters": hyperparameters_of(args)}},
                        ("disfl_qa_train.jsonl", "disfl_qa_valid.jsonl"))
        shutil.rmtree(upload_dir, ignore_errors=True)
        _, _, timing = training_timing(service.client, job, len(train), args.epochs, args.batch_size)
        # temper's batches are of windows: the pace in windows, and in questions over the same time.
        timing["train_features_per_s"] = timing["train_samples_per_s"]
        timing["train_samples_per_s"] = round(len(train) * args.epochs / timing["train_seconds"], 2)
        predict_start = time.perf_counter()
        predictions = answer(service, job.fine_tuned_model, valid)
        predict_seconds = time.perf_counter() - predict_start
        emit({
            "impl": "temper", "model": QA_RECIPE["model"], "fine_tuned_model": job.fine_tuned_model,
            **squad_v2_scores(valid, predictions),
            "train_examples": len(train), "valid_examples": len(valid), "epochs": args.epochs,
            "trained_tokens": job.trained_tokens, **timing,
            "predict_samples_per_s": round(len(valid) / predict_seconds, 2),
            "answers_sample": [predictions[row["id"]] for row in valid[:5]],
            "peak_rss_mb": service.peak_rss_mb(), "recipe": qa_recipe_of(args),
        })
        succeeded = True
    finally:
        service.close(succeeded)


if __name__ == "__main__":
    main()
