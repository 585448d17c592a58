#!/usr/bin/env python3
"""Records timm's ImageNet logits for the converted EfficientNet-Lite0 weights
(`scripts/fetch-assets.sh --vision` → ASSETS/models/timm/efficientnet_lite0) on a fixed
synthetic input, so the Rust test `zoo::vision::real_weights_tests` checks temper's forward on
the real weights against timm's.

    .venv-bench/bin/python scripts/make_real_vision_fixture.py --assets assets \
        [--out tests/fixtures/vision/efficientnet_lite0_real.json]

The input is a pure function of the indices (the Rust test builds the same one):
x[n, c, h, w] = ((h*7 + w*13 + c*29 + n*31) % 255) / 127.5 - 1, shape [2, 3, 224, 224] (NCHW,
already normalised: the model's mean/std are 0.5). Output: {"made_by", "timm", "torch",
"logits": [[1000 floats] × 2] (rounded to 1e-5), "top5": [[indices] × 2]}.
"""
import argparse
import json
import os

import timm
import torch


def pattern():
    n, c, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(224), torch.arange(224), indexing="ij")
    return ((h * 7 + w * 13 + c * 29 + n * 31) % 255).float() / 127.5 - 1.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--out", default="tests/fixtures/vision/efficientnet_lite0_real.json")
    args = parser.parse_args()
    weights = os.path.join(args.assets, "models/timm/efficientnet_lite0/model.safetensors")
    model = timm.create_model("efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=weights))
    model.eval()
    with torch.no_grad():
        logits = model(pattern())
    out = {
        "made_by": "scripts/make_real_vision_fixture.py",
        "timm": timm.__version__,
        "torch": torch.__version__,
        "logits": [[round(float(v), 5) for v in row] for row in logits],
        "top5": [row.topk(5).indices.tolist() for row in logits],
    }
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(args.out, "top5", out["top5"])


if __name__ == "__main__":
    main()
