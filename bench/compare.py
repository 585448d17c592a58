"""The comparison line of bench/run_{ner,qa,dpo,image}.sh: ratios temper ÷ reference for the
throughput and memory keys, deltas temper − reference for the quality keys, and whether
temper's quality is no worse than the reference's.

    .venv-bench/bin/python bench/compare.py ner|qa|dpo|image TEMPER_JSON REFERENCE_JSON
"""
import json
import sys

RATIOS = {
    "ner": ("train_samples_per_s", "predict_samples_per_s", "peak_rss_mb"),
    "qa": ("train_samples_per_s", "train_features_per_s", "predict_samples_per_s", "peak_rss_mb"),
    "dpo": ("train_tokens_per_s", "train_samples_per_s", "peak_rss_mb"),
    "image": ("train_samples_per_s", "predict_samples_per_s", "peak_rss_mb"),
}
DELTAS = {
    "ner": ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"),
    "qa": ("exact", "f1", "HasAns_f1", "NoAns_f1"),
    "dpo": ("valid_loss_before", "valid_loss_after", "valid_reward_accuracy_before", "valid_reward_accuracy_after",
            "valid_reward_margin_after", "answer_accuracy_before", "answer_accuracy_after"),
    "image": ("accuracy", "f1"),
}
# (key, True when higher is better): temper's quality is no worse when every one holds.
QUALITY = {
    "ner": (("entity_f1", True),),
    "qa": (("exact", True), ("f1", True)),
    "dpo": (("valid_loss_after", False), ("valid_reward_accuracy_after", True)),
    "image": (("accuracy", True),),
}
REFERENCE = {"ner": "transformers", "qa": "transformers", "dpo": "trl+peft", "image": "timm"}


def compare(task, t, r):
    ratio = lambda key: round(t[key] / r[key], 3) if t.get(key) and r.get(key) else None  # noqa: E731
    delta = lambda key: (round(t[key] - r[key], 4)  # noqa: E731
                         if isinstance(t.get(key), (int, float)) and isinstance(r.get(key), (int, float)) else None)
    line = {"comparison": f"temper / {REFERENCE[task]}"}
    line.update({f"{key.replace('_mb', '')}_ratio": ratio(key) for key in RATIOS[task]})
    line.update({f"{key}_delta": delta(key) for key in DELTAS[task]})
    checks = [delta(key) for key, _ in QUALITY[task]]
    line["quality_no_worse"] = (None if None in checks else
                                all((d >= 0) if higher else (d <= 0) for d, (_, higher) in zip(checks, QUALITY[task])))
    return line


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in RATIOS:
        sys.exit(__doc__)
    print(json.dumps(compare(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])), sort_keys=True))
