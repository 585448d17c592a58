"""What the preference-tuning (DPO) benchmark (bench/dpo.py and bench/reference_dpo.py) adds to
the chat SFT benchmark's shared pieces (bench/sft_common.py: the LoRA recipe and its flags,
temper's LoRA hyperparameters, the sarcasm data, the answer check): its recipe, its flags and
the answer cases of the preference pairs."""
from common import add_recipe_flags, recipe_of
from sft_common import LLM_FIXED, SFT_RECIPE

# One recipe for both sides (flags override it): the SFT benchmark's LoRA recipe (r 8 / alpha
# 16 / dropout 0, all projections; AdamW (0.9, 0.999, 1e-8), weight decay 0, clip 1.0, batch 4,
# max_seq_len 256, seed 0) with a LoRA DPO learning rate, beta, and more answer prompts. At
# 5e-5 (the first recipe) one epoch left both sides at ln 2 (validation loss 0.6931 → 0.6889
# for TRL, → 0.6981 for temper; reward accuracy about 0.5), so the comparison said nothing;
# the recipe now takes ten times that.
DPO_RECIPE = {key: value for key, value in SFT_RECIPE.items() if key != "max_new_tokens"}
DPO_RECIPE.update({"learning_rate": 5e-4, "beta": 0.1, "gen_prompts": 50})


def add_dpo_flags(parser):
    add_recipe_flags(parser, DPO_RECIPE, LLM_FIXED)


def dpo_recipe_of(args):
    return recipe_of(args, DPO_RECIPE)


def answer_cases(pairs, n):
    """(prompt messages, preferred answer) of the first n pairs."""
    return [(row["input"]["messages"], row["preferred_output"][0]["content"]) for row in pairs[:n]]


def equal_eval_batch(n_pairs, most=16):
    """The largest evaluation batch of at most `most` pairs that splits n_pairs into equal
    batches. TRL's DPOTrainer averages each evaluation metric (rewards/accuracies, margins, ...)
    over batches unweighted, so unequal batches (100 pairs as 6 x 16 + 4) weigh the last pairs
    more; with equal batches its numbers are means over pairs, as temper's are."""
    return max(size for size in range(1, most + 1) if n_pairs % size == 0) if n_pairs else 1
