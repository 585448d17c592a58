"""Shared pieces of the token-classification (NER) benchmark (bench/ner.py and
bench/reference_ner.py): the recipe and its flags, the WNUT-16 split, and the scoring.

Both sides are scored the same way, per word of the split (the dataset's own tokens):
a word's predicted tag is the model's label for its first sub-word (the position the label
was trained on), "O" for a word the model gave no prediction (a word the tokenizer turns
into no sub-word, or one cut off by max_seq_len). The gold sequence is always the whole
tweet. Entity-level precision/recall/F1 are seqeval's defaults (IOB2, exact span match,
micro average over entity types); token accuracy is over all words.
"""
import json
import os

NER_RECIPE = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "epochs": 3,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "max_seq_len": 128,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "seed": 42,
}


def add_ner_flags(parser):
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh destination")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N train and first N validation tweets (smoke runs)")
    parser.add_argument("--epochs", type=int, default=NER_RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=NER_RECIPE["learning_rate"])
    parser.add_argument("--batch-size", type=int, default=NER_RECIPE["batch_size"])
    parser.add_argument("--max-seq-len", type=int, default=NER_RECIPE["max_seq_len"])
    parser.add_argument("--weight-decay", type=float, default=NER_RECIPE["weight_decay"])
    parser.add_argument("--warmup-ratio", type=float, default=NER_RECIPE["warmup_ratio"])
    parser.add_argument("--seed", type=int, default=NER_RECIPE["seed"])


def ner_recipe_of(args):
    return {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio, "seed": args.seed, "label_all_tokens": False}


def wnut_paths(assets):
    data_dir = os.path.join(assets, "data", "wnut16")
    paths = (os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "valid.jsonl"))
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: run scripts/fetch-assets.sh {assets}")
    return paths


def read_tagged(path, limit=0):
    """[(tokens, tags)] of a {"tokens", "tags"} JSONL file."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:limit] if limit else rows
    return [(row["tokens"], row["tags"]) for row in rows]


def write_tagged(path, sentences):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for tokens, tags in sentences:
            f.write(json.dumps({"tokens": tokens, "tags": tags}, ensure_ascii=False) + "\n")


def label_list(train, valid):
    """Every tag of train + validation, sorted: label id = index (temper collects its label
    set from both files too)."""
    return sorted({tag for _, tags in train + valid for tag in tags})


def words_as_text(tokens):
    """The words joined by single spaces, and each word's [start, end) character span."""
    spans, position = [], 0
    for token in tokens:
        spans.append((position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), spans


def tags_from_entities(spans, entities):
    """Word tags from the token-classification answer with aggregation "none": the label of
    the sub-word entity that starts where the word starts (its first sub-word), else "O"."""
    by_start = {}
    for entity in entities:
        by_start.setdefault(entity["start"], entity["entity"])
    return [by_start.get(start, "O") for start, _ in spans]


def score(gold, predicted):
    """Entity-level and token-level scores, plus seqeval's per-type report."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    words = sum(len(tags) for tags in gold)
    hits = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {name: {"precision": round(float(row["precision"]), 4), "recall": round(float(row["recall"]), 4),
                       "f1": round(float(row["f1-score"]), 4), "support": int(row["support"])}
                for name, row in report.items() if "avg" not in name}
    return {
        "entity_precision": round(float(precision_score(gold, predicted, zero_division=0)), 4),
        "entity_recall": round(float(recall_score(gold, predicted, zero_division=0)), 4),
        "entity_f1": round(float(f1_score(gold, predicted, zero_division=0)), 4),
        "token_accuracy": round(hits / words, 4) if words else None,
        "per_type": per_type,
    }
