"""The temper side of the token-classification benchmark: fine-tunes MiniLM-L6 on the seeded
WNUT-16 split through temper with the official openai SDK, then tags the validation tweets
through POST /v1/token_classifications and scores them here exactly as the reference is
scored (bench/ner_common.py). Prints one JSON line with the reference's keys.

    .venv-bench/bin/python bench/ner.py --assets assets [--temper target/release/temper | --base-url URL [--pid PID]]
        [--limit N] [--epochs 3 --lr 5e-5 --batch-size 16 --max-seq-len 128 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Flow: files.create(train.jsonl), files.create(valid.jsonl) ({"tokens", "tags"} lines: temper
detects token classification from the data); fine_tuning.jobs.create(model=MiniLM-L6,
validation_file, seed, method.supervised.hyperparameters = n_epochs, batch_size and temper's
learning_rate, weight_decay, warmup_ratio, max_seq_len); poll to a terminal state. Then each
validation tweet, its words joined by single spaces, goes to /v1/token_classifications
(64 texts a request, `aggregation: "none"`); a word's tag is the `entity` of the sub-word that
starts at the word's first character (its first sub-word, where the label was trained), "O"
when none does. Timing from the job's events (bench/task_driver.py); `predict_samples_per_s`
= validation tweets / seconds of those requests (the first one loads the model);
`peak_rss_mb` = the server's VmHWM.
"""
import argparse
import os
import shutil
import tempfile
import time

from common import emit, encoder_hyperparameters
from ner_common import (NER_RECIPE, add_ner_flags, label_list, ner_recipe_of, read_tagged, score, tags_from_entities,
                        wnut_paths, words_as_text, write_tagged)
from task_driver import Service, add_service_flags, fine_tune, training_timing


def tag(service, model, sentences, batch=64):
    """Predicted word tags of each sentence, through /v1/token_classifications."""
    predicted = []
    for first in range(0, len(sentences), batch):
        part = [words_as_text(tokens) for tokens, _ in sentences[first:first + batch]]
        reply = service.post("/token_classifications",
                             {"model": model, "input": [text for text, _ in part], "aggregation": "none"})
        rows = sorted(reply["data"], key=lambda row: row["index"])
        if len(rows) != len(part):
            raise SystemExit(f"/v1/token_classifications answered {len(rows)} rows for {len(part)} inputs")
        predicted += [tags_from_entities(spans, row["entities"]) for (_, spans), row in zip(part, rows)]
    return predicted


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_ner_flags(parser)
    add_service_flags(parser)
    args = parser.parse_args()

    train_path, valid_path = wnut_paths(args.assets)
    train, valid = read_tagged(train_path, args.limit), read_tagged(valid_path, args.limit)
    upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
    train_path, valid_path = os.path.join(upload_dir, "train.jsonl"), os.path.join(upload_dir, "valid.jsonl")
    write_tagged(train_path, train)
    write_tagged(valid_path, valid)

    service, succeeded = Service(args), False
    try:
        job = fine_tune(service.client, NER_RECIPE["model"], train_path, valid_path, args.seed,
                        {"type": "supervised", "supervised": {"hyperparameters": encoder_hyperparameters(args)}},
                        ("wnut16_train.jsonl", "wnut16_valid.jsonl"))
        shutil.rmtree(upload_dir, ignore_errors=True)
        _, _, timing = training_timing(service.client, job, len(train), args.epochs, args.batch_size)
        predict_start = time.perf_counter()
        predicted = tag(service, job.fine_tuned_model, valid)
        predict_seconds = time.perf_counter() - predict_start
        scores = score([tags for _, tags in valid], predicted)
        emit({
            "impl": "temper", "model": NER_RECIPE["model"], "fine_tuned_model": job.fine_tuned_model,
            "labels": len(label_list(train, valid)),
            **{k: v for k, v in scores.items() if k != "per_type"},
            "train_examples": len(train), "valid_examples": len(valid), "epochs": args.epochs,
            "trained_tokens": job.trained_tokens, **timing,
            "predict_samples_per_s": round(len(valid) / predict_seconds, 2),
            "peak_rss_mb": service.peak_rss_mb(), "per_type": scores["per_type"],
            "recipe": ner_recipe_of(args),
        })
        succeeded = True
    finally:
        service.close(succeeded)


if __name__ == "__main__":
    main()
