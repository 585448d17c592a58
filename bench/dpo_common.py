"""Shared pieces of the preference-tuning (DPO) benchmark (bench/dpo.py and
bench/reference_dpo.py): the recipe and its flags, the sarcasm preference pairs, and the
answer check both sides run before and after training."""
import json
import os

from sft_common import answer_accuracy  # noqa: F401  (re-exported: both sides score answers alike)

# One recipe for both sides (flags override it). LoRA numbers as in the SFT benchmark; the
# optimizer is AdamW (0.9, 0.999, 1e-8), weight decay 0, clip 1.0 on both sides.
DPO_RECIPE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",  # <models-dir>/HuggingFaceTB/SmolLM2-135M-Instruct.gguf
    "epochs": 1,
    "learning_rate": 5e-5,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.0,
    "batch_size": 4,
    "beta": 0.1,
    "max_seq_len": 256,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "seed": 0,
    "gen_prompts": 50,
}


def add_dpo_flags(parser):
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh --llm destination")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N train and first N validation pairs (smoke runs)")
    parser.add_argument("--epochs", type=int, default=DPO_RECIPE["epochs"])
    parser.add_argument("--lr", type=float, default=DPO_RECIPE["learning_rate"])
    parser.add_argument("--warmup-ratio", type=float, default=DPO_RECIPE["warmup_ratio"])
    parser.add_argument("--batch-size", type=int, default=DPO_RECIPE["batch_size"])
    parser.add_argument("--beta", type=float, default=DPO_RECIPE["beta"])
    parser.add_argument("--max-seq-len", type=int, default=DPO_RECIPE["max_seq_len"])
    parser.add_argument("--lora-rank", type=int, default=DPO_RECIPE["lora_rank"])
    parser.add_argument("--lora-alpha", type=float, default=DPO_RECIPE["lora_alpha"])
    parser.add_argument("--lora-dropout", type=float, default=DPO_RECIPE["lora_dropout"])
    parser.add_argument("--targets", default=DPO_RECIPE["targets"],
                        help="LoRA target modules, PEFT names, comma-separated (e.g. q_proj,v_proj)")
    parser.add_argument("--seed", type=int, default=DPO_RECIPE["seed"])
    parser.add_argument("--gen-prompts", type=int, default=DPO_RECIPE["gen_prompts"],
                        help="validation prompts answered by greedy generation before and after training")


def dpo_targets(args):
    return [t.strip() for t in args.targets.split(",") if t.strip()]


def dpo_recipe_of(args):
    return {"epochs": args.epochs, "learning_rate": args.lr, "lr_scheduler": "linear",
            "warmup_ratio": args.warmup_ratio, "batch_size": args.batch_size, "beta": args.beta,
            "max_seq_len": args.max_seq_len, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
            "lora_dropout": args.lora_dropout, "target_modules": dpo_targets(args),
            "weight_decay": DPO_RECIPE["weight_decay"], "max_grad_norm": DPO_RECIPE["max_grad_norm"],
            "seed": args.seed, "gen_prompts": args.gen_prompts}


def dpo_paths(assets):
    data_dir = os.path.join(assets, "data", "sarcasm")
    paths = (os.path.join(data_dir, "dpo_train.jsonl"), os.path.join(data_dir, "dpo_valid.jsonl"))
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"{path} missing: run scripts/fetch-assets.sh {assets} --llm")
    return paths


def read_pairs(path, limit=0):
    """The rows of an OpenAI DPO JSONL file ({"input": {"messages"}, "preferred_output",
    "non_preferred_output"})."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def write_pairs(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def answer_cases(pairs, n):
    """(prompt messages, preferred answer) of the first n pairs."""
    return [(row["input"]["messages"], row["preferred_output"][0]["content"]) for row in pairs[:n]]
