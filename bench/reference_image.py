"""The Python reference for the image-classification benchmark: timm's EfficientNet-Lite0 on
CPU PyTorch, from the same weights, fine-tuned on the seeded Fashion-MNIST split with the
recipe bench/image.py sends to temper, written out as a plain training loop. Prints one JSON
line on stdout.

    .venv-bench/bin/python bench/reference_image.py --assets assets [--limit N] [--threads T]
        [--epochs 2 --lr 1e-3 --batch-size 32 --seed 42 --image-size 224 --head-hidden 256 --head-dropout 0.5
         --unfreeze-epoch 2 --unfreeze-blocks 2 --backbone-lr-multiplier 0.1] [--no-augment]

Model: `timm.create_model(<config.json architecture>, pretrained=True,
pretrained_cfg_overlay=dict(file=ASSETS/models/timm/efficientnet_lite0/model.safetensors),
num_classes=0, drop_rate=0, drop_path_rate=0)` (timm loads the file strictly, minus the
ImageNet classifier), then `model.classifier` = `Sequential(Linear(1280, head_hidden), ReLU,
Dropout(head_dropout), Linear(head_hidden, classes))` (torch's default init, after
torch.manual_seed(seed)): the head temper builds, with the same names classifier.0 / .3.

Preprocessing: the data config of the model directory's config.json `pretrained_cfg` (the
one temper reads; bench/image_common.py data_config): every PNG decoded with PIL and its grey
channel repeated to RGB; eval: resize the shorter side to floor(image_size / crop_pct)
(bicubic), centre crop image_size, ToTensor, normalise with the config's mean / std; train:
RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3), bicubic) +
RandomHorizontalFlip(0.5), ToTensor, normalise (torchvision's transforms; --no-augment trains
on the eval transform). The random crops and flips draw from torch's global RNG, seeded.

Training (bench/image_common.py for the unfreezing): every backbone parameter
requires_grad=False and the backbone in eval() mode (BatchNorm uses its running statistics and
does not update them); Adam (betas 0.9 / 0.999, eps 1e-8, no weight decay) over the head at
lr, constant. At the start of an epoch where the schedule unfreezes more units, those units'
parameters get requires_grad=True and join Adam as a new param group at lr x
backbone_lr_multiplier (fresh Adam state for them; the head keeps its own), and from then on
those units are in train() mode (BatchNorm with batch statistics, updating the running ones)
while the rest of the backbone stays in eval(). Mean cross-entropy; batches from a DataLoader
with num_workers=0, shuffled with a generator seeded with seed; the last batch may be short.
No evaluation during training.

Timing: `train_seconds` = wall time of the epoch loops (PNG decoding, augmentation, forward,
backward, optimizer); `train_samples_per_s` = train images x epochs / train_seconds;
`train_wall_seconds` also counts building the model; `predict_samples_per_s` = test images /
seconds of the test pass (decode, eval transform, forward; batches of 32, inference mode);
`peak_rss_mb` = ru_maxrss of this process (no worker processes: num_workers=0).
`train_loss_epochs` = each epoch's mean batch loss.
"""
import argparse
import io
import json
import os
import sys
import time

import timm
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from common import emit, peak_rss_mb_self
from image_common import (IMAGE_RECIPE, add_image_flags, backbone_units, data_config, eval_resize, fashion_mnist_paths,
                          image_recipe_of, last_units, model_dir, read_image_zip, score, trainable_units_at,
                          unfreeze_schedule)

INTERPOLATION = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def make_transforms(config, image_size, augment):
    """(train transform, eval transform) of a PIL RGB image to a normalised tensor."""
    interpolation = getattr(transforms.InterpolationMode, INTERPOLATION[config["interpolation"]])
    to_tensor = [transforms.ToTensor(), transforms.Normalize(config["mean"], config["std"])]
    eval_transform = transforms.Compose([
        transforms.Resize(eval_resize(image_size, config["crop_pct"]), interpolation=interpolation),
        transforms.CenterCrop(image_size), *to_tensor])
    if not augment:
        return eval_transform, eval_transform
    train_transform = transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=interpolation),
        transforms.RandomHorizontalFlip(0.5), *to_tensor])
    return train_transform, eval_transform


class Images(torch.utils.data.Dataset):
    """(PNG bytes, label id) pairs, decoded and transformed on access."""

    def __init__(self, images, label2id, transform):
        self.items = [(png, label2id[label]) for _, label, png in images]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        png, label = self.items[i]
        return self.transform(Image.open(io.BytesIO(png)).convert("RGB")), label


def build_model(directory, n_classes, head_hidden, head_dropout, seed):
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        architecture = json.load(f)["architecture"]
    model = timm.create_model(architecture, pretrained=True,
                              pretrained_cfg_overlay=dict(file=os.path.join(directory, "model.safetensors")),
                              num_classes=0, drop_rate=0.0, drop_path_rate=0.0)
    torch.manual_seed(seed)
    if head_hidden:
        model.classifier = torch.nn.Sequential(
            torch.nn.Linear(model.num_features, head_hidden), torch.nn.ReLU(), torch.nn.Dropout(head_dropout),
            torch.nn.Linear(head_hidden, n_classes))
    else:
        model.classifier = torch.nn.Linear(model.num_features, n_classes)
    return model


def unit_parameters(model, units):
    return [p for unit in units for name in unit for p in model.get_submodule(name).parameters()]


def set_modes(model, units, n_trainable):
    """The backbone in eval() but for its last n_trainable units; the head in train()."""
    model.eval()
    model.classifier.train()
    for unit in last_units(units, n_trainable):
        for name in unit:
            model.get_submodule(name).train()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_image_flags(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_path, test_path = fashion_mnist_paths(args.assets)
    train, test = read_image_zip(train_path, args.limit), read_image_zip(test_path, args.limit)
    labels = sorted({label for _, label, _ in train})
    label2id = {label: i for i, label in enumerate(labels)}
    directory = model_dir(args.assets)
    config = data_config(directory)
    train_transform, eval_transform = make_transforms(config, args.image_size, args.augment)

    wall_start = time.perf_counter()
    model = build_model(directory, len(labels), args.head_hidden, args.head_dropout, args.seed)
    units = backbone_units(len(model.blocks))
    schedule = unfreeze_schedule(args)
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=args.lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(
        Images(train, label2id, train_transform), batch_size=args.batch_size, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(args.seed))

    train_start = time.perf_counter()
    steps, unfrozen, epoch_losses = 0, 0, []
    for epoch in range(1, args.epochs + 1):
        wanted = trainable_units_at(schedule, epoch)
        if wanted > unfrozen:
            newly = last_units(units, wanted)[:wanted - unfrozen]
            params = unit_parameters(model, newly)
            for p in params:
                p.requires_grad_(True)
            optimizer.add_param_group({"params": params, "lr": args.lr * args.backbone_lr_multiplier})
            print(f"epoch {epoch}: unfroze {[name for unit in newly for name in unit]} "
                  f"({sum(p.numel() for p in params):,} parameters)", file=sys.stderr)
            unfrozen = wanted
        set_modes(model, units, unfrozen)
        losses = []
        for pixels, targets in loader:
            loss = loss_fn(model(pixels), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
        epoch_losses.append(round(sum(losses) / len(losses), 4))
    train_end = time.perf_counter()
    train_seconds = train_end - train_start

    model.eval()
    test_loader = torch.utils.data.DataLoader(Images(test, label2id, eval_transform), batch_size=32, num_workers=0)
    predicted = []
    predict_start = time.perf_counter()
    with torch.inference_mode():
        for pixels, _ in test_loader:
            predicted += [labels[i] for i in model(pixels).argmax(dim=-1).tolist()]
    predict_seconds = time.perf_counter() - predict_start
    scores = score([label for _, label, _ in test], predicted)
    emit({
        "impl": "timm", "torch": torch.__version__, "timm": timm.__version__,
        "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
        "model": IMAGE_RECIPE["model"], "classes": len(labels),
        **{k: v for k, v in scores.items() if k != "per_class"},
        "train_examples": len(train), "test_examples": len(test), "epochs": args.epochs, "optimizer_steps": steps,
        "train_seconds": round(train_seconds, 2), "train_wall_seconds": round(train_end - wall_start, 2),
        "train_samples_per_s": round(len(train) * args.epochs / train_seconds, 2), "train_loss_epochs": epoch_losses,
        "predict_samples_per_s": round(len(test) / predict_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb_self(), 1), "per_class": scores["per_class"], "preprocess": config,
        "recipe": image_recipe_of(args),
    })


if __name__ == "__main__":
    main()
