"""Shared pieces of the extractive-QA benchmark (bench/qa.py and bench/reference_qa.py): the
recipe and its flags, the Disfl-QA split, and the official SQuAD v2.0 scoring.

The scoring is the official `evaluate-v2.0.py`'s (the same normalisation: lower-case, strip
punctuation, drop the articles a/an/the, collapse whitespace; F1 over the normalised tokens;
an unanswerable question's gold answer is "" and only an empty prediction matches it),
reported in percent as that script prints it: `exact`, `f1`, `total`, and the `HasAns_*` /
`NoAns_*` splits. No null-score threshold search: a prediction is what each side answered.
"""
import collections
import json
import os
import re
import string

QA_RECIPE = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "epochs": 2,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "max_seq_len": 384,
    "doc_stride": 128,
    "max_answer_length": 30,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "seed": 42,
}


def add_qa_flags(parser):
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh destination")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N train and first N validation questions (smoke runs)")
    parser.add_argument("--epochs", type=int, default=QA_RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=QA_RECIPE["learning_rate"])
    parser.add_argument("--batch-size", type=int, default=QA_RECIPE["batch_size"])
    parser.add_argument("--max-seq-len", type=int, default=QA_RECIPE["max_seq_len"])
    parser.add_argument("--doc-stride", type=int, default=QA_RECIPE["doc_stride"])
    parser.add_argument("--max-answer-length", type=int, default=QA_RECIPE["max_answer_length"])
    parser.add_argument("--weight-decay", type=float, default=QA_RECIPE["weight_decay"])
    parser.add_argument("--warmup-ratio", type=float, default=QA_RECIPE["warmup_ratio"])
    parser.add_argument("--seed", type=int, default=QA_RECIPE["seed"])


def qa_recipe_of(args):
    return {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "doc_stride": args.doc_stride,
            "max_answer_length": args.max_answer_length, "weight_decay": args.weight_decay,
            "warmup_ratio": args.warmup_ratio, "seed": args.seed}


def disfl_qa_paths(assets):
    data_dir = os.path.join(assets, "data", "disfl_qa")
    paths = (os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "valid.jsonl"))
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: run scripts/fetch-assets.sh {assets}")
    return paths


def read_squad(path, limit=0):
    """The rows of a SQuAD-layout JSONL file ({"id", "question", "context", "answers"})."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def write_squad(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- the official SQuAD v2.0 evaluation (evaluate-v2.0.py), unchanged in substance ---

def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s, flags=re.UNICODE)
    return " ".join(s.split())


def get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if not gold_toks or not pred_toks:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_v2_scores(rows, predictions):
    """The official script's numbers for predictions {id: answer text, "" = no answer}."""
    exact, f1, has_answer = {}, {}, {}
    for row in rows:
        gold = [a for a in row["answers"]["text"] if normalize_answer(a)] or [""]
        prediction = predictions[row["id"]]
        exact[row["id"]] = max(compute_exact(a, prediction) for a in gold)
        f1[row["id"]] = max(compute_f1(a, prediction) for a in gold)
        has_answer[row["id"]] = bool(row["answers"]["text"])

    def mean(scores, ids):
        return round(100.0 * sum(scores[i] for i in ids) / len(ids), 2) if ids else None

    ids = list(exact)
    has = [i for i in ids if has_answer[i]]
    no = [i for i in ids if not has_answer[i]]
    return {"exact": mean(exact, ids), "f1": mean(f1, ids), "total": len(ids),
            "HasAns_exact": mean(exact, has), "HasAns_f1": mean(f1, has), "HasAns_total": len(has),
            "NoAns_exact": mean(exact, no), "NoAns_f1": mean(f1, no), "NoAns_total": len(no)}
