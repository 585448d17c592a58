"""The temper side of the image-classification benchmark: fine-tunes EfficientNet-Lite0
(ImageNet weights, timm layout) on the seeded Fashion-MNIST split through temper with the
official openai SDK, then classifies the test images through POST /v1/classifications and
scores them here exactly as the reference is scored (bench/image_common.py). Prints one JSON
line with the reference's keys.

    .venv-bench/bin/python bench/image.py --assets assets [--temper target/release/temper | --base-url URL [--pid PID]]
        [--limit N] [--epochs 2 --lr 1e-3 --batch-size 32 --seed 42 --image-size 224 --head-hidden 256
         --head-dropout 0.5 --unfreeze-epoch 2 --unfreeze-blocks 2 --backbone-lr-multiplier 0.1] [--no-augment]

Flow: files.create(train.zip) (an ImageFolder zip, `<class>/<index>.png`: temper detects image
classification from it; with --limit a class-balanced subset zipped the same way); no
validation file (the final test pass is the validation); fine_tuning.jobs.create(model=
"timm/efficientnet_lite0", seed, method.supervised.hyperparameters = n_epochs, batch_size,
learning_rate_multiplier "auto" and temper's learning_rate, optimizer "adam", weight_decay 0,
lr_scheduler "constant", warmup_ratio 0, freeze_backbone true, head_hidden, head_dropout,
unfreeze_schedule [{"epoch", "blocks"}], backbone_lr_multiplier, image_size, augment); poll
to a terminal state. Then the test PNGs go to /v1/classifications as
`{"model", "input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}`,
32 a request; each row's `label` (a class folder name) is the prediction. Timing from the
job's events (bench/task_driver.py: the pace over the step intervals that touch no epoch end);
`predict_samples_per_s` = test images / seconds of those requests (the data URLs are built
before; the first request loads the model); `peak_rss_mb` = the server's VmHWM;
`train_loss_epochs` = the mean `train_loss` of each epoch's step events.
With --check-export the merged download (timm layout) is loaded with timm and compared with
these answers (`export_label_agreement`, `export_max_prob_diff`, `n`, `loaded_with`,
`export_data_config`; see bench/check_image_export.py), after the peak RSS is read.
"""
import argparse
import os
import shutil
import tempfile
import time

from common import emit
from image_common import (IMAGE_RECIPE, add_image_flags, epoch_means, fashion_mnist_paths, image_hyperparameters,
                          image_input, image_recipe_of, read_image_zip, score, write_image_zip)
from task_driver import Service, add_service_flags, fine_tune, training_timing


def classify(service, model, images, batch=32):
    """(the predicted label of each image, the /v1/classifications rows in input order)."""
    inputs = [image_input(png) for _, _, png in images]
    predicted, all_rows = [], []
    for first in range(0, len(inputs), batch):
        part = inputs[first:first + batch]
        reply = service.post("/classifications", {"model": model, "input": part})
        rows = sorted(reply["data"], key=lambda row: row["index"])
        if len(rows) != len(part):
            raise SystemExit(f"/v1/classifications answered {len(rows)} rows for {len(part)} images")
        predicted += [row["label"] for row in rows]
        all_rows += rows
    return predicted, all_rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_image_flags(parser)
    add_service_flags(parser)
    parser.add_argument("--check-export", action="store_true",
                        help="also download the merged export and compare timm's predictions "
                             "(bench/check_image_export.py)")
    args = parser.parse_args()

    train_path, test_path = fashion_mnist_paths(args.assets)
    train, test = read_image_zip(train_path, args.limit), read_image_zip(test_path, args.limit)
    upload_dir = None
    if args.limit:
        upload_dir = tempfile.mkdtemp(prefix="temper-bench-upload-")
        train_path = os.path.join(upload_dir, "train.zip")
        write_image_zip(train_path, train)

    service, succeeded = Service(args), False
    try:
        job = fine_tune(service.client, IMAGE_RECIPE["model"], train_path, None, args.seed,
                        {"type": "supervised", "supervised": {"hyperparameters": image_hyperparameters(args)}},
                        ("fashion_mnist_train.zip", None))
        if upload_dir:
            shutil.rmtree(upload_dir, ignore_errors=True)
        _, steps, timing = training_timing(service.client, job, len(train), args.epochs, args.batch_size)
        per_epoch = max(timing["optimizer_steps"] // max(args.epochs, 1), 1)
        losses = epoch_means({s: data.get("train_loss") for s, (_, data) in steps.items()}, per_epoch)
        predict_start = time.perf_counter()
        predicted, rows = classify(service, job.fine_tuned_model, test)
        predict_seconds = time.perf_counter() - predict_start
        scores = score([label for _, label, _ in test], predicted)
        peak_rss = service.peak_rss_mb()
        export = {}
        if args.check_export:
            from check_image_export import check_image_export
            export = check_image_export(service.base, args.api_key, job.id, test, rows, args.image_size,
                                        lambda images: classify(service, job.fine_tuned_model, images)[1])
        emit({
            "impl": "temper", "model": IMAGE_RECIPE["model"], "fine_tuned_model": job.fine_tuned_model,
            "classes": len({label for _, label, _ in train}),
            **{k: v for k, v in scores.items() if k != "per_class"},
            "train_examples": len(train), "test_examples": len(test), "epochs": args.epochs,
            **timing, "train_loss_epochs": losses,
            "predict_samples_per_s": round(len(test) / predict_seconds, 2),
            "peak_rss_mb": peak_rss, "per_class": scores["per_class"],
            "recipe": image_recipe_of(args), **export,
        })
        succeeded = True
    finally:
        service.close(succeeded)


if __name__ == "__main__":
    main()
