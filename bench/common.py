"""Shared pieces of temper's benchmarks: the recipe, data loading and metrics."""
import csv
import json
import resource

# One recipe for both sides of the classification benchmark.
RECIPE = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "epochs": 2,
    "batch_size": 16,
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "max_seq_len": 128,
    "seed": 42,
}


def read_split(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def accuracy_and_macro_f1(gold, predicted):
    labels = sorted(set(gold) | set(predicted))
    correct = sum(g == p for g, p in zip(gold, predicted))
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return correct / len(gold), sum(f1s) / len(f1s)


def peak_rss_mb_self():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result):
    print(json.dumps(result, sort_keys=True), flush=True)
