#!/usr/bin/env python3
"""Records what transformers computes on token-classification model directories that temper
exported (merged, or a PEFT adapter over its base), so a Rust test can check temper's
encoder + head, alignment and pipeline decoding against an independent implementation.

    python scripts/make_token_fixture.py [--models DIR] [--out tests/fixtures/token_tiny.json]
    python scripts/make_token_fixture.py MODEL_DIR [--adapter ADAPTER_DIR --labels O,B-PER,...]
        [--texts-file texts.json]        # needs torch + transformers (+ peft for adapters)

Without MODEL_DIR it records every token-classification model of the manifest.json that
`cargo run --release --example write_parity_models -- DIR` writes (run into a temporary
directory unless --models names one already written): the fixture that
`src/tasks/token_classification/fixture_tests.rs` checks. Commit the JSON; rerun only when
that writer changes (the test's logit check says so).

MODEL_DIR holds config.json (with id2label / label2id), the weights and tokenizer.json; with
--adapter it is the base model and ADAPTER_DIR the PEFT adapter (adapter_config.json +
adapter_model.safetensors, the head in modules_to_save), and --labels gives the head's labels
in id order (the base has none). The default inputs (TEXTS, WORDS) cover punctuation, casing,
non-ASCII, unknown characters, a word split in several sub-words and repeated spaces.

Output (JSON, floats rounded to 6 decimals):
{"made_by", "transformers", "torch", "peft" (or null),
 "models": [{"name" (the manifest's, or MODEL_DIR's base name), "adapter" (bool),
  "id2label": {"0": "O", ...},
  "texts": [{                     # raw text, as POST /v1/token_classifications gets it
    "text", "input_ids" (with [CLS]/[SEP]), "offsets" ([start, end) chars, [0, 0] for specials),
    "logits" ([tokens][labels]), "predicted" (argmax label per token),
    "min_top2_margin" (smallest best-minus-second logit gap over the tokens: float noise far
    below it cannot flip a label),
    "pipeline_none": [{"entity", "score", "index", "word", "start", "end"}],   # O dropped, as the pipeline does
    "pipeline_simple": [{"entity_group", "score", "word", "start", "end"}]}],
  "words": [{                     # pre-tokenized input, as training sees it
    "words", "input_ids", "word_ids" (null for specials), "logits", "min_top2_margin",
    "word_labels" (the argmax label at each word's first sub-word; null for a word that has
    no sub-word)}]}]}
"""
import argparse
import inspect
import json
import pathlib
import subprocess
import sys
import tempfile

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


def load(model_dir, adapter_dir, labels):
    extra = {}
    if labels:  # a base model for an adapter: the head's labels are not in its config
        extra = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=torch.float32, **extra)
    if adapter_dir:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def model_inputs(model, enc):
    """The encoding's tensors the model takes (DistilBERT has no token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in enc.items() if k in accepted}


def min_margin(logits):
    top2 = logits.topk(2, dim=-1).values
    return round(float((top2[:, 0] - top2[:, 1]).min()), 6)


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
    logits = model(**model_inputs(model, enc)).logits[0]
    return {
        "text": text,
        "input_ids": enc["input_ids"][0].tolist(),
        "offsets": enc["offset_mapping"][0].tolist(),
        "logits": [rounded(row) for row in logits],
        "predicted": [model.config.id2label[int(i)] for i in logits.argmax(-1)],
        "min_top2_margin": min_margin(logits),
        "pipeline_none": entity_rows(tagger(text, aggregation_strategy="none"), group=False),
        "pipeline_simple": entity_rows(tagger(text, aggregation_strategy="simple"), group=True),
    }


@torch.no_grad()
def words_case(model, tokenizer, words):
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    logits = model(**model_inputs(model, enc)).logits[0]
    word_ids = enc.word_ids(0)
    labels, previous = {}, None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[word] = model.config.id2label[int(logits[position].argmax())]
        previous = word
    return {"words": words, "input_ids": enc["input_ids"][0].tolist(), "word_ids": word_ids,
            "logits": [rounded(row) for row in logits], "min_top2_margin": min_margin(logits),
            "word_labels": [labels.get(i) for i in range(len(words))]}


def record(name, model_dir, adapter_dir, labels, texts, words):
    model, tokenizer = load(model_dir, adapter_dir, labels)
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    return {
        "name": name,
        "adapter": bool(adapter_dir),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "texts": [text_case(model, tokenizer, tagger, text) for text in texts],
        "words": [words_case(model, tokenizer, w) for w in words],
    }


def manifest_models(root, texts, words):
    manifest = json.loads((root / "manifest.json").read_text())
    return [record(m["name"], root / m["model_dir"], m["adapter_dir"] and root / m["adapter_dir"],
                   m["labels"] if m["adapter_dir"] else None, texts, words)
            for m in manifest if m["task"] == "token_classification"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=pathlib.Path, nargs="?")
    parser.add_argument("--adapter", type=pathlib.Path, help="a PEFT adapter directory over MODEL_DIR")
    parser.add_argument("--labels", help="comma-separated labels of an adapter's head, in id order")
    parser.add_argument("--models", type=pathlib.Path,
                        help="a directory write_parity_models wrote (default: write one now)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "token_tiny.json")
    parser.add_argument("--texts-file", type=pathlib.Path,
                        help='JSON {"texts": [...], "words": [[...], ...]} replacing the default inputs')
    args = parser.parse_args()
    texts, words = TEXTS, WORDS
    if args.texts_file:
        given = json.loads(args.texts_file.read_text())
        texts, words = given.get("texts", texts), given.get("words", words)

    if args.model_dir:
        labels = args.labels.split(",") if args.labels else None
        models = [record(args.model_dir.name, args.model_dir, args.adapter, labels, texts, words)]
    elif args.models:
        models = manifest_models(args.models, texts, words)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["cargo", "run", "--release", "--quiet", "--example", "write_parity_models", "--", tmp],
                           cwd=ROOT, check=True)
            models = manifest_models(pathlib.Path(tmp), texts, words)
    try:
        peft_version = __import__("peft").__version__
    except ImportError:
        peft_version = None
    fixture = {
        "made_by": "scripts/make_token_fixture.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "peft": peft_version,
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
    for model in models:
        for case in model["texts"]:
            print(model["name"], repr(case["text"]), "->",
                  [(e["entity_group"], e["word"]) for e in case["pipeline_simple"]],
                  "margin", case["min_top2_margin"], file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
