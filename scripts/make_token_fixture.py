#!/usr/bin/env python3
"""Records what transformers computes on a token-classification model directory that temper
exported (merged, or a PEFT adapter over its base), so a Rust test can check temper's
encoder + head, alignment and pipeline decoding against an independent implementation.
Run it on the tiny directory the Rust side writes, commit the JSON, and rerun only when that
writer changes.

    python scripts/make_token_fixture.py MODEL_DIR [--adapter ADAPTER_DIR] [--out tests/fixtures/token_tiny.json]
        [--texts-file texts.json]        # needs torch + transformers (+ peft with --adapter)

MODEL_DIR holds config.json (with id2label / label2id), the weights and tokenizer.json; with
--adapter it is the base model and ADAPTER_DIR the PEFT adapter (adapter_config.json +
adapter_model.safetensors, the head in modules_to_save). The default inputs (TEXTS, WORDS)
cover punctuation, casing, non-ASCII, a word split in several sub-words and repeated spaces.

Output (JSON, floats rounded to 6 decimals):
{"made_by", "transformers", "torch", "model_dir" (its base name), "adapter" (bool),
 "id2label": {"0": "O", ...},
 "texts": [{                      # raw text, as POST /v1/token_classifications gets it
    "text", "input_ids" (with [CLS]/[SEP]), "offsets" ([start, end) chars, [0, 0] for specials),
    "logits" ([tokens][labels]), "predicted" (argmax label per token),
    "min_top2_margin" (smallest best-minus-second logit gap over the tokens: float noise far
    below it cannot flip a label),
    "pipeline_none": [{"entity", "score", "index", "word", "start", "end"}],   # O dropped, as the pipeline does
    "pipeline_simple": [{"entity_group", "score", "word", "start", "end"}]}],
 "words": [{                      # pre-tokenized input, as training sees it
    "words", "input_ids", "word_ids" (null for specials), "logits",
    "word_labels" (the argmax label at each word's first sub-word; null for a word that has
    no sub-word)}]}
"""
import argparse
import json
import pathlib
import sys

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXTS = [
    "Barack Obama visited Paris last week.",
    "@paulwalk It's the view from the Empire State Building =ESB.",
    "Zürich   and  São Paulo are far apart!",
    "unbelievably antidisestablishmentarianism",
    "x",
]
WORDS = [
    ["Empire", "State", "Building", "=", "ESB", "."],
    ["@paulwalk", "It", "'s", "the", "view"],
    ["Zürich", "and", "São", "Paulo"],
]


def rounded(values):
    return [round(float(v), 6) for v in values]


def load(model_dir, adapter_dir):
    model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def entity_rows(rows, group):
    key = "entity_group" if group else "entity"
    out = []
    for row in rows:
        item = {key: row[key], "score": round(float(row["score"]), 6), "word": row["word"],
                "start": int(row["start"]), "end": int(row["end"])}
        if not group:
            item["index"] = int(row["index"])
        out.append(item)
    return out


@torch.no_grad()
def text_case(model, tokenizer, tagger, text):
    enc = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   token_type_ids=enc.get("token_type_ids")).logits[0]
    top2 = logits.topk(2, dim=-1).values
    return {
        "text": text,
        "input_ids": enc["input_ids"][0].tolist(),
        "offsets": enc["offset_mapping"][0].tolist(),
        "logits": [rounded(row) for row in logits],
        "predicted": [model.config.id2label[int(i)] for i in logits.argmax(-1)],
        "min_top2_margin": round(float((top2[:, 0] - top2[:, 1]).min()), 6),
        "pipeline_none": entity_rows(tagger(text, aggregation_strategy="none"), group=False),
        "pipeline_simple": entity_rows(tagger(text, aggregation_strategy="simple"), group=True),
    }


@torch.no_grad()
def words_case(model, tokenizer, words):
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    logits = model(**enc).logits[0]
    word_ids = enc.word_ids(0)
    labels, previous = {}, None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[word] = model.config.id2label[int(logits[position].argmax())]
        previous = word
    return {"words": words, "input_ids": enc["input_ids"][0].tolist(), "word_ids": word_ids,
            "logits": [rounded(row) for row in logits], "word_labels": [labels.get(i) for i in range(len(words))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--adapter", type=pathlib.Path, help="a PEFT adapter directory over MODEL_DIR")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "token_tiny.json")
    parser.add_argument("--texts-file", type=pathlib.Path,
                        help='JSON {"texts": [...], "words": [[...], ...]} replacing the default inputs')
    args = parser.parse_args()
    texts, words = TEXTS, WORDS
    if args.texts_file:
        given = json.loads(args.texts_file.read_text())
        texts, words = given.get("texts", texts), given.get("words", words)

    model, tokenizer = load(args.model_dir, args.adapter)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    fixture = {
        "made_by": "scripts/make_token_fixture.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "model_dir": args.model_dir.name,
        "adapter": bool(args.adapter),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "texts": [text_case(model, tokenizer, tagger, text) for text in texts],
        "words": [words_case(model, tokenizer, w) for w in words],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for case in fixture["texts"]:
        print(repr(case["text"]), "->", [(e["entity_group"], e["word"]) for e in case["pipeline_simple"]],
              "margin", case["min_top2_margin"], file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
