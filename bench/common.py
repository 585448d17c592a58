"""Shared pieces of temper's benchmarks: the recipe and its flags, data loading, metrics."""
import csv
import json
import resource

# One recipe for both sides of the classification benchmark (flags override it).
RECIPE = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "epochs": 2,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "max_seq_len": 128,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "seed": 42,
}


def add_recipe_flags(parser):
    """--epochs --lr --batch-size --max-seq-len --weight-decay --warmup-ratio --seed, with
    RECIPE's values as defaults, plus --assets and --limit."""
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh destination")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N train and first N test rows (smoke runs)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=RECIPE["learning_rate"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--max-seq-len", type=int, default=RECIPE["max_seq_len"])
    parser.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"])
    parser.add_argument("--warmup-ratio", type=float, default=RECIPE["warmup_ratio"])
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])


def recipe_of(args):
    """The recipe actually used, echoed in the JSON line."""
    return {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio, "seed": args.seed}


def read_split(path, limit=0):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:limit]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def write_split(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


def accuracy_and_macro_f1(gold, predicted):
    """Accuracy and the unweighted mean of per-class F1 over every label seen in either list."""
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
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result):
    print(json.dumps(result, sort_keys=True), flush=True)
