"""The Python reference for the chat SFT benchmark: transformers + peft on CPU PyTorch
fine-tune SmolLM2-135M-Instruct with LoRA on the seeded sarcasm chat split, with the same
recipe that bench/sft.py sends to temper. Prints one JSON line on stdout.

    .venv-bench/bin/python bench/reference_sft.py --assets assets [--limit N] [--threads T]
        [--epochs 1 --lr 2e-4 --warmup-ratio 0 --batch-size 4 --max-seq-len 256 --lora-rank 8
         --lora-alpha 16 --lora-dropout 0 --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
         --seed 0 --gen-prompts 20 --max-new-tokens 32]

Model: `AutoModelForCausalLM.from_pretrained(ASSETS/models, gguf_file="HuggingFaceTB/SmolLM2-135M-Instruct.gguf")`
dequantizes the Q4_1 GGUF to f32 (the same weights temper dequantizes); the tokenizer and chat
template come from the same file.

Recipe (bench/sft_common.py SFT_RECIPE): peft LoRA (r 8, alpha 16, dropout 0, bias none,
all attention and MLP projections unless --targets), AdamW lr 2e-4 (betas 0.9/0.999, eps 1e-8,
weight decay 0), linear schedule to 0 with warmup_ratio 0, gradient clipping at norm 1.0,
batch 4 with dynamic right padding, max_seq_len 256 (longer examples truncated and counted),
1 epoch, seed 0 (LoRA init and the shuffled order; temper's order differs, its RNG is its own).
A plain loop, not Trainer, so that only forward + backward + optimizer is timed.

Loss: each conversation is rendered with the chat template; the labels are the tokens of each
assistant message (weight 1) from the start of its content to the end of its end-of-turn
token, found as character spans: [len(render(msgs[:i], add_generation_prompt=True)),
len(render(msgs[:i+1]).rstrip())) mapped through the tokenizer's offsets. With SmolLM2's
ChatML template that is the answer ("0"/"1") and `<|im_end|>`, not the newline after it (as
TRL's assistant_only_loss). Every other token is -100. The loss is the mean cross-entropy
over the labelled tokens of the batch (shifted: logits at t predict token t+1).

Measured:
- `valid_loss_before/after`, `valid_mean_token_accuracy_before/after`: over the whole
  validation file, token-weighted (summed CE / labelled tokens; argmax hits / labelled tokens).
- `train_tokens_per_s`: non-padding tokens of the training batches / seconds of the training
  loop only (no evaluation); `train_samples_per_s` likewise with examples.
- `peak_rss_mb`: ru_maxrss of this process (loading, training, merging and generation).
- After training the adapter is merged (merge_and_unload) and the first --gen-prompts
  validation prompts are answered one at a time by greedy generate() (KV cache, batch 1,
  max_new_tokens 32, stop at `<|im_end|>`/eos). One untimed warm-up request first.
  `generate_tokens` counts every new token including the stop token that ended it;
  `generate_tokens_per_s` = generate_tokens / summed seconds of the generate() calls;
  `answer_accuracy` = exact match of the stripped answer with the expected "0"/"1".
Threads: torch's default (one per physical core) unless --threads.
"""
import argparse
import contextlib
import math
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from common import emit, peak_rss_mb_self, targets_of
from sft_common import (LONG_MAX_TOKENS, SFT_RECIPE, WARMUP_MESSAGES, add_sft_flags, answer_accuracy,
                        generation_cases, long_generation_fields, long_messages, read_chat, sarcasm_paths,
                        sft_recipe_of)


def assistant_spans(tokenizer, messages):
    """Character spans [start, end) of the trained assistant turns in the rendered text."""
    def render(msgs, add_generation_prompt=False):
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    text, spans = render(messages), []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        start, end = len(render(messages[:i], True)), len(render(messages[:i + 1]).rstrip())
        if not text.startswith(render(messages[:i + 1])):
            raise SystemExit("the chat template does not render conversations incrementally")
        spans.append((start, end))
    return text, spans


def encode(tokenizer, messages, max_len):
    """(input_ids, labels, truncated)."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [tok if b > a and any(s <= a and b <= e for s, e in spans) else -100
              for tok, (a, b) in zip(ids, enc["offset_mapping"])]
    return ids[:max_len], labels[:max_len], len(ids) > max_len


def collate(examples, pad_id):
    longest = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(labs)] = torch.tensor(labs)
        mask[row, :len(ids)] = 1
    return input_ids, mask, labels


def token_stats(logits, labels):
    """(summed CE, argmax hits, labelled tokens) with the causal shift."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    keep = labels != -100
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         reduction="sum")
    hits = ((logits.argmax(-1) == labels) & keep).sum()
    return ce.item(), hits.item(), keep.sum().item()


# Where the reference runs: `cpu` (the default, beside temper on the same cores) or `cuda`
# (scripts/gpu-check.sh, with --dtype bfloat16 for the mixed-precision comparison).
DEVICE = "cpu"


def to_device(tensors):
    return tuple(t.to(DEVICE) for t in tensors)


@torch.no_grad()
def evaluate(model, data, pad_id, batch_size=16):
    model.eval()
    ce = hits = n = 0
    for start in range(0, len(data), batch_size):
        input_ids, mask, labels = to_device(collate(data[start:start + batch_size], pad_id))
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        c, h, k = token_stats(logits, labels)
        ce, hits, n = ce + c, hits + h, n + k
    return ce / max(n, 1), hits / max(n, 1)


def train(model, data, args, pad_id):
    """Returns (seconds of the loop, real tokens, steps, per-step losses)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=SFT_RECIPE["weight_decay"])
    steps_per_epoch = math.ceil(len(data) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = math.ceil(args.warmup_ratio * total)

    def linear(step):  # transformers' get_linear_schedule_with_warmup
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear)
    order_rng = torch.Generator().manual_seed(args.seed)
    losses, tokens, seconds = [], 0, 0.0
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(data), generator=order_rng).tolist()
        start = time.perf_counter()
        for first in range(0, len(order), args.batch_size):
            input_ids, mask, labels = to_device(
                collate([data[i] for i in order[first:first + args.batch_size]], pad_id))
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, SFT_RECIPE["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            tokens += int(mask.sum())
        seconds += time.perf_counter() - start
    return seconds, tokens, total, losses


@torch.no_grad()
def generate(model, tokenizer, messages, max_new_tokens, stop_ids):
    """(answer text, new tokens incl. the stop token, seconds)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(DEVICE)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, use_cache=True, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    seconds = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), len(new), seconds


@torch.no_grad()
def generate_batch(model, tokenizer, conversations, max_new_tokens, stop_ids):
    """One left-padded greedy generate() over all conversations: (new tokens, seconds), the
    tokens of each row counted up to and including its stop token."""
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = stop_ids[0]
    batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(DEVICE)
    start = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    tokens = 0
    for row in out[:, batch.input_ids.shape[1]:].tolist():
        ends = [i for i, t in enumerate(row) if t in stop_ids]
        tokens += ends[0] + 1 if ends else len(row)
    return tokens, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sft_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the reference runs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the model's dtype (LoRA adapters follow it, as peft makes them)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    warnings.filterwarnings("ignore")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    train_path, valid_path = sarcasm_paths(args.assets)
    train_chats, valid_chats = read_chat(train_path, args.limit), read_chat(valid_path, args.limit)
    models_dir, gguf = os.path.join(args.assets, "models"), SFT_RECIPE["model"] + ".gguf"

    load_before = os.getloadavg()[0]
    wall_start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        tokenizer = AutoTokenizer.from_pretrained(models_dir, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(models_dir, gguf_file=gguf,
                                                     dtype=getattr(torch, args.dtype)).to(DEVICE)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                   tokenizer.convert_tokens_to_ids("<|endoftext|>"))
                       if i is not None and i != tokenizer.unk_token_id})
    train_data = [encode(tokenizer, m, args.max_seq_len) for m in train_chats]
    valid_data = [encode(tokenizer, m, args.max_seq_len) for m in valid_chats]
    truncated = sum(t for _, _, t in train_data + valid_data)
    train_data = [(ids, labels) for ids, labels, _ in train_data]
    valid_data = [(ids, labels) for ids, labels, _ in valid_data]
    load_seconds = time.perf_counter() - wall_start

    torch.manual_seed(args.seed)
    model = get_peft_model(model, LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=targets_of(args), bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    valid_loss_before, valid_acc_before = evaluate(model, valid_data, pad_id)
    train_seconds, train_tokens, steps, losses = train(model, train_data, args, pad_id)
    valid_loss_after, valid_acc_after = evaluate(model, valid_data, pad_id)
    train_wall = time.perf_counter() - wall_start

    model = model.merge_and_unload()
    model.eval()
    generate(model, tokenizer, WARMUP_MESSAGES, args.max_new_tokens, stop_ids)
    cases = generation_cases(valid_chats, args.gen_prompts)
    answers, gen_tokens, gen_seconds = [], 0, 0.0
    for messages, _ in cases:
        text, n, seconds = generate(model, tokenizer, messages, args.max_new_tokens, stop_ids)
        answers.append(text)
        gen_tokens, gen_seconds = gen_tokens + n, gen_seconds + seconds
    prompts = long_messages()
    _, single_tokens, single_seconds = generate(model, tokenizer, prompts[0], LONG_MAX_TOKENS, stop_ids)
    batch_tokens, batch_seconds = generate_batch(model, tokenizer, prompts, LONG_MAX_TOKENS, stop_ids)
    long = long_generation_fields(single_tokens, single_seconds, batch_tokens, batch_seconds)
    last = losses[-10:]
    emit({
        "impl": "transformers+peft", "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
        "threads": torch.get_num_threads(), "model": SFT_RECIPE["model"],
        "device": args.device, "dtype": args.dtype,
        "peak_gpu_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                        if args.device == "cuda" else None),
        "train_examples": len(train_data), "valid_examples": len(valid_data), "epochs": args.epochs,
        "optimizer_steps": steps, "trained_tokens": train_tokens, "truncated_examples": truncated,
        "trainable_params": trainable,
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(train_seconds, 2), "train_wall_seconds": round(train_wall, 2),
        "train_tokens_per_s": round(train_tokens / train_seconds, 1),
        "train_samples_per_s": round(len(train_data) * args.epochs / train_seconds, 2),
        "train_loss_first": round(losses[0], 4), "train_loss_last10": round(sum(last) / len(last), 4),
        "valid_loss_before": round(valid_loss_before, 4), "valid_loss_after": round(valid_loss_after, 4),
        "valid_mean_token_accuracy_before": round(valid_acc_before, 4),
        "valid_mean_token_accuracy_after": round(valid_acc_after, 4),
        "generate_prompts": len(cases), "generate_tokens": gen_tokens,
        "generate_seconds": round(gen_seconds, 3),
        "generate_tokens_per_s": round(gen_tokens / gen_seconds, 1) if gen_seconds else None,
        "generate_requests_per_s": round(len(cases) / gen_seconds, 2) if gen_seconds else None,
        "answer_accuracy": answer_accuracy([e for _, e in cases], answers),
        "answers_sample": answers[:5],
        **long,
        "peak_rss_mb": round(peak_rss_mb_self(), 1),
        # The 1-minute load average before and after: on a shared machine, other processes
        # steal cores from torch's threads and these numbers say how much.
        "loadavg_1m_start": load_before, "loadavg_1m_end": os.getloadavg()[0],
        "recipe": sft_recipe_of(args),
    })


if __name__ == "__main__":
    main()
