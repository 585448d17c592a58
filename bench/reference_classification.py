"""The Python reference for the classification benchmark: transformers' Trainer on CPU
PyTorch fine-tunes the same MiniLM-L6 directory on the same split with the same recipe as
bench/classification.py drives through temper. Prints one JSON line on stdout.

    .venv-bench/bin/python bench/reference_classification.py --assets assets [--limit N] [--threads T]
        [--epochs 2 --lr 5e-5 --batch-size 16 --max-seq-len 128 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Recipe (bench/common.py RECIPE, the defaults of the flags): full fine-tuning of AutoModelForSequenceClassification,
2 epochs, AdamW lr 5e-5, weight decay 0.01, linear schedule with 10% warmup, batch 16,
max_seq_len 128 with dynamic padding (DataCollatorWithPadding), seed 42. Like temper with a
validation file, it evaluates on the test split at each epoch end, saves a checkpoint there,
and keeps the best by validation accuracy (load_best_model_at_end), which is then scored.

Timing: `train_seconds` is the wall time of Trainer.train() minus the time spent in
evaluation and checkpoint saving, so `train_samples_per_s` = train examples x epochs /
train_seconds measures forward + backward + optimizer + batching only.
`train_wall_seconds` is all of Trainer.train(). `peak_rss_mb` is this process's
ru_maxrss (the model, optimizer state and activations; the data is small).
`predict_samples_per_s` is the test split through Trainer.predict (batches of 64) after
training. Trainer's own logs go to stderr; stdout carries only the JSON line.
"""
import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainerCallback, TrainingArguments)

from common import RECIPE, accuracy_and_macro_f1, add_recipe_flags, emit, peak_rss_mb_self, read_split, recipe_of


class TimedTrainer(Trainer):
    """A Trainer that adds up the seconds it spends evaluating and saving checkpoints, so
    that they can be taken out of the training time."""

    overhead_seconds = 0.0

    def _evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._evaluate(*args, **kwargs)
        finally:
            self.overhead_seconds += time.perf_counter() - start

    def _save_checkpoint(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self.overhead_seconds += time.perf_counter() - start


class WallClock(TrainerCallback):
    def __init__(self):
        self.start, self.seconds = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


class Split(torch.utils.data.Dataset):
    def __init__(self, encodings, labels):
        self.encodings, self.labels = encodings, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_recipe_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = os.path.join(args.assets, "models", RECIPE["model"])
    data_dir = os.path.join(args.assets, "data", "rotten_tomatoes")
    train_x, train_y = read_split(os.path.join(data_dir, "train.csv"), args.limit)
    test_x, test_y = read_split(os.path.join(data_dir, "test.csv"), args.limit)
    labels = sorted(set(train_y))  # same order as temper's label_set: id = index
    label2id = {label: i for i, label in enumerate(labels)}

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)

    def encode(texts):
        # padding=False: the collator pads each batch to its longest sequence. (MiniLM's
        # tokenizer.json has fixed 128-token padding baked in; transformers turns it off
        # for calls without padding.)
        return tokenizer(texts, truncation=True, max_length=args.max_seq_len, padding=False)

    train_enc = encode(train_x)
    train_tokens = sum(len(ids) for ids in train_enc["input_ids"])
    train_set = Split(train_enc, [label2id[y] for y in train_y])
    test_set = Split(encode(test_x), [label2id[y] for y in test_y])

    def compute_metrics(prediction):
        predicted = [labels[i] for i in np.argmax(prediction.predictions, axis=-1)]
        accuracy, f1 = accuracy_and_macro_f1([labels[i] for i in prediction.label_ids], predicted)
        return {"accuracy": accuracy, "f1": f1}

    out_dir = tempfile.mkdtemp(prefix="temper-reference-")
    training_args = TrainingArguments(
        output_dir=out_dir, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, weight_decay=args.weight_decay,
        # transformers 5 reads a float below 1 in `warmup_steps` as a ratio of the total steps.
        warmup_steps=args.warmup_ratio, lr_scheduler_type="linear", seed=args.seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
        logging_strategy="epoch", report_to=[], disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0)
    clock = WallClock()
    trainer = TimedTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=test_set,
                           data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                           callbacks=[clock])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
        predict_start = time.perf_counter()
        logits = trainer.predict(test_set).predictions
        predict_seconds = time.perf_counter() - predict_start
    shutil.rmtree(out_dir, ignore_errors=True)  # two checkpoints with optimizer state, ~0.5 GB
    predicted = [labels[i] for i in np.argmax(logits, axis=-1)]
    accuracy, f1 = accuracy_and_macro_f1(test_y, predicted)
    train_seconds = clock.seconds - trainer.overhead_seconds
    emit({
        "impl": "transformers", "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(),
        "accuracy": round(accuracy, 4), "f1": round(f1, 4),
        "train_examples": len(train_x), "test_examples": len(test_x), "epochs": args.epochs,
        "optimizer_steps": trainer.state.global_step, "trained_tokens": train_tokens * args.epochs,
        "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or ""),
        "train_seconds": round(train_seconds, 2), "train_wall_seconds": round(clock.seconds, 2),
        "train_samples_per_s": round(len(train_x) * args.epochs / train_seconds, 2),
        "predict_samples_per_s": round(len(test_x) / predict_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb_self(), 1), "recipe": recipe_of(args),
    })


if __name__ == "__main__":
    main()
