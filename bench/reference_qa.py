"""The Python reference for the extractive-QA benchmark: transformers' Trainer on CPU PyTorch
fine-tunes MiniLM-L6 with AutoModelForQuestionAnswering on the seeded Disfl-QA split (SQuAD
v2 layout, unanswerable questions kept), with the recipe bench/qa.py sends to temper.
Prints one JSON line on stdout.

    .venv-bench/bin/python bench/reference_qa.py --assets assets [--limit N] [--threads T]
        [--epochs 2 --lr 5e-5 --batch-size 16 --max-seq-len 384 --doc-stride 128 --max-answer-length 30
         --weight-decay 0.01 --warmup-ratio 0.1 --seed 42]

Pre- and post-processing are transformers' run_qa.py example's (utils_qa.py), written out:
- features: tokenizer(question (left-stripped), context, truncation="only_second",
  max_length=384, stride=128, return_overflowing_tokens=True, return_offsets_mapping=True);
  a window whose context part does not hold the whole answer, and every window of an
  unanswerable question, is labelled at CLS (index 0); otherwise start/end are the first and
  last token whose offsets cover the answer's characters. One difference from run_qa.py: the
  windows are not padded to 384 but per batch (DataCollatorWithPadding), the same dynamic
  padding temper does.
- answers: for each question, over all its windows, the n_best=20 highest start and end
  logits; a span is valid when both ends are in the context part, start <= end and it is at
  most max_answer_length tokens long; its score is start + end logit. The null score is the
  smallest CLS start + end over the windows; the answer is the best valid span unless the
  null score is higher (threshold 0), then "" (no answer).
Model selection: evaluation at each epoch end with those answers scored by the official
SQuAD v2 script (bench/qa_common.py), the best by F1 kept (load_best_model_at_end), then the
validation split is answered and scored again.
Timing as bench/reference_classification.py, in questions: `train_samples_per_s` = train
questions x epochs / pure training seconds (`train_features_per_s` counts windows);
`predict_samples_per_s` = validation questions / (Trainer.predict + post-processing).
"""
import argparse
import collections
import contextlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from common import emit, peak_rss_mb_self, read_jsonl
from qa_common import QA_RECIPE, add_qa_flags, disfl_qa_paths, qa_recipe_of, squad_v2_scores
from reference_classification import TimedTrainer, WallClock
from reference_ner import Encoded

N_BEST = 20


def windows(tokenizer, rows, args):
    return tokenizer([row["question"].lstrip() for row in rows], [row["context"] for row in rows],
                     truncation="only_second", max_length=args.max_seq_len, stride=args.doc_stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)


def features(tokenizer, rows, args):
    """(model inputs with start/end positions, [(row index, offsets with None outside the
    context)]) per window. The validation windows carry positions too, so that Trainer's
    evaluation loop (which calls compute_metrics only when labels are present) scores them."""
    enc = windows(tokenizer, rows, args)
    inputs, meta = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        row_index = enc["overflow_to_sample_mapping"][i]
        row = rows[row_index]
        sequence_ids = enc.sequence_ids(i)
        start_position = end_position = 0  # CLS
        if row["answers"]["answer_start"]:
            start_char = row["answers"]["answer_start"][0]
            end_char = start_char + len(row["answers"]["text"][0])
            first = sequence_ids.index(1)
            last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start_position = first
                while start_position <= last and offsets[start_position][0] <= start_char:
                    start_position += 1
                start_position -= 1
                end_position = last
                while end_position >= first and offsets[end_position][1] >= end_char:
                    end_position -= 1
                end_position += 1
        inputs.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                       "token_type_ids": enc["token_type_ids"][i],
                       "start_positions": start_position, "end_positions": end_position})
        meta.append((row_index, [o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)]))
    return inputs, meta


def answers_of(rows, meta, start_logits, end_logits, max_answer_length):
    """{id: answer text}: run_qa.py's postprocess_qa_predictions with version_2_with_negative."""
    by_row = collections.defaultdict(list)
    for feature, (row_index, _) in enumerate(meta):
        by_row[row_index].append(feature)
    predictions = {}
    for row_index, row in enumerate(rows):
        null_score, best = None, None
        for feature in by_row[row_index]:
            offsets = meta[feature][1]
            starts, ends = start_logits[feature][:len(offsets)], end_logits[feature][:len(offsets)]
            feature_null = starts[0] + ends[0]
            if null_score is None or feature_null < null_score:
                null_score = feature_null
            for s in np.argsort(starts)[-1:-N_BEST - 1:-1]:
                for e in np.argsort(ends)[-1:-N_BEST - 1:-1]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    span_score = starts[s] + ends[e]
                    if best is None or span_score > best[0]:
                        best = (span_score, offsets[s][0], offsets[e][1])
        if best is None or null_score > best[0]:
            predictions[row["id"]] = ""
        else:
            predictions[row["id"]] = row["context"][best[1]:best[2]]
    return predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_qa_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_path, valid_path = disfl_qa_paths(args.assets)
    train, valid = read_jsonl(train_path, args.limit), read_jsonl(valid_path, args.limit)
    model_dir = os.path.join(args.assets, "models", QA_RECIPE["model"])
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    train_set, _ = features(tokenizer, train, args)
    valid_set, valid_meta = features(tokenizer, valid, args)
    train_tokens = sum(len(f["input_ids"]) for f in train_set)

    def compute_metrics(prediction):
        start_logits, end_logits = prediction.predictions
        scores = squad_v2_scores(valid, answers_of(valid, valid_meta, start_logits, end_logits,
                                                   args.max_answer_length))
        return {"exact": scores["exact"], "f1": scores["f1"]}

    out_dir = tempfile.mkdtemp(prefix="temper-reference-qa-")
    training_args = TrainingArguments(
        output_dir=out_dir, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        lr_scheduler_type="linear", seed=args.seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="f1", greater_is_better=True,
        logging_strategy="epoch", report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    clock = WallClock()
    trainer = TimedTrainer(model=model, args=training_args, train_dataset=Encoded(train_set),
                           eval_dataset=Encoded(valid_set), data_collator=DataCollatorWithPadding(tokenizer),
                           compute_metrics=compute_metrics, callbacks=[clock])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
        predict_start = time.perf_counter()
        start_logits, end_logits = trainer.predict(Encoded(valid_set)).predictions
        predictions = answers_of(valid, valid_meta, start_logits, end_logits, args.max_answer_length)
        predict_seconds = time.perf_counter() - predict_start
    shutil.rmtree(out_dir, ignore_errors=True)
    train_seconds = clock.seconds - trainer.overhead_seconds
    emit({
        "impl": "transformers", "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(), "model": QA_RECIPE["model"],
        **squad_v2_scores(valid, predictions),
        "train_examples": len(train), "train_features": len(train_set), "valid_examples": len(valid),
        "valid_features": len(valid_set), "epochs": args.epochs,
        "optimizer_steps": trainer.state.global_step, "trained_tokens": train_tokens * args.epochs,
        "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or ""),
        "train_seconds": round(train_seconds, 2), "train_wall_seconds": round(clock.seconds, 2),
        "train_samples_per_s": round(len(train) * args.epochs / train_seconds, 2),
        "train_features_per_s": round(len(train_set) * args.epochs / train_seconds, 2),
        "predict_samples_per_s": round(len(valid) / predict_seconds, 2),
        "answers_sample": [predictions[row["id"]] for row in valid[:5]],
        "peak_rss_mb": round(peak_rss_mb_self(), 1), "recipe": qa_recipe_of(args),
    })


if __name__ == "__main__":
    main()
