"""The Python reference for the preference-tuning benchmark: TRL's DPOTrainer with a peft LoRA
adapter on CPU PyTorch tunes SmolLM2-135M-Instruct on the sarcasm preference pairs (the
correct label preferred over the wrong one), with the recipe bench/dpo.py sends to temper.
Prints one JSON line on stdout.

    .venv-bench/bin/python bench/reference_dpo.py --assets assets [--limit N] [--threads T]
        [--epochs 1 --lr 5e-5 --warmup-ratio 0 --batch-size 4 --beta 0.1 --max-seq-len 256 --lora-rank 8
         --lora-alpha 16 --lora-dropout 0 --targets q_proj,...,down_proj --seed 0 --gen-prompts 50]

Model: loaded as bench/reference_sft.py does (the Q4_1 GGUF dequantized to f32; tokenizer and
chat template from the same file). Data: each OpenAI DPO row becomes TRL's conversational
preference example {"prompt": input.messages, "chosen": preferred_output, "rejected":
non_preferred_output}; TRL renders them with the chat template and scores the completion
tokens only (the answer, `<|im_end|>` and the newline the template puts after it).

Recipe (bench/dpo_common.py DPO_RECIPE): sigmoid DPO loss, beta 0.1, the reference model is
the same weights with the adapter disabled (peft_config, ref_model=None); LoRA r 8, alpha 16,
dropout 0, all projections; AdamW lr 5e-5, weight decay 0, linear decay, no warmup, clip 1.0,
batch 4, 1 epoch, max_length 256, seed 0. DPOConfig's own defaults that differ from that are
set back: bf16=False (f32 as temper), gradient_checkpointing=False, use_cpu=True.

Measured:
- `valid_loss_before/after`, `valid_reward_accuracy_before/after`, `valid_reward_margin_*`,
  `valid_rewards_chosen/rejected_*`: DPOTrainer.evaluate() on the validation pairs before and
  after training (TRL's eval_loss and eval_rewards/*), in equal batches (equal_eval_batch: TRL
  averages these metrics over batches unweighted, so that makes them means over pairs, as
  temper's are). Before training the policy is the
  reference, so the loss is ln 2 and every reward 0 (accuracy 0: TRL counts chosen > rejected).
- `answer_accuracy_before/after`: greedy answers of the base model and of the merged tuned
  model to the first --gen-prompts validation prompts, exact match with the preferred answer.
- `train_tokens_per_s`: tokens of the training sequences (prompt + chosen and prompt +
  rejected, no padding) / seconds of DPOTrainer.train() (no evaluation or checkpoint inside:
  eval_strategy and save_strategy are "no"); `train_samples_per_s` in pairs.
- `peak_rss_mb`: ru_maxrss of this process.
"""
import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import warnings

import torch

from common import emit, peak_rss_mb_self, read_jsonl, targets_of
from dpo_common import DPO_RECIPE, add_dpo_flags, answer_cases, dpo_recipe_of, equal_eval_batch
from sft_common import answer_accuracy, sarcasm_paths
from reference_classification import WallClock
from reference_sft import generate

ANSWER_TOKENS = 8


def as_trl(rows):
    from datasets import Dataset
    return Dataset.from_list([{"prompt": row["input"]["messages"], "chosen": row["preferred_output"],
                               "rejected": row["non_preferred_output"]} for row in rows])


def answers(model, tokenizer, cases, stop_ids):
    model.eval()
    return [generate(model, tokenizer, messages, ANSWER_TOKENS, stop_ids)[0] for messages, _ in cases]


def rewards(metrics):
    """The validation numbers of DPOTrainer.evaluate(), under this benchmark's names."""
    get = lambda key: round(metrics[key], 4) if key in metrics else None  # noqa: E731
    return {"loss": get("eval_loss"), "reward_accuracy": get("eval_rewards/accuracies"),
            "reward_margin": get("eval_rewards/margins"), "rewards_chosen": get("eval_rewards/chosen"),
            "rewards_rejected": get("eval_rewards/rejected")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dpo_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    train_path, valid_path = sarcasm_paths(args.assets, "dpo")
    train_rows, valid_rows = read_jsonl(train_path, args.limit), read_jsonl(valid_path, args.limit)
    models_dir, gguf = os.path.join(args.assets, "models"), DPO_RECIPE["model"] + ".gguf"
    load_before = os.getloadavg()[0]
    with contextlib.redirect_stdout(sys.stderr):
        tokenizer = AutoTokenizer.from_pretrained(models_dir, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file=gguf, dtype=torch.float32)
    # transformers marks a model loaded from GGUF as "quantized with GGUF" although its weights
    # are plain f32 after dequantization, and Trainer (hence DPOTrainer) refuses to train a
    # quantized model. Drop the marker: nothing in the model depends on it.
    model.hf_quantizer, model.is_quantized = None, False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
                       if i is not None and i != tokenizer.unk_token_id})
    cases = answer_cases(valid_rows, args.gen_prompts)
    answers_before = answers(model, tokenizer, cases, stop_ids)

    out_dir = tempfile.mkdtemp(prefix="temper-reference-dpo-")
    config = DPOConfig(
        output_dir=out_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=equal_eval_batch(len(valid_rows)),
        learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        weight_decay=DPO_RECIPE["weight_decay"], max_grad_norm=DPO_RECIPE["max_grad_norm"],
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, beta=args.beta, loss_type=["sigmoid"],
        max_length=args.max_seq_len, seed=args.seed, data_seed=args.seed,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
        eval_strategy="no", save_strategy="no", logging_steps=1, report_to=[], disable_tqdm=True)
    lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets_of(args), bias="none", task_type="CAUSAL_LM")
    clock = WallClock()
    torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(sys.stderr):
        trainer = DPOTrainer(model=model, args=config, train_dataset=as_trl(train_rows),
                             eval_dataset=as_trl(valid_rows), processing_class=tokenizer, peft_config=lora,
                             callbacks=[clock])
        before = rewards(trainer.evaluate())
        trainer.train()
        after = rewards(trainer.evaluate())
    shutil.rmtree(out_dir, ignore_errors=True)
    train_tokens = sum(2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
                       for row in trainer.train_dataset) * args.epochs
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    merged = trainer.model.merge_and_unload()
    answers_after = answers(merged, tokenizer, cases, stop_ids)
    expected = [answer for _, answer in cases]
    last = losses[-10:]
    emit({
        "impl": "trl+peft", "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "trl": __import__("trl").__version__, "peft": __import__("peft").__version__,
        "threads": torch.get_num_threads(), "model": DPO_RECIPE["model"],
        "train_examples": len(train_rows), "valid_examples": len(valid_rows), "epochs": args.epochs,
        "optimizer_steps": trainer.state.global_step, "trained_tokens": train_tokens,
        "trainable_params": trainable,
        "train_seconds": round(clock.seconds, 2),
        "train_tokens_per_s": round(train_tokens / clock.seconds, 1),
        "train_samples_per_s": round(len(train_rows) * args.epochs / clock.seconds, 2),
        "train_loss_first": round(losses[0], 4) if losses else None,
        "train_loss_last10": round(sum(last) / len(last), 4) if last else None,
        **{f"valid_{key}_before": value for key, value in before.items()},
        **{f"valid_{key}_after": value for key, value in after.items()},
        "answer_prompts": len(cases),
        "answer_accuracy_before": answer_accuracy(expected, answers_before),
        "answer_accuracy_after": answer_accuracy(expected, answers_after),
        "answers_sample_after": answers_after[:5],
        "peak_rss_mb": round(peak_rss_mb_self(), 1),
        "loadavg_1m_start": load_before, "loadavg_1m_end": os.getloadavg()[0],
        "recipe": dpo_recipe_of(args),
    })


if __name__ == "__main__":
    main()
