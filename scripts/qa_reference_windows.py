#!/usr/bin/env python3
# Usage: qa_reference_windows.py TOKENIZER_JSON MAX_SEQ_LEN DOC_STRIDE '[question, context, answer_text, answer_start]'
# Prints each window's length, label, first ids and first context offsets (the numbers
# src/tasks/question_answering/windows_tests.rs checks). Needs `pip install tokenizers`.
# Reference windows and labels, as transformers' run_qa prepare_train_features computes them.
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.no_padding()
tok.enable_truncation(int(sys.argv[2]), stride=int(sys.argv[3]), strategy="only_second")
q, c, a_text, a_start = json.loads(sys.argv[4])
enc = tok.encode(q.lstrip(), c)
wins = [enc] + enc.overflowing
out = []
for w in wins:
    ids = w.ids; offsets = w.offsets; seq = w.sequence_ids
    cls = ids.index(tok.token_to_id("[CLS]"))
    start_char = a_start; end_char = a_start + len(a_text)
    ts = 0
    while seq[ts] != 1: ts += 1
    te = len(ids) - 1
    while seq[te] != 1: te -= 1
    if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
        lab = (cls, cls)
    else:
        while ts < len(offsets) and offsets[ts][0] <= start_char: ts += 1
        s = ts - 1
        while offsets[te][1] >= end_char: te -= 1
        lab = (s, te + 1)
    out.append({"len": len(ids), "label": lab, "first_ids": ids[:4], "ctx_first": offsets[seq.index(1)]})
print(json.dumps(out))
