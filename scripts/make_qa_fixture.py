#!/usr/bin/env python3
"""Records what transformers computes on extractive-QA model directories that temper exported
(merged, or a PEFT adapter over its base), so a Rust test can check temper's windows,
encoder + qa_outputs head and answer decoding against an independent implementation.

    python scripts/make_qa_fixture.py [--models DIR] [--out tests/fixtures/qa_tiny.json]
    python scripts/make_qa_fixture.py MODEL_DIR [--adapter ADAPTER_DIR]
        [--max-seq-len 48 --doc-stride 16 --max-answer-length 30] [--cases-file cases.json]

Without MODEL_DIR it records every QA model of the manifest.json that
`cargo run --release --example write_parity_models -- DIR` writes (run into a temporary
directory unless --models names one already written): the fixture that
`src/tasks/question_answering/fixture_tests.rs` checks. Commit the JSON; rerun only when
that writer changes (the test's logit check says so).

MODEL_DIR holds config.json, the weights and tokenizer.json; with --adapter it is the base
and ADAPTER_DIR the PEFT adapter (qa_outputs in modules_to_save). The small default
max_seq_len / doc_stride make the longer default contexts span several windows, so the window
arithmetic is exercised on a tiny model; pass 384 / 128 for the production values.

Two decodings are recorded:
- run_qa.py's `postprocess_qa_predictions` (what temper's evaluation and serving pick): in
  every window the n_best (20) highest start and end logits are paired, a pair is a candidate
  when both tokens are in the context, start <= end and the span is at most
  max_answer_length tokens; the highest start + end logit wins across windows, its text is
  the context between the first token's start offset and the last token's end offset. With
  null answers (SQuAD v2) the smallest CLS start + end over the windows competes ("" when it
  is larger). The answer's score is the question-answering pipeline's probability of that
  span (p_start x p_end, softmax over the window's context tokens and CLS), computed by
  `select_starts_ends`; a null answer's, the smallest p_start[CLS] x p_end[CLS] over windows.
- The 4.x question-answering pipeline's own (transformers 5 no longer ships it; reproduced
  from what it still ships): the pipeline's windows (tokenizer(question, context,
  truncation="only_second", max_length, stride, return_overflowing_tokens,
  return_offsets_mapping), p_mask = 1 outside the context except the CLS token), each window
  scored by `select_starts_ends` from transformers.pipelines.document_question_answering,
  spans ranked by probability across windows and widened to whole words
  (`token_to_word` / `word_to_chars`). It differs from run_qa's where windows disagree or a
  span starts or ends inside a word; kept for reference.

Output (JSON, floats rounded to 6 decimals):
{"made_by", "transformers", "torch", "peft", "max_seq_len", "doc_stride", "max_answer_length",
 "n_best", "top_k",
 "models": [{"name", "adapter" (bool),
  "cases": [{"question", "context",
   "windows": [{"input_ids", "token_type_ids", "offsets" ([start, end) chars into the context
      for context tokens, null elsewhere), "start_logits", "end_logits",
      "min_top2_margin" (smallest best-minus-second gap of start and end logits over the
      context tokens and CLS)}],
   "run_qa": {"answer", "start", "end", "score", "window", "start_token", "end_token"},
   "run_qa_v2": {the same, or "answer": "" with the null score},
   "pipeline": [{"answer", "score", "start", "end"}],           # top_k, handle_impossible_answer=False
   "pipeline_with_null": [{"answer", "score", "start", "end"}], # handle_impossible_answer=True ("" = null)
   }]}]}
"""
import argparse
import inspect
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
from transformers.pipelines.document_question_answering import select_starts_ends

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from reference_qa import N_BEST, answers_of  # noqa: E402  (bench/reference_qa.py's post-processing)

CASES = [
    {"question": "Where is the Eiffel Tower?", "context": "The Eiffel Tower is in Paris, France."},
    {"question": "Who would never recommend the place?",
     "context": "the movie was good and the food was great, but the music was boring. i loved the story "
                "of the film in Paris; my friend hated the acting and the plot. we would never recommend "
                "this place again, said Barack Obama in 2009."},
    {"question": "Was ist das?", "context": "Zürich   und São Paulo sind weit voneinander entfernt!"},
    {"question": "When did the plague ravage London?",
     "context": "Plague ravaged London in 1563 and 1665, reducing its population by 10 to 30%."},
    # One-word contexts: the null answer (CLS) competes with few spans (and wins for the LoRA
    # model of write_parity_models in the first).
    {"question": "Where?", "context": "sad"},
    {"question": "What was it?", "context": "nothing."},
]
TOP_K = 3


def rounded(values):
    return [round(float(v), 6) for v in values]


def load(model_dir, adapter_dir):
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def model_inputs(model, enc):
    """The encoding's tensors the model takes (DistilBERT has no token_type_ids)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in enc.items() if k in accepted}


def margin(logits, mask):
    values = np.sort(np.asarray(logits)[mask])
    return float(values[-1] - values[-2]) if len(values) > 1 else None


def p_mask(enc, i, cls_id):
    """The pipeline's mask: 1 outside the context, except the CLS token."""
    return np.array([0 if s == 1 or int(token) == cls_id else 1
                     for s, token in zip(enc.sequence_ids(i), enc["input_ids"][i])])


def scored_spans(enc, i, start_logits, end_logits, args, cls_id, top_k, min_null_score, handle_impossible_answer):
    return select_starts_ends(
        start=np.array([start_logits[i]]), end=np.array([end_logits[i]]), p_mask=p_mask(enc, i, cls_id),
        attention_mask=enc["attention_mask"][i].numpy(), min_null_score=min_null_score, top_k=top_k,
        handle_impossible_answer=handle_impossible_answer, max_answer_len=args.max_answer_length)


def pipeline_answers(enc, start_logits, end_logits, context, args, handle_impossible_answer, cls_id):
    """The 4.x question-answering pipeline's postprocess over all windows."""
    min_null_score, answers = 1000000.0, []
    for i in range(len(start_logits)):
        starts, ends, scores, min_null_score = scored_spans(enc, i, start_logits, end_logits, args, cls_id, TOP_K,
                                                            min_null_score, handle_impossible_answer)
        encoding = enc.encodings[i]
        for s, e, score in zip(starts, ends, scores):
            try:  # align_to_words, as the pipeline did by default
                start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            except Exception:  # noqa: BLE001 -- the pipeline's own fallback to the token offsets
                start, end = encoding.offsets[s][0], encoding.offsets[e][1]
            answers.append({"answer": context[start:end], "score": round(float(score), 6), "start": int(start),
                            "end": int(end)})
    if handle_impossible_answer:
        answers.append({"answer": "", "score": round(float(min_null_score), 6), "start": 0, "end": 0})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:TOP_K]


def run_qa_answer(enc, windows, start_logits, end_logits, context, args, with_null, cls_id):
    """run_qa's postprocess_qa_predictions (v2 when `with_null`), scored as the pipeline scores
    the same span."""
    null_logit, best = None, None
    for i, window in enumerate(windows):
        offsets = window["offsets"]
        starts, ends = start_logits[i][:len(offsets)], end_logits[i][:len(offsets)]
        feature_null = starts[0] + ends[0]
        if null_logit is None or feature_null < null_logit:
            null_logit = feature_null
        for s in np.argsort(starts)[-1:-N_BEST - 1:-1]:
            for e in np.argsort(ends)[-1:-N_BEST - 1:-1]:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > args.max_answer_length:
                    continue
                if best is None or starts[s] + ends[e] > best[0]:
                    best = (starts[s] + ends[e], i, int(s), int(e))
    if with_null and (best is None or null_logit > best[0]):
        min_null = 1000000.0
        for i in range(len(windows)):
            min_null = scored_spans(enc, i, start_logits, end_logits, args, cls_id, 1, min_null, True)[3]
        return {"answer": "", "start": 0, "end": 0, "score": round(float(min_null), 6), "window": None,
                "start_token": None, "end_token": None}
    _, i, s, e = best
    length = len(windows[i]["offsets"])
    starts, ends, scores, _ = scored_spans(enc, i, start_logits, end_logits, args, cls_id, length * length,
                                           1000000.0, False)
    score = next(float(sc) for a, b, sc in zip(starts, ends, scores) if (a, b) == (s, e))
    start, end = windows[i]["offsets"][s][0], windows[i]["offsets"][e][1]
    return {"answer": context[start:end], "start": start, "end": end, "score": round(score, 6), "window": i,
            "start_token": s, "end_token": e}


@torch.no_grad()
def case(model, tokenizer, question, context, args):
    enc = tokenizer(question, context, truncation="only_second", max_length=args.max_seq_len,
                    stride=args.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="longest", return_tensors="pt")
    out = model(**model_inputs(model, enc))
    windows, starts, ends = [], [], []
    for i in range(enc["input_ids"].shape[0]):
        length = int(enc["attention_mask"][i].sum())
        sequence_ids = enc.sequence_ids(i)
        offsets = [list(map(int, o)) if sequence_ids[k] == 1 else None
                   for k, o in enumerate(enc["offset_mapping"][i][:length].tolist())]
        start_logits, end_logits = out.start_logits[i][:length].numpy(), out.end_logits[i][:length].numpy()
        candidates = np.array([o is not None or k == 0 for k, o in enumerate(offsets)])  # context + CLS
        windows.append({"input_ids": enc["input_ids"][i][:length].tolist(),
                        "token_type_ids": enc["token_type_ids"][i][:length].tolist(), "offsets": offsets,
                        "start_logits": rounded(start_logits), "end_logits": rounded(end_logits),
                        "min_top2_margin": round(min(margin(start_logits, candidates), margin(end_logits, candidates)), 6)})
        starts.append(out.start_logits[i].numpy())
        ends.append(out.end_logits[i].numpy())
    cls_id = tokenizer.cls_token_id
    run_qa_v2 = run_qa_answer(enc, windows, starts, ends, context, args, True, cls_id)
    # The same decision as the benchmark's reference (bench/reference_qa.py).
    row = {"id": "case", "context": context}
    meta = [(0, w["offsets"]) for w in windows]
    assert run_qa_v2["answer"] == answers_of([row], meta, starts, ends, args.max_answer_length)["case"]
    return {"question": question, "context": context, "windows": windows,
            "run_qa": run_qa_answer(enc, windows, starts, ends, context, args, False, cls_id),
            "run_qa_v2": run_qa_v2,
            "pipeline": pipeline_answers(enc, starts, ends, context, args, False, cls_id),
            "pipeline_with_null": pipeline_answers(enc, starts, ends, context, args, True, cls_id)}


def record(name, model_dir, adapter_dir, cases, args):
    model, tokenizer = load(model_dir, adapter_dir)
    return {"name": name, "adapter": bool(adapter_dir),
            "cases": [case(model, tokenizer, c["question"], c["context"], args) for c in cases]}


def manifest_models(root, cases, args):
    manifest = json.loads((root / "manifest.json").read_text())
    return [record(m["name"], root / m["model_dir"], m["adapter_dir"] and root / m["adapter_dir"], cases, args)
            for m in manifest if m["task"] == "question_answering"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=pathlib.Path, nargs="?")
    parser.add_argument("--adapter", type=pathlib.Path, help="a PEFT adapter directory over MODEL_DIR")
    parser.add_argument("--models", type=pathlib.Path,
                        help="a directory write_parity_models wrote (default: write one now)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "qa_tiny.json")
    parser.add_argument("--max-seq-len", type=int, default=48)
    parser.add_argument("--doc-stride", type=int, default=16)
    parser.add_argument("--max-answer-length", type=int, default=30)
    parser.add_argument("--cases-file", type=pathlib.Path,
                        help='JSON [{"question", "context"}, ...] replacing the default cases')
    args = parser.parse_args()
    cases = json.loads(args.cases_file.read_text()) if args.cases_file else CASES

    if args.model_dir:
        models = [record(args.model_dir.name, args.model_dir, args.adapter, cases, args)]
    elif args.models:
        models = manifest_models(args.models, cases, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["cargo", "run", "--release", "--quiet", "--example", "write_parity_models", "--", tmp],
                           cwd=ROOT, check=True)
            models = manifest_models(pathlib.Path(tmp), cases, args)
    try:
        peft_version = __import__("peft").__version__
    except ImportError:
        peft_version = None
    fixture = {
        "made_by": "scripts/make_qa_fixture.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "peft": peft_version,
        "max_seq_len": args.max_seq_len, "doc_stride": args.doc_stride,
        "max_answer_length": args.max_answer_length, "n_best": N_BEST, "top_k": TOP_K,
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
    for model in models:
        for c in model["cases"]:
            print(model["name"], repr(c["question"]), len(c["windows"]), "windows -> run_qa",
                  repr(c["run_qa"]["answer"]), c["run_qa"]["score"], "| v2:", repr(c["run_qa_v2"]["answer"]),
                  "| pipeline:", repr(c["pipeline"][0]["answer"]), c["pipeline"][0]["score"],
                  "| margin", min(w["min_top2_margin"] for w in c["windows"]), file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
