#!/usr/bin/env python3
"""Computes tests/fixtures/greedy_tiny.json: transformers' greedy generation on the tiny
random decoders that `cargo run --example write_tiny_models` writes (seed 7), so the Rust
test `infer::generate::fixture_tests` checks temper's cached, batched decoding against an
independent implementation. Run once, commit the JSON; rerun only when the tiny writer
changes (the test's logit check says so).

    python scripts/make_greedy_fixture.py            # needs torch + transformers
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPTS = ["the cat sat on the mat", "hello world, and then"]
MAX_NEW_TOKENS = 12
FIRST_LOGITS = 8


def generate(model_dir: pathlib.Path, prompt: str) -> dict:
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=model.config.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    generated = out.sequences[0, len(prompt_ids):].tolist()
    eos_ids = eos if isinstance(eos, list) else [eos]
    finish = "stop" if generated and generated[-1] in eos_ids else "length"
    text_ids = generated[:-1] if finish == "stop" else generated
    # The smallest gap between the best and second-best logit: far above float noise
    # means the argmax cannot flip between implementations.
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    logprobs = [
        round(float(torch.log_softmax(s[0], -1)[t]), 6) for s, t in zip(out.scores, generated)
    ]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0, -1]
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "generated_ids": generated,
        "logprobs": logprobs,
        "text": tokenizer.decode(text_ids),
        "finish_reason": finish,
        "min_top2_margin": min(margins),
        "first_logits": [round(float(v), 6) for v in logits[:FIRST_LOGITS]],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["cargo", "run", "--quiet", "--example", "write_tiny_models", "--", tmp],
            cwd=ROOT, check=True,
        )
        cases = []
        for arch, name in [("Llama", "tiny-llama"), ("Qwen2", "tiny-qwen2")]:
            for prompt in PROMPTS:
                case = generate(pathlib.Path(tmp) / "test-org" / name, prompt)
                cases.append({"arch": arch, "seed": 7, **case})
    fixture = {
        "made_by": "scripts/make_greedy_fixture.py",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cases": cases,
    }
    out = ROOT / "tests" / "fixtures" / "greedy_tiny.json"
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    for c in cases:
        print(c["arch"], repr(c["prompt"]), "->", repr(c["text"]), c["finish_reason"],
              "margin", round(c["min_top2_margin"], 4), file=sys.stderr)


if __name__ == "__main__":
    main()
