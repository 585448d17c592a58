#!/usr/bin/env python3
"""A stand-in for `temper serve` for bench/sft.py: bench/fake_temper.py's files, jobs and
events routes with SFT-shaped metrics events, plus /v1/chat/completions. It checks the
driver's arithmetic without a release build:

    .venv-bench/bin/python bench/sft.py --assets assets --temper bench/fake_temper_sft.py

Known pace: the validation pass before training takes 4 s (the step-0 event comes after it),
each optimizer step 0.5 s, the epoch-end evaluation 3 s; each example is 50 tokens. With
batch 4 the driver must report train_tokens_per_s ≈ 400 and train_samples_per_s ≈ 8,
valid_loss_before 2.5 / after 0.25, valid_mean_token_accuracy_before 0.5 / after 0.95.
Chat completions answer "1" with usage.completion_tokens 2, so answer_accuracy is the
share of "1" among the validation prompts and generate_tokens = 2 x prompts.
"""
import json
import math
import time

import fake_temper
from fake_temper import T0, Handler, ThreadingHTTPServer

SECONDS_PER_STEP, PRE_EVAL_SECONDS, EVAL_SECONDS, TOKENS_PER_EXAMPLE = 0.5, 4, 3, 50


def n_examples(data):
    return sum(1 for line in data.decode().splitlines() if line.strip())


def make_events(job_id, n_train, hp):
    per_epoch = math.ceil(n_train / hp["batch_size"])
    total = per_epoch * hp["n_epochs"]
    events = [(T0, "message", "Fine-tuning job started", None)]
    clock = T0 + 3.0 + PRE_EVAL_SECONDS  # model loading, tokenisation, validation before training
    events.append((int(clock), "metrics", "Step 0/%d: validation loss=2.5000" % total,
                   {"step": 0, "total_steps": total, "valid_loss": 2.5, "valid_mean_token_accuracy": 0.5,
                    "full_valid_loss": 2.5, "full_valid_mean_token_accuracy": 0.5, "tokens_seen": 0}))
    seen = 0
    for step in range(1, total + 1):
        clock += SECONDS_PER_STEP
        batch = min(hp["batch_size"], n_train - ((step - 1) % per_epoch) * hp["batch_size"])
        seen += batch * TOKENS_PER_EXAMPLE
        epoch_end = step % per_epoch == 0
        if epoch_end:
            clock += EVAL_SECONDS
        data = {"step": step, "total_steps": total, "train_loss": 2.0 - step / total,
                "train_mean_token_accuracy": 0.5, "tokens_seen": seen,
                "full_valid_loss": 0.25 if epoch_end else None,
                "full_valid_mean_token_accuracy": 0.95 if epoch_end else None}
        events.append((int(clock), "metrics", f"Step {step}/{total}: training loss={data['train_loss']:.4f}", data))
    events.append((int(clock) + 1, "message", f"New fine-tuned model created: ft:{job_id}", None))
    return [{"id": f"ftevent-{i}", "object": "fine_tuning.job.event", "created_at": t, "level": "info",
             "type": kind, "message": message, "data": data}
            for i, (t, kind, message, data) in enumerate(events)][::-1]  # newest first


# The request shape temper's HyperparamRequest::parse accepts (unknown keys are a 400 there).
ACCEPTED = {"n_epochs", "batch_size", "learning_rate_multiplier", "learning_rate", "lr_scheduler", "warmup_ratio",
            "weight_decay", "max_grad_norm", "gradient_accumulation_steps", "max_seq_len", "eval_steps",
            "save_steps", "early_stopping_patience", "metric_for_best_model", "lora_rank", "lora_alpha",
            "lora_dropout", "target_modules", "quantize"}


class SftHandler(Handler):
    def do_POST(self):
        if self.path.startswith("/v1/chat/completions"):
            request = json.loads(self.body())
            if not request.get("messages") or not request.get("model"):
                return self.reply({"error": {"message": "messages and model are required", "param": "messages",
                                             "type": "invalid_request_error"}}, 400)
            time.sleep(0.01)
            return self.reply({
                "id": "chatcmpl-1", "object": "chat.completion", "created": T0, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "1"}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}})
        if self.path.startswith("/v1/fine_tuning/jobs"):
            raw = self.body()
            request = json.loads(raw)
            hp = request["method"]["supervised"]["hyperparameters"]
            unknown = sorted(set(hp) - ACCEPTED)
            if unknown:
                return self.reply({"error": {"message": f"Unknown hyperparameter `{unknown[0]}`", "param": unknown[0],
                                             "type": "invalid_request_error"}}, 400)
            self.body = lambda: raw  # the base handler reads the body again
        return super().do_POST()


def main():
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args, _ = parser.parse_known_args()
    fake_temper.make_events, fake_temper.n_examples = make_events, n_examples
    ThreadingHTTPServer((args.host, args.port), SftHandler).serve_forever()


if __name__ == "__main__":
    main()
