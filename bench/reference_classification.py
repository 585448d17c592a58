"""The Python reference for the classification benchmark: transformers' Trainer on CPU
PyTorch, same data, same recipe as bench/classification.py. Prints one JSON line.

    python bench/reference_classification.py --assets assets [--limit N]
"""
import argparse
import os
import time

import numpy as np
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainerCallback, TrainingArguments)

from common import RECIPE, accuracy_and_macro_f1, emit, peak_rss_mb_self, read_split


class TrainTimer(TrainerCallback):
    """Times the training loop alone (evaluation excluded), like temper's side."""

    def __init__(self):
        self.start, self.total = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.total = time.perf_counter() - self.start


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
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N train/test rows (smoke runs)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    args = parser.parse_args()

    model_dir = os.path.join(args.assets, "models", RECIPE["model"])
    data_dir = os.path.join(args.assets, "data", "rotten_tomatoes")
    train_x, train_y = read_split(os.path.join(data_dir, "train.csv"))
    test_x, test_y = read_split(os.path.join(data_dir, "test.csv"))
    if args.limit:
        train_x, train_y, test_x, test_y = train_x[:args.limit], train_y[:args.limit], test_x[:args.limit], test_y[:args.limit]
    labels = sorted(set(train_y))
    label2id = {label: i for i, label in enumerate(labels)}

    torch.manual_seed(RECIPE["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=RECIPE["max_seq_len"])
    train_set = Split(encode(train_x), [label2id[y] for y in train_y])
    test_set = Split(encode(test_x), [label2id[y] for y in test_y])

    training_args = TrainingArguments(
        output_dir="/tmp/temper-reference-out", num_train_epochs=args.epochs,
        per_device_train_batch_size=RECIPE["batch_size"], per_device_eval_batch_size=64,
        learning_rate=RECIPE["learning_rate"], weight_decay=RECIPE["weight_decay"],
        # transformers 5 takes a warmup ratio as a float `warmup_steps` below 1.
        warmup_steps=RECIPE["warmup_ratio"], lr_scheduler_type="linear", seed=RECIPE["seed"],
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0)
    timer = TrainTimer()
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[timer])
    trainer.train()

    logits = trainer.predict(test_set).predictions
    predicted = [labels[i] for i in np.argmax(logits, axis=-1)]
    accuracy, f1 = accuracy_and_macro_f1(test_y, predicted)
    emit({
        "impl": "transformers", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "accuracy": round(accuracy, 4), "f1": round(f1, 4),
        "train_examples": len(train_x), "epochs": args.epochs,
        "train_seconds": round(timer.total, 2),
        "train_samples_per_s": round(len(train_x) * args.epochs / timer.total, 2),
        "peak_rss_mb": round(peak_rss_mb_self(), 1),
    })


if __name__ == "__main__":
    main()
