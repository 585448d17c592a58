#!/usr/bin/env python3
"""A stand-in for `temper serve` for bench/ner.py, bench/qa.py and bench/dpo.py: the files,
jobs and events routes of bench/fake_temper.py (supervised and dpo methods), plus
/v1/token_classifications, /v1/question_answering and /v1/chat/completions. It checks the
drivers' flow and arithmetic without a release build:

    .venv-bench/bin/python bench/ner.py --assets assets --limit 160 --temper bench/fake_temper_tasks.py
    .venv-bench/bin/python bench/qa.py --assets assets --limit 160 --temper bench/fake_temper_tasks.py
    .venv-bench/bin/python bench/dpo.py --assets assets --limit 40 --temper bench/fake_temper_tasks.py

Known pace (bench/fake_temper.py's): a validation pass before training (the step-0 event),
0.4 s per optimizer step, 5 s of evaluation at each epoch end. So the drivers must report
train_samples_per_s ≈ batch / 0.4: 40 for NER and QA (batch 16; for QA one window per
question), 10 pairs/s for DPO (batch 4), and with 100 tokens a pair train_tokens_per_s ≈ 1,000.
Answers: the endpoints answer from the uploaded validation files, so a correct driver scores
them perfectly:
- token classification: for each text that is a validation tweet's words joined by spaces,
  each word tagged with its gold tag and split into two sub-word entities (the first three
  characters, then the rest tagged I-<type> or O): entity_f1 = token_accuracy = 1.0 only if
  the driver reads each word's first sub-word;
- question answering: the gold answer's text and offsets, "" for an unanswerable question:
  exact = f1 = 100.0;
- chat completions: "1" for every prompt (usage.completion_tokens 2).
DPO metrics events: step 0 valid_loss 0.6931 and reward accuracy/margin/rewards 0; the epoch
end valid_loss 0.25, valid_reward_accuracy 0.9, valid_reward_margin 1.5, valid_rewards_chosen
0.5, valid_rewards_rejected -1.0.
"""
import argparse
import itertools
import json
import math
from urllib.parse import urlparse

import fake_temper
from fake_temper import T0, Handler, ThreadingHTTPServer

SECONDS_PER_STEP, PRE_EVAL_SECONDS, EVAL_SECONDS, TOKENS_PER_PAIR = 0.4, 4, 5, 100
JOB_IDS = itertools.count(1)
TAGGED = {}    # text -> [(start, end, tag)] of its words, from uploaded {"tokens", "tags"} files
ANSWERS = {}   # (question, context) -> (answer, start, end)


def remember(data):
    """Indexes the uploaded JSONL rows the answer endpoints serve."""
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "tokens" in row and "tags" in row:
            spans, position = [], 0
            for token, tag in zip(row["tokens"], row["tags"]):
                spans.append((position, position + len(token), tag))
                position += len(token) + 1
            TAGGED[" ".join(row["tokens"])] = spans
        elif isinstance(row, dict) and "context" in row and "answers" in row:
            answers = row["answers"]
            if answers["text"]:
                start = answers["answer_start"][0]
                ANSWERS[(row["question"], row["context"])] = (answers["text"][0], start, start + len(answers["text"][0]))
            else:
                ANSWERS[(row["question"], row["context"])] = ("", 0, 0)


def n_rows(data):
    return sum(1 for line in data.decode("utf-8", errors="replace").splitlines() if line.strip())


def make_events(job_id, n_train, method):
    kind = method["type"]
    hp = method[kind]["hyperparameters"]
    per_epoch = math.ceil(n_train / hp["batch_size"])
    total = per_epoch * hp["n_epochs"]
    dpo = kind == "dpo"
    events = [(T0, "message", "Fine-tuning job started", None)]
    clock = T0 + 3.0 + PRE_EVAL_SECONDS
    before = {"valid_loss": 0.6931}
    if dpo:
        before.update(valid_reward_accuracy=0.0, valid_reward_margin=0.0, valid_rewards_chosen=0.0,
                      valid_rewards_rejected=0.0)
    events.append((int(clock), "metrics", f"Step 0/{total}: validation loss=0.6931",
                   {"step": 0, "total_steps": total, "tokens_seen": 0, **before}))
    seen = 0
    for step in range(1, total + 1):
        clock += SECONDS_PER_STEP
        batch = min(hp["batch_size"], n_train - ((step - 1) % per_epoch) * hp["batch_size"])
        seen += batch * TOKENS_PER_PAIR
        epoch_end = step % per_epoch == 0
        data = {"step": step, "total_steps": total, "train_loss": 0.7 - 0.4 * step / total, "tokens_seen": seen}
        if epoch_end:
            clock += EVAL_SECONDS
            data["valid_loss"] = 0.25
            if dpo:
                data.update(valid_reward_accuracy=0.9, valid_reward_margin=1.5, valid_rewards_chosen=0.5,
                            valid_rewards_rejected=-1.0)
        events.append((int(clock), "metrics", f"Step {step}/{total}: training loss={data['train_loss']:.4f}", data))
    events.append((int(clock) + 1, "message", f"New fine-tuned model created: ft:{job_id}", None))
    return [{"id": f"ftevent-{i}", "object": "fine_tuning.job.event", "created_at": t, "level": "info",
             "type": kind_, "message": message, "data": data}
            for i, (t, kind_, message, data) in enumerate(events)][::-1]  # newest first


def sub_word_entities(spans):
    """Two entities per word not tagged O: its first three characters, then the rest."""
    entities = []
    for start, end, tag in spans:
        if tag == "O":
            continue
        cut = min(start + 3, end)
        entities.append({"entity": tag, "score": 0.9, "word": "", "start": start, "end": cut})
        if cut < end:
            entities.append({"entity": "I-" + tag[2:], "score": 0.9, "word": "", "start": cut, "end": end})
    return entities


class TasksHandler(Handler):
    def do_POST(self):
        path = urlparse(self.path).path
        if path == "/v1/files":
            super().do_POST()
            remember(list(fake_temper.FILES.values())[-1])  # the upload just stored
            return None
        if path == "/v1/fine_tuning/jobs":
            request = json.loads(self.body())
            method = request["method"]
            if method.get("type") not in ("supervised", "dpo") or "hyperparameters" not in method.get(method["type"], {}):
                return self.reply({"error": {"message": "bad method", "param": "method",
                                             "type": "invalid_request_error", "code": None}}, 400)
            job_id = f"ftjob-t{next(JOB_IDS)}"
            n_train = n_rows(fake_temper.FILES[request["training_file"]])
            fake_temper.EVENTS[job_id] = make_events(job_id, n_train, method)
            fake_temper.JOBS[job_id] = {
                "id": job_id, "object": "fine_tuning.job", "model": request["model"], "created_at": T0,
                "status": "succeeded", "fine_tuned_model": f"ft:{job_id}", "trained_tokens": n_train * TOKENS_PER_PAIR,
                "training_file": request["training_file"], "validation_file": request.get("validation_file"),
                "seed": request["seed"], "hyperparameters": None, "method": method, "error": None,
                "finished_at": T0 + 1, "organization_id": "temper", "result_files": []}
            return self.reply(dict(fake_temper.JOBS[job_id], status="validating_files"))
        request = json.loads(self.body())
        if path == "/v1/token_classifications":
            if request.get("aggregation") != "none":
                return self.reply({"error": {"message": "this fake answers aggregation none only",
                                             "param": "aggregation", "type": "invalid_request_error", "code": None}}, 400)
            texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
            data = [{"index": i, "entities": sub_word_entities(TAGGED.get(text, []))} for i, text in enumerate(texts)]
            return self.reply({"object": "list", "model": request["model"], "data": data})
        if path == "/v1/question_answering":
            items = request.get("input") or [{"question": request["question"], "context": request["context"]}]
            data = []
            for i, item in enumerate(items):
                answer, start, end = ANSWERS.get((item["question"], item["context"]), ("", 0, 0))
                data.append({"index": i, "answer": answer, "score": 0.9, "start": start, "end": end})
            return self.reply({"object": "list", "model": request["model"], "data": data})
        if path == "/v1/chat/completions":
            return self.reply({
                "id": "chatcmpl-1", "object": "chat.completion", "created": T0, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "1"}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}})
        return self.reply({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args, _ = parser.parse_known_args()
    ThreadingHTTPServer((args.host, args.port), TasksHandler).serve_forever()


if __name__ == "__main__":
    main()
