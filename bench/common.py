"""Shared pieces of temper's benchmarks: the recipe and its flags, data loading, metrics."""
import csv
import json
import os
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


# Every recipe key that can be a command-line flag: (flag, type, help). A recipe gets a flag for
# each of its keys listed here (except those it declares fixed); the flag's default is the
# recipe's value, and its dest is the key (learning_rate's is `lr`).
FLAGS = {
    "epochs": ("--epochs", int, None),
    "learning_rate": ("--lr", float, None),
    "warmup_ratio": ("--warmup-ratio", float, None),
    "batch_size": ("--batch-size", int, None),
    "beta": ("--beta", float, "DPO's beta (strength of the tie to the reference model)"),
    "max_seq_len": ("--max-seq-len", int, None),
    "doc_stride": ("--doc-stride", int, "tokens shared by consecutive windows of a long context"),
    "max_answer_length": ("--max-answer-length", int, "longest answer span, in tokens"),
    "weight_decay": ("--weight-decay", float, None),
    "lora_rank": ("--lora-rank", int, None),
    "lora_alpha": ("--lora-alpha", float, None),
    "lora_dropout": ("--lora-dropout", float, None),
    "targets": ("--targets", str, "LoRA target modules, PEFT names, comma-separated (e.g. q_proj,v_proj)"),
    "seed": ("--seed", int, None),
    "gen_prompts": ("--gen-prompts", int, "validation prompts answered by greedy generation"),
    "max_new_tokens": ("--max-new-tokens", int, None),
    "image_size": ("--image-size", int, "square input side in pixels (the crop both sides train and predict on)"),
    "head_hidden": ("--head-hidden", int, "width of the new head's hidden layer (0: one linear layer)"),
    "head_dropout": ("--head-dropout", float, "dropout between the head's two layers"),
    "unfreeze_epoch": ("--unfreeze-epoch", int, "epoch (1-based) at whose start the last backbone units unfreeze"),
    "unfreeze_blocks": ("--unfreeze-blocks", int, "how many of the backbone's last units unfreeze then (0: none)"),
    "backbone_lr_multiplier": ("--backbone-lr-multiplier", float, "the unfrozen units' lr = lr x this"),
}


def dest_of(key):
    return "lr" if key == "learning_rate" else key


def add_recipe_flags(parser, recipe=RECIPE, fixed=()):
    """--assets, --limit, and a flag for each key of `recipe` that FLAGS knows and `fixed` does
    not name, with the recipe's value as its default."""
    parser.add_argument("--assets", default="assets",
                        help="scripts/fetch-assets.sh destination (with --llm for the SmolLM2 benchmarks)")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N training and first N validation/test examples (smoke runs)")
    for key, value in recipe.items():
        if key in FLAGS and key not in fixed:
            flag, kind, help_text = FLAGS[key]
            parser.add_argument(flag, dest=dest_of(key), type=kind, default=value, help=help_text)


def targets_of(args):
    """The --targets list (LoRA target modules)."""
    return [t.strip() for t in args.targets.split(",") if t.strip()]


def recipe_of(args, recipe=RECIPE):
    """The recipe actually used, echoed in the JSON line: every key of `recipe` but the model,
    a flag's value where there is one, `targets` as the `target_modules` list."""
    used = {}
    for key, value in recipe.items():
        if key == "model":
            continue
        if key == "targets":
            used["target_modules"] = targets_of(args)
        else:
            used[key] = getattr(args, dest_of(key), value)
    return used


def encoder_hyperparameters(args):
    """method.supervised.hyperparameters of the encoder benchmarks (classification, NER, QA):
    OpenAI's n_epochs and batch_size plus temper's learning_rate, weight_decay, warmup_ratio
    and max_seq_len."""
    return {"n_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
            "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio, "max_seq_len": args.max_seq_len}


def data_paths(assets, folder, names, fetch_flags=""):
    """The split files assets/data/<folder>/<name>, or an exit saying how to fetch them."""
    paths = tuple(os.path.join(assets, "data", folder, name) for name in names)
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: run scripts/fetch-assets.sh {assets}{fetch_flags}")
    return paths


def read_jsonl(path, limit=0):
    """The rows of a JSONL file (the first `limit` when it is not 0)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


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
