#!/usr/bin/env python3
"""Records what transformers computes on an extractive-QA model directory that temper
exported (merged, or a PEFT adapter over its base), so a Rust test can check temper's windows,
encoder + qa_outputs head and answer decoding against an independent implementation. Run it
on the tiny directory the Rust side writes, commit the JSON, and rerun only when that writer
changes.

    python scripts/make_qa_fixture.py MODEL_DIR [--adapter ADAPTER_DIR] [--out tests/fixtures/qa_tiny.json]
        [--max-seq-len 48 --doc-stride 16 --max-answer-length 30] [--cases-file cases.json]

MODEL_DIR holds config.json, the weights and tokenizer.json; with --adapter it is the base
and ADAPTER_DIR the PEFT adapter (qa_outputs in modules_to_save). The small default
max_seq_len / doc_stride make the long default context span several windows, so the window
arithmetic is exercised on a tiny model; pass 384 / 128 for the production values.

transformers 5 no longer ships the question-answering pipeline. The pipeline's decoding is
reproduced here from what transformers still ships: the windows are the pipeline's
(tokenizer(question, context, truncation="only_second", max_length, stride,
return_overflowing_tokens, return_offsets_mapping), p_mask = 1 outside the context except the
CLS token), each window is scored by `select_starts_ends` from
transformers.pipelines.document_question_answering (the function the 4.x QA pipeline called:
softmax over the unmasked start and end logits, span score = p_start x p_end, end >= start,
at most max_answer_len tokens, the null score p_start[CLS] x p_end[CLS] kept as the minimum
over windows when handle_impossible_answer), and a span becomes characters the 4.x way (the
words holding its first and last token, `token_to_word` / `word_to_chars`).

Output (JSON, floats rounded to 6 decimals):
{"made_by", "transformers", "torch", "model_dir", "adapter", "max_seq_len", "doc_stride",
 "max_answer_length", "top_k",
 "cases": [{"question", "context",
   "windows": [{"input_ids", "token_type_ids", "offsets" ([start, end) chars into the context
      for context tokens, null elsewhere), "start_logits", "end_logits",
      "min_top2_margin" (smallest best-minus-second gap of start and end logits in the context)}],
   "pipeline": [{"answer", "score", "start", "end"}],           # top_k answers, handle_impossible_answer=False
   "pipeline_with_null": [{"answer", "score", "start", "end"}], # handle_impossible_answer=True ("" = null)
   "squad_v2_answer": "..."}]}  # run_qa.py's post-processing as bench/reference_qa.py does it:
                                # best start+end logit span (n_best 20, max_answer_length) vs the
                                # smallest CLS start+end over the windows, "" when the null wins
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
from transformers.pipelines.document_question_answering import select_starts_ends

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from reference_qa import answers_of  # noqa: E402  (bench/reference_qa.py's post-processing)

CASES = [
    {"question": "Where is the Eiffel Tower?", "context": "The Eiffel Tower is in Paris, France."},
    {"question": "Who wrote it?",
     "context": "In 1466, perhaps 40,000 people died of the plague in Paris. During the 16th and 17th centuries, "
                "the plague was present in Paris around 30 per cent of the time. The Black Death ravaged Europe "
                "for three years before it continued on into Russia, where the disease was present somewhere in "
                "the country 25 times between 1350 and 1490. Plague epidemics ravaged London in 1563, 1593, "
                "1603, 1625, 1636, and 1665, reducing its population by 10 to 30% during those years."},
    {"question": "Was ist das?", "context": "Zürich   und São Paulo sind weit voneinander entfernt!"},
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


def margin(logits, mask):
    values = np.sort(np.asarray(logits)[mask])
    return float(values[-1] - values[-2]) if len(values) > 1 else None


def pipeline_answers(enc, start_logits, end_logits, context, args, handle_impossible_answer, cls_id):
    """The 4.x question-answering pipeline's postprocess over all windows."""
    min_null_score, answers = 1000000.0, []
    for i in range(len(start_logits)):
        sequence_ids = enc.sequence_ids(i)
        p_mask = np.array([0 if s == 1 or int(token) == cls_id else 1
                           for s, token in zip(sequence_ids, enc["input_ids"][i])])
        starts, ends, scores, min_null_score = select_starts_ends(
            start=np.array([start_logits[i]]), end=np.array([end_logits[i]]), p_mask=p_mask,
            attention_mask=enc["attention_mask"][i].numpy(), min_null_score=min_null_score, top_k=TOP_K,
            handle_impossible_answer=handle_impossible_answer, max_answer_len=args.max_answer_length)
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


@torch.no_grad()
def case(model, tokenizer, question, context, args):
    enc = tokenizer(question, context, truncation="only_second", max_length=args.max_seq_len,
                    stride=args.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="longest", return_tensors="pt")
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"])
    windows, starts, ends = [], [], []
    for i in range(enc["input_ids"].shape[0]):
        length = int(enc["attention_mask"][i].sum())
        sequence_ids = enc.sequence_ids(i)
        offsets = [list(map(int, o)) if sequence_ids[k] == 1 else None
                   for k, o in enumerate(enc["offset_mapping"][i][:length].tolist())]
        start_logits, end_logits = out.start_logits[i][:length].numpy(), out.end_logits[i][:length].numpy()
        in_context = np.array([o is not None for o in offsets])
        windows.append({"input_ids": enc["input_ids"][i][:length].tolist(),
                        "token_type_ids": enc["token_type_ids"][i][:length].tolist(), "offsets": offsets,
                        "start_logits": rounded(start_logits), "end_logits": rounded(end_logits),
                        "min_top2_margin": round(min(margin(start_logits, in_context), margin(end_logits, in_context)), 6)})
        starts.append(out.start_logits[i].numpy())
        ends.append(out.end_logits[i].numpy())
    row = {"id": "case", "context": context}
    meta = [(0, w["offsets"]) for w in windows]
    return {"question": question, "context": context, "windows": windows,
            "pipeline": pipeline_answers(enc, starts, ends, context, args, False, tokenizer.cls_token_id),
            "pipeline_with_null": pipeline_answers(enc, starts, ends, context, args, True, tokenizer.cls_token_id),
            "squad_v2_answer": answers_of([row], meta, starts, ends, args.max_answer_length)["case"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--adapter", type=pathlib.Path, help="a PEFT adapter directory over MODEL_DIR")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "qa_tiny.json")
    parser.add_argument("--max-seq-len", type=int, default=48)
    parser.add_argument("--doc-stride", type=int, default=16)
    parser.add_argument("--max-answer-length", type=int, default=30)
    parser.add_argument("--cases-file", type=pathlib.Path,
                        help='JSON [{"question", "context"}, ...] replacing the default cases')
    args = parser.parse_args()
    cases = json.loads(args.cases_file.read_text()) if args.cases_file else CASES

    model, tokenizer = load(args.model_dir, args.adapter)
    fixture = {
        "made_by": "scripts/make_qa_fixture.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "model_dir": args.model_dir.name,
        "adapter": bool(args.adapter),
        "max_seq_len": args.max_seq_len, "doc_stride": args.doc_stride,
        "max_answer_length": args.max_answer_length, "top_k": TOP_K,
        "cases": [case(model, tokenizer, c["question"], c["context"], args) for c in cases],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for c in fixture["cases"]:
        print(repr(c["question"]), len(c["windows"]), "windows ->", repr(c["pipeline"][0]["answer"]),
              "| with null:", repr(c["pipeline_with_null"][0]["answer"]), "| squad v2:", repr(c["squad_v2_answer"]),
              file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
