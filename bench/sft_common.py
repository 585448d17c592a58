"""Shared pieces of the chat SFT benchmark (bench/sft.py and bench/reference_sft.py): the
recipe and its flags, the data, the generation prompts and the answer scoring; the LoRA
recipe, hyperparameters, data and answer scoring are shared with the DPO benchmark
(bench/dpo_common.py)."""
from common import add_recipe_flags, data_paths, read_jsonl, recipe_of, targets_of, write_jsonl

# One recipe for both sides (flags override it). temper's defaults for decoders are the same
# LoRA numbers; max_grad_norm 1.0, weight decay 0 and AdamW (0.9, 0.999, 1e-8) are temper's
# and the reference's fixed choices.
SFT_RECIPE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",  # <models-dir>/HuggingFaceTB/SmolLM2-135M-Instruct.gguf
    "epochs": 1,
    "learning_rate": 2e-4,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.0,
    "batch_size": 4,
    "max_seq_len": 256,
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "seed": 0,
    "gen_prompts": 20,
    "max_new_tokens": 32,
}


# The recipe keys of the LLM benchmarks that are fixed, not flags (temper's and the reference's
# fixed choices, echoed in the JSON line).
LLM_FIXED = ("lr_scheduler", "weight_decay", "max_grad_norm")


def add_sft_flags(parser):
    add_recipe_flags(parser, SFT_RECIPE, LLM_FIXED)


def sft_recipe_of(args):
    """The recipe actually used, echoed in the JSON line."""
    return recipe_of(args, SFT_RECIPE)


def lora_hyperparameters(args, recipe):
    """temper's hyperparameters shared by the LoRA jobs of the SFT and DPO benchmarks (OpenAI's
    n_epochs, batch_size and learning_rate_multiplier "auto", plus temper's own keys);
    target_modules only when --targets is not the recipe's (temper's default)."""
    hp = {"n_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate_multiplier": "auto",
          "learning_rate": args.lr, "lr_scheduler": recipe["lr_scheduler"], "warmup_ratio": args.warmup_ratio,
          "max_seq_len": args.max_seq_len, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
          "lora_dropout": args.lora_dropout}
    if targets_of(args) != recipe["targets"].split(","):
        hp["target_modules"] = targets_of(args)
    return hp


def sarcasm_paths(assets, kind="chat"):
    """assets/data/sarcasm/<kind>_{train,valid}.jsonl (kind "chat" or "dpo")."""
    return data_paths(assets, "sarcasm", (f"{kind}_train.jsonl", f"{kind}_valid.jsonl"), " --llm")


def read_chat(path, limit=0):
    """The `messages` lists of an OpenAI chat fine-tuning JSONL file."""
    return [row["messages"] for row in read_jsonl(path, limit)]


def write_chat(path, conversations):
    write_jsonl(path, ({"messages": messages} for messages in conversations))


def generation_cases(valid, n):
    """(prompt messages, expected answer) for the first n validation conversations: everything
    before the final assistant message is the prompt, its content the expected answer."""
    cases = []
    for messages in valid[:n]:
        if messages and messages[-1]["role"] == "assistant":
            cases.append((messages[:-1], messages[-1]["content"]))
    return cases


def answer_accuracy(expected, generated):
    """Exact match after stripping whitespace (the answers are "0" / "1")."""
    if not expected:
        return None
    return sum(e.strip() == g.strip() for e, g in zip(expected, generated)) / len(expected)


# Warm-up request before the timed generation (both sides): loads the model in temper and
# warms torch's kernels, so the timed prompts measure generation alone.
WARMUP_MESSAGES = [{"role": "user", "content": "Say hello."}]


# The long-generation phase (both sides, after the answer prompts): open-ended prompts whose
# answers run to the token limit, so decoding, not prefill or request overhead, is measured.
# "single": the first prompt alone; "batch": all of them at once (temper: concurrent
# requests, continuous batching; reference: one left-padded generate() call).
LONG_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright, step by step.",
    "Describe a busy market in a coastal town on a summer morning.",
    "Give advice to someone starting to learn the piano as an adult.",
    "Write a letter from a cat to its owner about the new dog.",
    "Explain why the sky is blue to a ten-year-old.",
    "Describe the plot of an imaginary science fiction film.",
    "List the steps to bake bread at home, with tips for each.",
]
LONG_MAX_TOKENS = 64


def long_messages():
    return [[{"role": "user", "content": p}] for p in LONG_PROMPTS]


def long_generation_fields(single_tokens, single_seconds, batch_tokens, batch_seconds):
    per_s = lambda tokens, seconds: round(tokens / seconds, 1) if seconds else None  # noqa: E731
    return {
        "long_max_tokens": LONG_MAX_TOKENS, "long_batch_size": len(LONG_PROMPTS),
        "long_single_tokens": single_tokens, "long_single_seconds": round(single_seconds, 3),
        "long_single_tokens_per_s": per_s(single_tokens, single_seconds),
        "long_batch_tokens": batch_tokens, "long_batch_seconds": round(batch_seconds, 3),
        "long_batch_tokens_per_s": per_s(batch_tokens, batch_seconds),
    }
