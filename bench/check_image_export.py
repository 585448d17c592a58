"""Checks that a fine-tuned image classifier downloaded from temper loads in timm and predicts
what temper's /v1/classifications predicts.

    .venv-bench/bin/python bench/check_image_export.py --base-url http://127.0.0.1:8080 --job ftjob-...
        [--assets assets] [--limit 200] [--image-size S]

It downloads GET /v1/fine_tuning/jobs/{id}/download?format=merged (a tar of a timm-layout
directory: config.json with `num_classes`, `label_names` in class id order,
`pretrained_cfg.input_size` = the trained size, and `head_hidden` when the head has two
layers; model.safetensors under timm's names) and loads it with timm on CPU PyTorch:

- one linear head (no `head_hidden`): `timm.create_model(arch, pretrained=True,
  pretrained_cfg_overlay=dict(file=DIR/model.safetensors, num_classes=N), num_classes=N)`
  ("loaded_with": "create_model"). The overlay's num_classes matters: without it the
  pretrained_cfg keeps the registry's 1000 classes, and timm, seeing 1000 != N, silently drops
  `classifier.*` from the file and leaves a random head. The loaded state_dict is therefore
  compared with the file, tensor by tensor. (`timm.create_model("local-dir:" + DIR,
  pretrained=True)` reads config.json itself and loads such an export exactly too.)
- a two-layer head (`head_hidden` H): create_model cannot load it (its head is one Linear, the
  file has `classifier.0.*` / `classifier.3.*`: a strict load fails on missing / unexpected
  keys, reported as `create_model_error`), so the model is created with num_classes=N, its
  head (`pretrained_cfg.classifier`: `classifier`, or `fc` for ResNets) replaced by the recipe's
  Sequential(Linear(F, H), ReLU, Dropout, Linear(H, N)) and the file loaded with
  `load_state_dict(..., strict=True)` ("loaded_with": "create_model+sequential_head").

The test images (ASSETS/data/fashion_mnist/test.zip, --limit class-balanced as in
bench/image.py) are decoded with PIL, grey -> RGB, and prepared with timm's eval transform
(`create_transform(**resolve_data_config(pretrained_cfg=<config.json's pretrained_cfg>))`:
input_size, interpolation, crop_pct, crop_mode, mean and std all from the exported file, not
from timm's registry), then classified in eval mode. It prints one JSON line:
`export_label_agreement` (share of identical labels), `export_max_prob_diff` (largest
|p_temper - p_timm| over all labels and images), `n` (images), `loaded_with`, the
`export_data_config` used, and `create_model_error` for a two-layer head.
temper resizes with the `image` crate's CatmullRom for "bicubic" and PIL with its own bicubic,
so the pixels, hence the probabilities, differ slightly: agreement near 1.0 and a small
max_prob_diff are expected, not float noise. To tell that apart from the model, the same
images are also sent to temper and to timm already resized by PIL (timm's eval Resize, so
temper's resize is the identity): `same_resize_label_agreement` and
`same_resize_max_prob_diff` then differ only by the centre crop, the normalisation and the
model, and should be float noise (about 1e-5). bench/image.py --check-export runs the same
check after its benchmark.
"""
import argparse
import io
import json
import os

from check_export import compare, download_merged
from common import emit


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def head_layout(config, tensor_names):
    """(head module name, head_hidden) of an exported config.json and its tensor names;
    exits when the two disagree."""
    head = config.get("pretrained_cfg", {}).get("classifier") or "classifier"
    hidden = int(config.get("head_hidden") or 0)
    want = [f"{head}.0.weight", f"{head}.0.bias", f"{head}.3.weight", f"{head}.3.bias"] if hidden else \
        [f"{head}.weight", f"{head}.bias"]
    missing = [name for name in want if name not in tensor_names]
    if missing:
        raise SystemExit(f"config.json says head `{head}` with head_hidden {hidden}, but model.safetensors "
                         f"lacks {missing}")
    return head, hidden


def eval_data_config(config):
    """timm's data config from the exported config.json's pretrained_cfg (and only from it)."""
    from timm.data import resolve_data_config

    cfg = dict(config["pretrained_cfg"])
    cfg["input_size"] = tuple(cfg["input_size"])
    return resolve_data_config(pretrained_cfg=cfg)


def sequential_head(in_features, hidden, n_classes):
    """The recipe's two-layer head, named as temper exports it (`.0` and `.3`); the dropout
    rate is not exported and does not matter in eval mode."""
    from torch import nn

    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.0), nn.Linear(hidden, n_classes))


def verify_loaded(model, tensors):
    """Exits unless the model's state_dict (less num_batches_tracked) is exactly the file's."""
    import torch

    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(state) != set(tensors):
        raise SystemExit(f"loaded model vs file: only in model {sorted(set(state) - set(tensors))[:5]}, "
                         f"only in file {sorted(set(tensors) - set(state))[:5]}")
    differ = [k for k, v in tensors.items() if not torch.equal(state[k], v.to(state[k].dtype))]
    if differ:
        raise SystemExit(f"loaded model differs from the file in {len(differ)} tensors, e.g. {differ[:5]}")


def load_export(model_dir):
    """(model in eval mode, how it was loaded, create_model's error for a two-layer head or None)."""
    import timm
    from safetensors.torch import load_file

    config = read_config(model_dir)
    weights = os.path.join(model_dir, "model.safetensors")
    tensors = load_file(weights)
    head, hidden = head_layout(config, tensors)
    arch, n = config["architecture"], int(config["num_classes"])
    overlay = dict(file=weights, num_classes=n)
    if not hidden:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=n)
        verify_loaded(model, tensors)
        return model.eval(), "create_model", None
    try:
        timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=n)
        plain_error = None
    except RuntimeError as e:
        plain_error = " ".join(str(e).split())[:300]
    model = timm.create_model(arch, pretrained=False, num_classes=n)
    setattr(model, head, sequential_head(model.num_features, hidden, n))
    model.load_state_dict(tensors, strict=True)
    verify_loaded(model, tensors)
    return model.eval(), "create_model+sequential_head", plain_error


def timm_probabilities(model, transform, labels, images, batch=32):
    """[{label: probability}] for each (name, label, PNG bytes) image."""
    import torch
    from PIL import Image

    out = []
    with torch.inference_mode():
        for first in range(0, len(images), batch):
            pixels = torch.stack([transform(Image.open(io.BytesIO(png)).convert("RGB"))
                                  for _, _, png in images[first:first + batch]])
            probs = torch.softmax(model(pixels).float(), dim=-1)
            out += [{labels[i]: float(p[i]) for i in range(len(labels))} for p in probs]
    return out


def pre_resized(images, resize):
    """The images as PNGs already resized (grey -> RGB) by `resize`, timm's eval Resize step:
    temper's own resize to the same size leaves them as they are, so only the centre crop,
    the normalisation and the model can make temper and timm differ on them."""
    from PIL import Image

    out = []
    for name, label, png in images:
        buffer = io.BytesIO()
        resize(Image.open(io.BytesIO(png)).convert("RGB")).save(buffer, "PNG")
        out.append((name, label, buffer.getvalue()))
    return out


def check_image_export(base_url, api_key, job_id, images, temper_rows, image_size=0, classify_rows=None):
    """The export check's keys for `images` (name, label, PNG) and temper's rows for them.
    With classify_rows (images -> temper's rows) it also compares on pre-resized images
    (`same_resize_*`; see pre_resized)."""
    import tempfile

    from timm.data import create_transform
    from torchvision import transforms

    with tempfile.TemporaryDirectory(prefix="temper-export-") as dest:
        model_dir = download_merged(base_url, api_key, job_id, dest)
        config = read_config(model_dir)
        data_config = eval_data_config(config)
        if image_size and tuple(data_config["input_size"]) != (3, image_size, image_size):
            raise SystemExit(f"the export's input_size is {data_config['input_size']}, not {image_size}")
        labels = config["label_names"]
        if len(labels) != int(config["num_classes"]):
            raise SystemExit(f"config.json: {len(labels)} label_names for num_classes {config['num_classes']}")
        model, loaded_with, plain_error = load_export(model_dir)
        transform = create_transform(**data_config, is_training=False)
        probs = timm_probabilities(model, transform, labels, images)
        result = {**compare(temper_rows, probs), "n": len(images), "loaded_with": loaded_with,
                  "export_data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}}
        resize = transform.transforms[0]
        if classify_rows and isinstance(resize, transforms.Resize):
            same = pre_resized(images, resize)
            agreement = compare(classify_rows(same), timm_probabilities(model, transform, labels, same))
            result.update({key.replace("export_", "same_resize_"): value for key, value in agreement.items()})
    if plain_error:
        result["create_model_error"] = plain_error
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--job", required=True, help="a succeeded image fine-tuning job id")
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--limit", type=int, default=200, help="test images to compare, class-balanced (0 = all)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="check that the export's input_size is this (0: take it from the export)")
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    args = parser.parse_args()

    from image import classify
    from image_common import fashion_mnist_paths, read_image_zip
    from task_driver import Service

    service = Service(argparse.Namespace(base_url=args.base_url, api_key=args.api_key, keep_data=False))
    job = service.client.fine_tuning.jobs.retrieve(args.job)
    images = read_image_zip(fashion_mnist_paths(args.assets)[1], args.limit)
    rows_of = lambda some: classify(service, job.fine_tuned_model, some)[1]  # noqa: E731
    result = check_image_export(service.base, args.api_key, job.id, images, rows_of(images), args.image_size, rows_of)
    emit({"job": job.id, "fine_tuned_model": job.fine_tuned_model, **result})


if __name__ == "__main__":
    main()
