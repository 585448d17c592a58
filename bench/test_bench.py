"""Unit tests of the benchmark helpers whose arithmetic the numbers depend on: the split
builders (answer location, CoNLL parsing, DPO rows), the scoring shared by both sides, the
pace from events, the image recipe (flags, hyperparameters, unfreezing, --limit, data
config), the image export check's head layout and data config, the timm state-dict listing,
and the comparison line.

    .venv-bench/bin/python -m unittest discover -s bench -p 'test_*.py'
"""
import math
import os
import pathlib
import sys
import tempfile
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

import argparse  # noqa: E402

import image_common  # noqa: E402
import make_splits  # noqa: E402
import qa  # noqa: E402
from common import add_recipe_flags, recipe_of  # noqa: E402
from compare import compare  # noqa: E402
from dpo import hyperparameters_of as dpo_hyperparameters  # noqa: E402
from dpo_common import DPO_RECIPE, add_dpo_flags, dpo_recipe_of, equal_eval_batch  # noqa: E402
from sft import hyperparameters_of as sft_hyperparameters  # noqa: E402
from sft_common import add_sft_flags  # noqa: E402
from ner_common import score, tags_from_entities, words_as_text  # noqa: E402
from qa_common import compute_f1, squad_v2_scores  # noqa: E402
from task_driver import has_validation, pure_training_pace, validation_value  # noqa: E402


class SplitBuilders(unittest.TestCase):
    def test_answer_found_as_whole_tokens_before_inside_a_word(self):
        context = "majority of the major parts"
        self.assertEqual(make_splits.locate_answer("major", context), (16, "major"))

    def test_answer_with_spaces_the_context_tokenised_in(self):
        context = "In 1466 , perhaps 40 , 000 people died"
        self.assertEqual(make_splits.locate_answer("40,000", context), (18, "40 , 000"))

    def test_answer_falls_back_to_a_substring_and_is_none_when_absent(self):
        self.assertEqual(make_splits.locate_answer("ajor", "the major part"), (5, "ajor"))
        self.assertIsNone(make_splits.locate_answer("minor", "the major part"))

    def test_conll_sentences_end_at_whitespace_only_lines(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ner.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("Empire\tB-facility\nState\tI-facility\n\t\n.\tO\n\t\n")
            self.assertEqual(make_splits.load_conll(path),
                             [(("Empire", "State"), ("B-facility", "I-facility")), ((".",), ("O",))])
            with open(path, "w", encoding="utf-8") as f:
                f.write("ok\tO\nbroken line\n")
            with self.assertRaises(SystemExit) as raised:
                make_splits.load_conll(path)
            self.assertIn(":2:", str(raised.exception))

    def test_dpo_row_prefers_the_correct_label(self):
        row = make_splits.dpo_row("headline", "1", "system prompt")
        self.assertEqual(row["input"]["messages"][1], {"role": "user", "content": "headline"})
        self.assertEqual(row["preferred_output"], [{"role": "assistant", "content": "1"}])
        self.assertEqual(row["non_preferred_output"], [{"role": "assistant", "content": "0"}])


class Scoring(unittest.TestCase):
    def test_squad_v2_normalisation_f1_and_splits(self):
        rows = [
            {"id": "a", "answers": {"text": ["the Eiffel Tower"], "answer_start": [0]}},
            {"id": "b", "answers": {"text": ["in Paris, France"], "answer_start": [0]}},
            {"id": "c", "answers": {"text": [], "answer_start": []}},
            {"id": "d", "answers": {"text": [], "answer_start": []}},
        ]
        predictions = {"a": "Eiffel tower!", "b": "Paris", "c": "", "d": "somewhere"}
        # b: gold tokens in/paris/france, predicted paris: P 1, R 1/3, F1 0.5
        self.assertAlmostEqual(compute_f1("in Paris, France", "Paris"), 0.5)
        scores = squad_v2_scores(rows, predictions)
        self.assertEqual((scores["exact"], scores["f1"]), (50.0, 62.5))
        self.assertEqual((scores["HasAns_exact"], scores["HasAns_f1"], scores["HasAns_total"]), (50.0, 75.0, 2))
        self.assertEqual((scores["NoAns_exact"], scores["NoAns_total"]), (50.0, 2))

    def test_word_tags_come_from_the_first_sub_word(self):
        text, spans = words_as_text(["@paulwalk", "Empire", "State"])
        self.assertEqual((text, spans), ("@paulwalk Empire State", [(0, 9), (10, 16), (17, 22)]))
        entities = [{"entity": "B-person", "start": 0, "end": 1}, {"entity": "I-other", "start": 1, "end": 9},
                    {"entity": "B-facility", "start": 10, "end": 13}, {"entity": "I-facility", "start": 13, "end": 16}]
        self.assertEqual(tags_from_entities(spans, entities), ["B-person", "B-facility", "O"])

    def test_entity_scores_are_exact_span_matches(self):
        gold = [["B-person", "I-person", "O", "B-geo-loc"]]
        predicted = [["B-person", "O", "O", "B-geo-loc"]]  # the person span is cut short: wrong
        scores = score(gold, predicted)
        self.assertEqual((scores["entity_precision"], scores["entity_recall"], scores["entity_f1"]), (0.5, 0.5, 0.5))
        self.assertEqual(scores["token_accuracy"], 0.75)
        self.assertEqual(scores["per_type"]["geo-loc"]["f1"], 1.0)
        self.assertEqual(scores["per_type"]["person"]["support"], 1)


class Pace(unittest.TestCase):
    def test_intervals_touching_evaluation_are_left_out(self):
        # 2 epochs of 4 steps; step 0 and the epoch ends (4, 8) carry validation metrics.
        times = {0: 10, 1: 11, 2: 12, 3: 13, 4: 20, 5: 21, 6: 22, 7: 23, 8: 30}
        steps = {s: (t, {"step": s, "total_steps": 8, "tokens_seen": 100 * s,
                         "valid_loss": 0.5 if s in (0, 4, 8) else None}) for s, t in times.items()}
        # timed: 1->2, 2->3, 5->6, 6->7: 4 steps, 4 s, 400 tokens
        self.assertEqual(pure_training_pace(steps, 2), (4, 4, 400, 8))

    def test_full_validation_values_win(self):
        data = {"valid_loss": 0.6, "full_valid_loss": 0.5, "train_loss": 0.1}
        self.assertEqual(validation_value(data, "loss"), 0.5)
        self.assertTrue(has_validation({"valid_reward_accuracy": 0.0}))
        self.assertFalse(has_validation({"train_loss": 0.1, "valid_loss": None}))


def parse(add_flags, *argv):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


class Recipes(unittest.TestCase):
    def test_flags_default_to_the_recipe_and_fixed_keys_have_none(self):
        recipe = {"model": "m", "epochs": 3, "learning_rate": 1e-3, "weight_decay": 0.5, "targets": "a, b"}
        args = parse(lambda p: add_recipe_flags(p, recipe, fixed=("weight_decay",)), "--lr", "0.25")
        self.assertEqual((args.epochs, args.lr, args.limit), (3, 0.25, 0))
        self.assertFalse(hasattr(args, "weight_decay"))
        self.assertEqual(recipe_of(args, recipe),
                         {"epochs": 3, "learning_rate": 0.25, "weight_decay": 0.5, "target_modules": ["a", "b"]})

    def test_dpo_shares_the_sft_lora_recipe_with_its_own_lr_and_beta(self):
        used = dpo_recipe_of(parse(add_dpo_flags))
        self.assertEqual((used["learning_rate"], used["beta"], used["gen_prompts"]), (5e-4, 0.1, 50))
        self.assertEqual((used["lora_rank"], used["lora_alpha"], used["batch_size"], used["max_grad_norm"]),
                         (8, 16, 4, 1.0))
        self.assertNotIn("max_new_tokens", used)
        self.assertFalse(hasattr(parse(add_dpo_flags), "max_new_tokens"))

    def test_dpo_evaluation_batches_are_equal(self):
        # 100 pairs as 16s would be 6 x 16 + 4, and TRL averages batch means unweighted.
        self.assertEqual([equal_eval_batch(n) for n in (100, 96, 97, 12, 0)], [10, 16, 1, 12, 1])

    def test_lora_jobs_send_the_same_hyperparameters(self):
        lora = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto", "lr_scheduler": "linear",
                "warmup_ratio": 0.0, "max_seq_len": 256, "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0}
        self.assertEqual(sft_hyperparameters(parse(add_sft_flags)), {**lora, "learning_rate": 2e-4})
        self.assertEqual(dpo_hyperparameters(parse(add_dpo_flags, "--beta", "0.2")),
                         {**lora, "learning_rate": DPO_RECIPE["learning_rate"], "beta": 0.2})
        narrowed = dpo_hyperparameters(parse(add_dpo_flags, "--targets", "q_proj,v_proj"))
        self.assertEqual(narrowed["target_modules"], ["q_proj", "v_proj"])

    def test_qa_window_knobs_are_sent_only_when_not_temper_defaults(self):
        encoder = {"n_epochs": 2, "batch_size": 16, "learning_rate": 5e-5, "weight_decay": 0.01,
                   "warmup_ratio": 0.1, "max_seq_len": 384}
        self.assertEqual(qa.hyperparameters_of(parse(qa.add_qa_flags)), encoder)
        self.assertEqual(qa.hyperparameters_of(parse(qa.add_qa_flags, "--doc-stride", "64")),
                         {**encoder, "doc_stride": 64})
        self.assertEqual(qa.hyperparameters_of(parse(qa.add_qa_flags, "--max-answer-length", "20")),
                         {**encoder, "max_answer_length": 20})


class Images(unittest.TestCase):
    def test_flags_default_to_the_recipe_and_the_fixed_choices_have_none(self):
        args = parse(image_common.add_image_flags)
        self.assertEqual((args.epochs, args.lr, args.batch_size, args.seed, args.image_size, args.augment),
                         (2, 1e-3, 32, 42, 224, True))
        self.assertEqual((args.head_hidden, args.head_dropout, args.unfreeze_epoch, args.unfreeze_blocks,
                          args.backbone_lr_multiplier), (256, 0.5, 2, 2, 0.1))
        self.assertFalse(hasattr(args, "weight_decay") or hasattr(args, "warmup_ratio"))
        quick = parse(image_common.add_image_flags, "--image-size", "112", "--no-augment", "--limit", "200")
        self.assertEqual((quick.image_size, quick.augment, quick.limit), (112, False, 200))
        used = image_common.image_recipe_of(quick)
        self.assertEqual((used["image_size"], used["augment"], used["optimizer"], used["weight_decay"],
                          used["lr_scheduler"], used["warmup_ratio"]), (112, False, "adam", 0.0, "constant", 0.0))
        self.assertNotIn("model", used)

    def test_hyperparameters_carry_the_whole_recipe(self):
        self.assertEqual(image_common.image_hyperparameters(parse(image_common.add_image_flags)), {
            "n_epochs": 2, "batch_size": 32, "learning_rate_multiplier": "auto", "learning_rate": 1e-3,
            "optimizer": "adam", "weight_decay": 0.0, "lr_scheduler": "constant", "warmup_ratio": 0.0,
            "freeze_backbone": True, "head_hidden": 256, "head_dropout": 0.5,
            "unfreeze_schedule": [{"epoch": 2, "blocks": 2}], "backbone_lr_multiplier": 0.1,
            "image_size": 224, "augment": True})

    def test_unfreeze_schedule_translation(self):
        def schedule(*argv):
            return image_common.unfreeze_schedule(parse(image_common.add_image_flags, *argv))

        self.assertEqual(schedule("--unfreeze-epoch", "1", "--unfreeze-blocks", "3"), [{"epoch": 1, "blocks": 3}])
        self.assertEqual(schedule("--unfreeze-blocks", "0"), [])
        self.assertEqual(schedule("--epochs", "1"), [])  # epoch 2 never comes
        default = schedule()
        self.assertEqual([image_common.trainable_units_at(default, e) for e in (1, 2, 3)], [0, 2, 2])
        stepped = [{"epoch": 2, "blocks": 1}, {"epoch": 3, "blocks": 4}]
        self.assertEqual([image_common.trainable_units_at(stepped, e) for e in (1, 2, 3, 4)], [0, 1, 4, 4])

    def test_units_are_temper_s_and_the_last_ones_unfreeze(self):
        units = image_common.backbone_units(7)
        self.assertEqual(len(units), 9)
        self.assertEqual((units[0], units[1], units[-2], units[-1]),
                         (["conv_stem", "bn1"], ["blocks.0"], ["blocks.6"], ["conv_head", "bn2"]))
        self.assertEqual(image_common.last_units(units, 2), [["blocks.6"], ["conv_head", "bn2"]])
        self.assertEqual(image_common.last_units(units, 0), [])
        with self.assertRaises(SystemExit):
            image_common.last_units(units, 10)

    def test_limit_takes_turns_over_the_classes(self):
        images = [(f"{label}/{i:05d}.png", label, b"") for label in ("b", "a", "c") for i in range(3)]
        taken = image_common.class_balanced(images, 5)
        self.assertEqual([name for name, _, _ in taken],
                         ["a/00000.png", "a/00001.png", "b/00000.png", "b/00001.png", "c/00000.png"])
        self.assertEqual(len(image_common.class_balanced(images[:4], 9)), 4)  # fewer than asked: all
        self.assertEqual(image_common.class_balanced(images, 0), images)

    def test_zip_round_trip_and_data_url(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "train.zip")
            images = [("Coat/00001.png", "Coat", b"png-1"), ("Bag/00002.png", "Bag", b"png-2")]
            image_common.write_image_zip(path, images)
            self.assertEqual(image_common.read_image_zip(path), sorted(images))
            self.assertEqual(image_common.read_image_zip(path, 1), [("Bag/00002.png", "Bag", b"png-2")])
        self.assertEqual(image_common.image_input(b"\x89PNG"),
                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}})

    def test_data_config_and_eval_resize(self):
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                f.write('{"architecture": "efficientnet_lite0", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], '
                        '"std": [0.5, 0.5, 0.5], "crop_pct": 0.875, "interpolation": "bicubic"}}')
            self.assertEqual(image_common.data_config(tmp), {"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
                                                             "interpolation": "bicubic"})
        self.assertEqual([image_common.eval_resize(size, 0.875) for size in (224, 112, 64)], [256, 128, 73])

    def test_scoring_and_epoch_means(self):
        gold = ["Bag", "Bag", "Coat", "Coat"]
        predicted = ["Bag", "Coat", "Coat", "Coat"]
        scores = image_common.score(gold, predicted)
        # Bag: P 1, R 1/2, F1 2/3; Coat: P 2/3, R 1, F1 0.8; macro 0.7333
        self.assertEqual((scores["accuracy"], scores["f1"]), (0.75, 0.7333))
        self.assertEqual(scores["per_class"]["Bag"], {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2})
        self.assertEqual(image_common.score(["Bag"], ["Dress"])["per_class"]["Dress"]["support"], 0)
        self.assertEqual(image_common.epoch_means({0: 9.0, 1: 2.0, 2: 4.0, 3: 1.0, 4: None}, 2), [3.0, 1.0])
        self.assertEqual(image_common.epoch_means({}, 2), [])


class ImageExport(unittest.TestCase):
    def test_head_layout_follows_config_and_tensor_names(self):
        from check_image_export import head_layout

        names = {"conv_head.weight", "classifier.weight", "classifier.bias"}
        self.assertEqual(head_layout({"pretrained_cfg": {"classifier": "classifier"}}, names), ("classifier", 0))
        two = {"fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"}
        self.assertEqual(head_layout({"head_hidden": 256, "pretrained_cfg": {"classifier": "fc"}}, two), ("fc", 256))
        self.assertEqual(head_layout({}, names), ("classifier", 0))  # no pretrained_cfg: timm's usual name
        with self.assertRaises(SystemExit):  # a two-layer head the file does not hold
            head_layout({"head_hidden": 256, "pretrained_cfg": {"classifier": "classifier"}}, names)
        with self.assertRaises(SystemExit):
            head_layout({"pretrained_cfg": {"classifier": "fc"}}, names)

    def test_eval_data_config_comes_from_the_exported_config(self):
        from check_image_export import eval_data_config

        cfg = {"input_size": [3, 64, 64], "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center",
               "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "num_classes": 10}
        data = eval_data_config({"architecture": "efficientnet_lite0", "pretrained_cfg": cfg})
        self.assertEqual((tuple(data["input_size"]), data["interpolation"], data["crop_pct"], tuple(data["mean"]),
                          tuple(data["std"])), ((3, 64, 64), "bilinear", 0.9, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))

    def test_state_dict_listing_round_trips(self):
        import json

        from make_vision_fixture import state_dicts_json

        shapes = {"a": [["conv.weight", [2, 3, 1, 1]], ["bn.running_var", [2]]], "b": [["fc.bias", [10]]]}
        text = state_dicts_json("1.0.31", shapes)
        self.assertEqual(json.loads(text), {"made_by": "scripts/make_vision_fixture.py", "timm": "1.0.31",
                                            "num_classes": 10, "models": shapes})
        self.assertIn('\n      ["conv.weight", [2, 3, 1, 1]],\n', text)  # one pair a line
        self.assertTrue(text.endswith("}\n"))


class Comparison(unittest.TestCase):
    def test_ratios_deltas_and_quality(self):
        temper = {"train_tokens_per_s": 300.0, "train_samples_per_s": 6.0, "peak_rss_mb": 1000.0,
                  "valid_loss_after": 0.4, "valid_reward_accuracy_before": 0.0, "valid_reward_accuracy_after": 0.8}
        reference = {"train_tokens_per_s": 100.0, "train_samples_per_s": 2.0, "peak_rss_mb": 2000.0,
                     "valid_loss_after": 0.5, "valid_reward_accuracy_before": 0.0, "valid_reward_accuracy_after": 0.8}
        line = compare("dpo", temper, reference)
        self.assertEqual((line["train_tokens_per_s_ratio"], line["train_samples_per_s_ratio"], line["peak_rss_ratio"]),
                         (3.0, 3.0, 0.5))
        self.assertEqual(line["valid_reward_accuracy_before_delta"], 0.0)
        self.assertTrue(math.isclose(line["valid_loss_after_delta"], -0.1))
        self.assertTrue(line["quality_no_worse"])
        worse = compare("dpo", dict(temper, valid_reward_accuracy_after=0.7), reference)
        self.assertFalse(worse["quality_no_worse"])
        self.assertIsNone(compare("ner", {}, {})["quality_no_worse"])

    def test_image_quality_is_test_accuracy(self):
        reference = {"accuracy": 0.8, "f1": 0.79, "train_samples_per_s": 10.0, "predict_samples_per_s": 50.0,
                     "peak_rss_mb": 1000.0}
        line = compare("image", dict(reference, accuracy=0.8, f1=0.7, train_samples_per_s=20.0), reference)
        self.assertEqual((line["comparison"], line["train_samples_per_s_ratio"], line["predict_samples_per_s_ratio"],
                          line["peak_rss_ratio"], line["accuracy_delta"]), ("temper / timm", 2.0, 1.0, 1.0, 0.0))
        self.assertTrue(math.isclose(line["f1_delta"], -0.09))
        self.assertTrue(line["quality_no_worse"])  # a lower F1 alone does not count
        self.assertFalse(compare("image", dict(reference, accuracy=0.79), reference)["quality_no_worse"])


if __name__ == "__main__":
    unittest.main()
