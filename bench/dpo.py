"""The temper side of the preference-tuning benchmark: a DPO job with LoRA on
SmolLM2-135M-Instruct over the sarcasm preference pairs through temper with the official
openai SDK; the base and the tuned model then answer validation prompts through
/v1/chat/completions. Prints one JSON line with bench/reference_dpo.py's keys.

    .venv-bench/bin/python bench/dpo.py --assets assets [--temper target/release/temper | --base-url URL [--pid PID]]
        [--limit N] [--epochs 1 --lr 5e-5 --warmup-ratio 0 --batch-size 4 --beta 0.1 --max-seq-len 256
         --lora-rank 8 --lora-alpha 16 --lora-dropout 0 --targets ... --seed 0 --gen-prompts 50]

Flow: files.create(dpo_train.jsonl), files.create(dpo_valid.jsonl) (OpenAI's preference rows);
the base model answers the first --gen-prompts validation prompts (greedy, max_tokens 8);
fine_tuning.jobs.create(method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs",
"batch_size", "beta", "learning_rate_multiplier": "auto", and temper's "learning_rate",
"lr_scheduler", "warmup_ratio", "max_seq_len", "lora_rank", "lora_alpha", "lora_dropout"
(+ "target_modules" when --targets is not the default)}}}); poll to a terminal state; the
tuned model answers the same prompts.

From the metrics events (temper names them as TRL does: `train_loss`, `valid_loss`,
`valid_rewards_chosen`, `valid_rewards_rejected`, `valid_reward_accuracy`,
`valid_reward_margin`; a `full_valid_*` value is preferred to its `valid_*` one):
`valid_*_before` from the step-0 event (the validation pass before training), `valid_*_after`
from the last event carrying validation metrics. Timing (bench/task_driver.py) in pairs;
`train_tokens_per_s` = job.trained_tokens x timed steps / total steps / timed seconds, or the
`tokens_seen` difference over the timed intervals when the events carry it.
`peak_rss_mb` = the server's VmHWM after the answers.
"""
import argparse
import os
import shutil
import tempfile

from common import emit, read_jsonl, write_jsonl
from dpo_common import DPO_RECIPE, add_dpo_flags, answer_cases, dpo_recipe_of
from sft_common import answer_accuracy, lora_hyperparameters, sarcasm_paths
from task_driver import Service, add_service_flags, fine_tune, has_validation, training_timing, validation_value

ANSWER_TOKENS = 8
VALID_NAMES = ("loss", "reward_accuracy", "reward_margin", "rewards_chosen", "rewards_rejected")


def hyperparameters_of(args):
    return {**lora_hyperparameters(args, DPO_RECIPE), "beta": args.beta}


def answers(client, model, cases):
    replies = []
    for messages, _ in cases:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=ANSWER_TOKENS,
                                               temperature=0)
        replies.append(reply.choices[0].message.content or "")
    return replies


def before_after(steps):
    """{valid_<name>_before / _after}: the step-0 event's and the last evaluated step's."""
    evaluated = [s for s in sorted(steps) if s > 0 and has_validation(steps[s][1])]
    before = steps[0][1] if 0 in steps else {}
    after = steps[evaluated[-1]][1] if evaluated else {}
    fields = {}
    for name in VALID_NAMES:
        for when, data in (("before", before), ("after", after)):
            value = validation_value(data, name)
            fields[f"valid_{name}_{when}"] = round(value, 4) if isinstance(value, (int, float)) else None
    return fields


def tokens_per_s(job, timing):
    """Tokens of the timed intervals (tokens_seen, else the average) per timed second."""
    if not timing["timed_seconds"]:
        return round((job.trained_tokens or 0) / timing["train_wall_seconds"], 1)
    timed = timing["timed_tokens"]
    if timed is None:
        timed = (job.trained_tokens or 0) * timing["timed_steps"] / max(timing["optimizer_steps"], 1)
    return round(timed / timing["timed_seconds"], 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dpo_flags(parser)
    add_service_flags(parser)
    args = parser.parse_args()

    train_path, valid_path = sarcasm_paths(args.assets, "dpo")
    train, valid = read_jsonl(train_path, args.limit), read_jsonl(valid_path, args.limit)
    upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
    train_path, valid_path = os.path.join(upload_dir, "train.jsonl"), os.path.join(upload_dir, "valid.jsonl")
    write_jsonl(train_path, train)
    write_jsonl(valid_path, valid)
    cases = answer_cases(valid, args.gen_prompts)
    expected = [answer for _, answer in cases]

    service, succeeded = Service(args), False
    try:
        answers_before = answers(service.client, DPO_RECIPE["model"], cases)
        job = fine_tune(service.client, DPO_RECIPE["model"], train_path, valid_path, args.seed,
                        {"type": "dpo", "dpo": {"hyperparameters": hyperparameters_of(args)}},
                        ("sarcasm_dpo_train.jsonl", "sarcasm_dpo_valid.jsonl"))
        shutil.rmtree(upload_dir, ignore_errors=True)
        _, steps, timing = training_timing(service.client, job, len(train), args.epochs, args.batch_size)
        losses = [steps[s][1].get("train_loss") for s in sorted(steps) if s > 0]
        losses = [x for x in losses if x is not None]
        last = losses[-10:]
        answers_after = answers(service.client, job.fine_tuned_model, cases)
        emit({
            "impl": "temper", "model": DPO_RECIPE["model"], "fine_tuned_model": job.fine_tuned_model,
            "train_examples": len(train), "valid_examples": len(valid), "epochs": args.epochs,
            "trained_tokens": job.trained_tokens, **timing,
            "train_tokens_per_s": tokens_per_s(job, timing),
            "train_loss_first": round(losses[0], 4) if losses else None,
            "train_loss_last10": round(sum(last) / len(last), 4) if last else None,
            **before_after(steps),
            "answer_prompts": len(cases),
            "answer_accuracy_before": answer_accuracy(expected, answers_before),
            "answer_accuracy_after": answer_accuracy(expected, answers_after),
            "answers_sample_after": answers_after[:5],
            "peak_rss_mb": service.peak_rss_mb(), "loadavg_1m_end": os.getloadavg()[0],
            "recipe": dpo_recipe_of(args),
        })
        succeeded = True
    finally:
        service.close(succeeded)


if __name__ == "__main__":
    main()
