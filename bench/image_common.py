"""Shared pieces of the image-classification benchmark (bench/image.py and
bench/reference_image.py): the recipe and its flags, the Fashion-MNIST split, the gradual
unfreezing, the data config both sides preprocess with, and the scoring.

The data are ImageFolder zips, one `<class>/<index>.png` entry per image (28x28 greyscale);
an image's label is its folder name. --limit N keeps N images of each zip in total,
class-balanced: the classes in sorted order take turns, each giving its next image in name
order, until N are taken (--limit 200 over 10 classes: the first 20 of each).

Gradual unfreezing: the backbone is split into units, first to last, as temper splits it
(src/zoo/vision): EfficientNet-Lite0's are the stem (`conv_stem` + `bn1`), each stage
`blocks.0` ... `blocks.6`, and the head convolution (`conv_head` + `bn2`), 9 in all. The
schedule is a list of {"epoch", "blocks"}: from the start of that (1-based) epoch on, the last
`blocks` units train (the largest count among the entries whose epoch has come), with lr x
backbone_lr_multiplier; before the first entry only the new head trains. The recipe's
schedule is one entry: --unfreeze-blocks units at the start of --unfreeze-epoch.

Scoring: accuracy and macro F1 (the unweighted mean of the per-class F1 over every label in
the gold or predicted lists, bench/common.py), and each class's precision / recall / F1.
"""
import base64
import json
import math
import os
import zipfile

from common import accuracy_and_macro_f1, add_recipe_flags, data_paths, recipe_of

IMAGE_RECIPE = {
    "model": "timm/efficientnet_lite0",
    "epochs": 2,
    "learning_rate": 1e-3,
    "batch_size": 32,
    "seed": 42,
    "image_size": 224,
    "augment": True,               # --no-augment: the eval transform for training too
    "head_hidden": 256,            # Linear(1280, 256) -> ReLU -> Dropout -> Linear(256, classes)
    "head_dropout": 0.5,
    "unfreeze_epoch": 2,
    "unfreeze_blocks": 2,          # conv_head + bn2, and the last stage blocks.6
    "backbone_lr_multiplier": 0.1,
    "optimizer": "adam",           # not flags: the recipe's fixed choices
    "weight_decay": 0.0,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
}
FIXED = ("weight_decay", "warmup_ratio")  # keys FLAGS knows that this recipe does not let vary


def add_image_flags(parser):
    add_recipe_flags(parser, IMAGE_RECIPE, fixed=FIXED)
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="train on the eval transform (no RandomResizedCrop, no flip)")


def image_recipe_of(args):
    return recipe_of(args, IMAGE_RECIPE)


def fashion_mnist_paths(assets):
    return data_paths(assets, "fashion_mnist", ("train.zip", "test.zip"), " --vision")


def model_dir(assets):
    return os.path.join(assets, "models", IMAGE_RECIPE["model"])


def class_balanced(images, limit):
    """The first `limit` images taking turns over the classes (sorted), each class's in name
    order; all of them when limit is 0. Returned sorted by name."""
    if not limit:
        return list(images)
    by_class = {}
    for image in sorted(images):
        by_class.setdefault(image[1], []).append(image)
    taken, turn = [], 0
    while len(taken) < limit and any(turn < len(group) for group in by_class.values()):
        for label in sorted(by_class):
            if turn < len(by_class[label]) and len(taken) < limit:
                taken.append(by_class[label][turn])
        turn += 1
    return sorted(taken)


def read_image_zip(path, limit=0):
    """[(entry name, label, PNG bytes)] of an ImageFolder zip, sorted by name, class-balanced
    to `limit` images when it is not 0."""
    images = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if len(parts) != 2 or not parts[0]:
                raise SystemExit(f"{path}: entry {name!r} is not <class>/<file>")
            images.append((name, parts[0], archive.read(name)))
    return class_balanced(images, limit)


def write_image_zip(path, images):
    """An ImageFolder zip of `images` (entries stored, in the given order)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, _, png in images:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), png)


def data_url(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_input(png):
    """One item of a /v1/classifications image request."""
    return {"type": "image_url", "image_url": {"url": data_url(png)}}


def unfreeze_schedule(args):
    """temper's `unfreeze_schedule`: [{"epoch", "blocks"}], empty when nothing unfreezes
    within the run (no blocks, or an epoch after the last)."""
    if args.unfreeze_blocks <= 0 or not 1 <= args.unfreeze_epoch <= args.epochs:
        return []
    return [{"epoch": args.unfreeze_epoch, "blocks": args.unfreeze_blocks}]


def trainable_units_at(schedule, epoch):
    """How many of the backbone's last units train during `epoch` (1-based)."""
    return max((entry["blocks"] for entry in schedule if entry["epoch"] <= epoch), default=0)


def backbone_units(n_stages):
    """EfficientNet-Lite's unfreezing units as module names, first to last (temper's
    `efficientnet_units`): the stem, each stage, the head convolution."""
    return [["conv_stem", "bn1"]] + [[f"blocks.{s}"] for s in range(n_stages)] + [["conv_head", "bn2"]]


def last_units(units, n):
    """The last n units (what trains when n units are unfrozen)."""
    if n > len(units):
        raise SystemExit(f"{n} backbone units to unfreeze, the model has {len(units)}")
    return units[len(units) - n:] if n > 0 else []


def image_hyperparameters(args):
    """method.supervised.hyperparameters of the image job: OpenAI's n_epochs, batch_size and
    learning_rate_multiplier "auto", plus temper's own keys for the recipe."""
    return {
        "n_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate_multiplier": "auto",
        "learning_rate": args.lr, "optimizer": IMAGE_RECIPE["optimizer"],
        "weight_decay": IMAGE_RECIPE["weight_decay"], "lr_scheduler": IMAGE_RECIPE["lr_scheduler"],
        "warmup_ratio": IMAGE_RECIPE["warmup_ratio"], "freeze_backbone": True,
        "head_hidden": args.head_hidden, "head_dropout": args.head_dropout,
        "unfreeze_schedule": unfreeze_schedule(args), "backbone_lr_multiplier": args.backbone_lr_multiplier,
        "image_size": args.image_size, "augment": args.augment,
    }


def data_config(directory):
    """The model's preprocessing, from config.json's pretrained_cfg (what temper reads too):
    mean, std, crop_pct and interpolation."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f).get("pretrained_cfg", {})
    return {"mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            "crop_pct": cfg.get("crop_pct", 0.875), "interpolation": cfg.get("interpolation", "bicubic")}


def eval_resize(image_size, crop_pct):
    """The shorter side an image is resized to before the centre crop (timm: floor(size / crop_pct))."""
    return math.floor(image_size / crop_pct)


def epoch_means(values, per_epoch):
    """Mean of each epoch's per-step values ({step: value}, steps 1-based, per_epoch steps an
    epoch); None for an epoch without values."""
    epochs = {}
    for step, value in values.items():
        if step > 0 and value is not None:
            epochs.setdefault((step - 1) // per_epoch, []).append(value)
    if not epochs:
        return []
    return [round(sum(epochs[e]) / len(epochs[e]), 4) if e in epochs else None for e in range(max(epochs) + 1)]


def score(gold, predicted):
    """accuracy, macro F1 and per-class precision / recall / F1 / support."""
    accuracy, macro_f1 = accuracy_and_macro_f1(gold, predicted)
    per_class = {}
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        n_predicted, support = sum(p == label for p in predicted), sum(g == label for g in gold)
        precision = tp / n_predicted if n_predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": support}
    return {"accuracy": round(accuracy, 4), "f1": round(macro_f1, 4), "per_class": per_class}

