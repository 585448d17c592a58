"""The Python reference for the token-classification benchmark: transformers' Trainer on CPU
PyTorch fine-tunes MiniLM-L6 with AutoModelForTokenClassification on the seeded WNUT-16
split, with the recipe bench/ner.py sends to temper. Prints one JSON line on stdout.

    .venv-bench/bin/python bench/reference_ner.py --assets assets [--limit N] [--threads T]
        [--epochs 3 --lr 5e-5 --batch-size 16 --max-seq-len 128 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Recipe (bench/ner_common.py NER_RECIPE): the tweets' words go in pre-tokenized
(`is_split_into_words=True`, truncation at max_seq_len); each word's tag id is put on its first
sub-word and -100 on the other sub-words and the special tokens (the word ids of the fast
tokenizer); DataCollatorForTokenClassification pads each batch (labels with -100); full
fine-tuning, AdamW, linear schedule with warmup, weight decay; the labels are every tag of
train + validation, sorted. Like temper with a validation file it evaluates at each epoch
end, checkpoints there and keeps the best by validation entity F1 (load_best_model_at_end),
which is then scored.

Scoring (bench/ner_common.py): seqeval entity precision/recall/F1 and token accuracy over the
validation words, plus seqeval's per-type report. Timing as bench/reference_classification.py:
`train_samples_per_s` = train tweets x epochs / (Trainer.train() wall time - evaluation and
checkpoint time); `predict_samples_per_s` through Trainer.predict (batch 64); `peak_rss_mb`
is ru_maxrss. Trainer's logs go to stderr.
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
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, TrainingArguments

from common import emit, peak_rss_mb_self
from ner_common import NER_RECIPE, add_ner_flags, label_list, ner_recipe_of, read_tagged, score, wnut_paths
from reference_classification import TimedTrainer, WallClock


class Encoded(torch.utils.data.Dataset):
    def __init__(self, features):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def encode(tokenizer, sentences, label2id, max_len):
    """(features, first sub-word position of each word or None): the labelled inputs."""
    features, first_positions = [], []
    for tokens, tags in sentences:
        enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=max_len, padding=False)
        word_ids = enc.word_ids()
        labels, firsts, previous = [], [None] * len(tokens), None
        for position, word in enumerate(word_ids):
            if word is not None and word != previous:
                labels.append(label2id[tags[word]])
                firsts[word] = position
            else:
                labels.append(-100)
            previous = word
        features.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                         "token_type_ids": enc["token_type_ids"], "labels": labels})
        first_positions.append(firsts)
    return features, first_positions


def word_tags(logits, first_positions, labels):
    """The predicted tag of each word: argmax at its first sub-word, "O" where it has none."""
    predicted = []
    for row, firsts in zip(logits, first_positions):
        ids = np.argmax(row, axis=-1)
        predicted.append([labels[ids[p]] if p is not None else "O" for p in firsts])
    return predicted


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_ner_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_path, valid_path = wnut_paths(args.assets)
    train, valid = read_tagged(train_path, args.limit), read_tagged(valid_path, args.limit)
    labels = label_list(train, valid)
    label2id = {label: i for i, label in enumerate(labels)}
    model_dir = os.path.join(args.assets, "models", NER_RECIPE["model"])

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    train_features, _ = encode(tokenizer, train, label2id, args.max_seq_len)
    valid_features, valid_firsts = encode(tokenizer, valid, label2id, args.max_seq_len)
    train_tokens = sum(len(f["input_ids"]) for f in train_features)
    gold = [tags for _, tags in valid]

    def compute_metrics(prediction):
        return {k: v for k, v in score(gold, word_tags(prediction.predictions, valid_firsts, labels)).items()
                if k != "per_type"}

    out_dir = tempfile.mkdtemp(prefix="temper-reference-ner-")
    training_args = TrainingArguments(
        output_dir=out_dir, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type="linear", seed=args.seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="entity_f1", greater_is_better=True,
        logging_strategy="epoch", report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    clock = WallClock()
    trainer = TimedTrainer(model=model, args=training_args, train_dataset=Encoded(train_features),
                           eval_dataset=Encoded(valid_features),
                           data_collator=DataCollatorForTokenClassification(tokenizer),
                           compute_metrics=compute_metrics, callbacks=[clock])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
        predict_start = time.perf_counter()
        logits = trainer.predict(Encoded(valid_features)).predictions
        predict_seconds = time.perf_counter() - predict_start
    shutil.rmtree(out_dir, ignore_errors=True)
    scores = score(gold, word_tags(logits, valid_firsts, labels))
    train_seconds = clock.seconds - trainer.overhead_seconds
    emit({
        "impl": "transformers", "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(), "model": NER_RECIPE["model"], "labels": len(labels),
        **{k: v for k, v in scores.items() if k != "per_type"},
        "train_examples": len(train), "valid_examples": len(valid), "epochs": args.epochs,
        "optimizer_steps": trainer.state.global_step, "trained_tokens": train_tokens * args.epochs,
        "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or ""),
        "train_seconds": round(train_seconds, 2), "train_wall_seconds": round(clock.seconds, 2),
        "train_samples_per_s": round(len(train) * args.epochs / train_seconds, 2),
        "predict_samples_per_s": round(len(valid) / predict_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb_self(), 1), "per_type": scores["per_type"],
        "recipe": ner_recipe_of(args),
    })


if __name__ == "__main__":
    main()
