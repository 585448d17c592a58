"""Writes src/tasks/token_classification/testdata/seqeval_fixture.json: seeded random gold and
predicted tag sequences and what `seqeval` (default mode) computes for them, so the Rust
metrics are checked against the reference implementation without Python at test time.

Run with the bench venv: python scripts/seqeval_fixture.py
"""

import json
import random
from pathlib import Path

from seqeval.metrics import (
    accuracy_score,
    classification_report,
    f1_score,
    precision_score,
    recall_score,
)

TAGS = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "E-LOC", "S-PER"]


def main() -> None:
    rng = random.Random(9)
    gold, predicted = [], []
    for _ in range(200):
        sentence = [rng.choice(TAGS) for _ in range(rng.randint(1, 12))]
        guess = [tag if rng.random() < 0.7 else rng.choice(TAGS) for tag in sentence]
        gold.append(sentence)
        predicted.append(guess)
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    fixture = {
        "gold": gold,
        "predicted": predicted,
        "precision": precision_score(gold, predicted, zero_division=0),
        "recall": recall_score(gold, predicted, zero_division=0),
        "f1": f1_score(gold, predicted, zero_division=0),
        "accuracy": accuracy_score(gold, predicted),
        "report": {name: {k: float(v) for k, v in row.items()} for name, row in report.items()},
    }
    out = Path(__file__).resolve().parent.parent / "src/tasks/token_classification/testdata"
    out.mkdir(parents=True, exist_ok=True)
    (out / "seqeval_fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")


if __name__ == "__main__":
    main()
