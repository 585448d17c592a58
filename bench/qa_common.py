"""Shared pieces of the extractive-QA benchmark (bench/qa.py and bench/reference_qa.py): the
recipe and its flags, the Disfl-QA split, and the official SQuAD v2.0 scoring.

The scoring is the official `evaluate-v2.0.py`'s (the same normalisation: lower-case, strip
punctuation, drop the articles a/an/the, collapse whitespace; F1 over the normalised tokens;
an unanswerable question's gold answer is "" and only an empty prediction matches it),
reported in percent as that script prints it: `exact`, `f1`, `total`, and the `HasAns_*` /
`NoAns_*` splits. No null-score threshold search: a prediction is what each side answered.
"""
import collections
import re
import string

from common import add_recipe_flags, data_paths, recipe_of

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
    add_recipe_flags(parser, QA_RECIPE)


def qa_recipe_of(args):
    return recipe_of(args, QA_RECIPE)


def disfl_qa_paths(assets):
    return data_paths(assets, "disfl_qa", ("train.jsonl", "valid.jsonl"), " --qa")


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
