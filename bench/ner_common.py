"""Shared pieces of the token-classification (NER) benchmark (bench/ner.py and
bench/reference_ner.py): the recipe and its flags, the WNUT-16 split, and the scoring.

Both sides are scored the same way, per word of the split (the dataset's own tokens):
a word's predicted tag is the model's label for its first sub-word (the position the label
was trained on), "O" for a word the model gave no prediction (a word the tokenizer turns
into no sub-word, or one cut off by max_seq_len). The gold sequence is always the whole
tweet. Entity-level precision/recall/F1 are seqeval's defaults (IOB2, exact span match,
micro average over entity types); token accuracy is over all words.
"""
from common import add_recipe_flags, data_paths, read_jsonl, recipe_of, write_jsonl

NER_RECIPE = {
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "epochs": 3,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "max_seq_len": 128,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "seed": 42,
    "label_all_tokens": False,  # not a flag: temper's default, and the reference labels first sub-words only
}


def add_ner_flags(parser):
    add_recipe_flags(parser, NER_RECIPE)


def ner_recipe_of(args):
    return recipe_of(args, NER_RECIPE)


def wnut_paths(assets):
    return data_paths(assets, "wnut16", ("train.jsonl", "valid.jsonl"))


def read_tagged(path, limit=0):
    """[(tokens, tags)] of a {"tokens", "tags"} JSONL file."""
    return [(row["tokens"], row["tags"]) for row in read_jsonl(path, limit)]


def write_tagged(path, sentences):
    write_jsonl(path, ({"tokens": tokens, "tags": tags} for tokens, tags in sentences))


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
