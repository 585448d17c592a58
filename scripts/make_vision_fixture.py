#!/usr/bin/env python3
"""Records what timm computes on three tiny, randomly initialised CNNs in timm's layout, so
Rust tests can check temper's ResNet / EfficientNet-Lite forward pass, eval- and train-mode
BatchNorm and the running-statistics update against an independent implementation.

    .venv-bench/bin/python scripts/make_vision_fixture.py [--out tests/fixtures/vision]
        # needs torch + timm + safetensors (scripts/bench-env.sh); CPU only, a few seconds

Writes one directory per model under OUT (default tests/fixtures/vision/):

- `resnet_basic/`: timm ResNet, BasicBlock, layers [2, 1, 1, 1], stage channels
  (8, 16, 32, 64), 8-channel stem, 5 classes; input 2x3x32x32; config architecture `resnet18`.
  As in resnet18, layer1's blocks are identity-residual (8 -> 8 channels, stride 1) and
  layer2-4 start with a 1x1/2 `downsample` (conv + BN).
- `resnet_bottleneck/`: Bottleneck (expansion 4, stride on the 3x3 conv2), layers [1, 1, 1, 1],
  channels (4, 8, 16, 32) -> block outputs 16, 32, 64, 128, 8-channel stem, 4 classes; input
  2x3x32x32; architecture `resnet50`. As in resnet50 every block has a downsample, layer1's
  with stride 1.
  timm's plain ResNet stem is always 64 wide (`stem_width` only sizes the "deep" stems), so
  both are built with 64 and then narrowed: `conv1`/`bn1` become 8-channel modules (same
  7x7/2, padding 3) and layer1.0's input convolutions (conv1, downsample.0) take 8 channels,
  a BasicBlock's downsample being dropped as 8 == 8 makes it redundant. The names and the
  forward are timm's; only those shapes differ from what timm's factory would build.
- `efficientnet_lite/`: timm's `_gen_efficientnet_lite` (the efficientnet_lite0 generator) with
  channel_multiplier 0.25 and depth_multiplier 0.5: stem 32 and head 1280 stay (Lite fixes
  them), stage repeats [1, 1, 1, 2, 2, 2, 1] (first and last stage not scaled), 3 classes;
  input 2x3x64x64; architecture `efficientnet_lite0`.

Each directory holds:
- `config.json`: timm's Hugging Face layout (`architecture`, `num_classes`, `num_features`,
  `pretrained_cfg` = the architecture's default data config with `input_size` and `pool_size`
  set to the fixture's). No `model_args`: none of the three can be rebuilt by timm's factory
  from its name (narrowed stems, Lite multipliers fixed by `efficientnet_lite0`), so the
  depth and widths are to be read off the tensors, as temper does.
- `model.safetensors`: the model's state_dict under timm's names, float32, without BatchNorm's
  int64 `num_batches_tracked` (torch fills it in on a strict load). Every BatchNorm has random
  weight U(0.5, 1.5), bias U(-0.2, 0.2), running_mean N(0, 0.2), running_var U(0.5, 2) (timm's
  ResNet would otherwise start each block's last BN at weight 0, and fresh running stats
  would make eval-mode BN the identity); convolutions and the classifier keep timm's init.
- `fixture.safetensors`:
    input                   f32 [2, 3, H, W]  seeded randn, NCHW, fed as is (no normalisation)
    logits                  f32 [2, C]        model.eval() forward
    features                f32 [2, F]        eval pooled features, the classifier's input
    train_logits            f32 [2, C]        model.train() forward of the same input (dropout and
                                              drop-path rates are 0, so batch statistics in BN
                                              are the only difference)
    bn1_running_mean_after  f32 [stem width]  the stem BN (`bn1`) running_mean after that one
    bn1_running_var_after   f32 [stem width]  train step: momentum 0.1, running_var updated
                                              with the unbiased batch variance (the batch
                                              normalised with the biased one)
  and `__metadata__` {"fixture": JSON of the torch / timm versions, seed and construction}
  (one key: safetensors writes a metadata map in hash order, so one key keeps reruns
  byte-identical).

And `timm_state_dicts.json` under OUT: for each of the real architectures temper loads
(STATE_DICT_ARCHS: efficientnet_lite0, resnet18, resnet50), the [tensor name, shape] pairs of
`timm.create_model(name, pretrained=False, num_classes=10).state_dict()`, in order, without
`num_batches_tracked`, with the timm version and num_classes: what a full-size checkpoint in timm's layout
holds (names and shapes only, no values), one pair a line.

Stdout lists each model's structure (kernel, stride, padding, groups, BN eps/momentum, skip)
and its tensor names, and the file sizes. Seeds: torch.manual_seed(20240521 + i) per model.
Commit the output; rerun only to change the fixtures (the tensors differ across torch builds
at the float-noise level, which is why the outputs are stored rather than recomputed).
"""
import argparse
import json
import os
from functools import partial

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.efficientnet import _gen_efficientnet_lite
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

SEED = 20240521
CFG_KEYS = ("input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean",
            "std", "num_classes", "pool_size", "first_conv", "classifier")


STEM = 8


def narrow_conv(conv, in_chs):
    """conv with `in_chs` input channels (a narrowed stem's width), timm's ResNet init."""
    new = nn.Conv2d(in_chs, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


def resnet(block, layers, channels, num_classes):
    model = ResNet(block=block, layers=layers, channels=channels, num_classes=num_classes,
                   drop_rate=0.0, drop_path_rate=0.0)
    model.conv1 = narrow_conv(nn.Conv2d(3, STEM, 7, 2, 3, bias=False), 3)
    model.bn1 = nn.BatchNorm2d(STEM)
    first = model.layer1[0]
    first.conv1 = narrow_conv(first.conv1, STEM)
    if block is BasicBlock and STEM == channels[0]:
        first.downsample = None
    else:
        first.downsample[0] = narrow_conv(first.downsample[0], STEM)
    return model


MODELS = [
    # name, architecture, builder, input H=W
    ("resnet_basic", "resnet18", partial(resnet, BasicBlock, (2, 1, 1, 1), (8, 16, 32, 64), 5), 32),
    ("resnet_bottleneck", "resnet50", partial(resnet, Bottleneck, (1, 1, 1, 1), (4, 8, 16, 32), 4), 32),
    ("efficientnet_lite", "efficientnet_lite0",
     partial(_gen_efficientnet_lite, "efficientnet_lite0", channel_multiplier=0.25,
             depth_multiplier=0.5, num_classes=3, drop_rate=0.0, drop_path_rate=0.0), 64),
]
CONSTRUCTION = {
    "resnet_basic": "timm ResNet(BasicBlock, layers=(2,1,1,1), channels=(8,16,32,64), num_classes=5), stem narrowed to 8",
    "resnet_bottleneck": "timm ResNet(Bottleneck, layers=(1,1,1,1), channels=(4,8,16,32), num_classes=4), stem narrowed to 8",
    "efficientnet_lite": "timm _gen_efficientnet_lite('efficientnet_lite0', channel_multiplier=0.25, depth_multiplier=0.5, num_classes=3)",
}


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def describe(model):
    """One line per conv / BN / pool / block, for the report."""
    lines = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if isinstance(m, nn.Conv2d):
            pad = getattr(m, "padding", None)
            lines.append(f"  {name:28s} {kind:14s} {m.in_channels:4d}->{m.out_channels:<4d} k{tuple(m.kernel_size)} "
                         f"s{tuple(m.stride)} p{pad} g{m.groups} bias={m.bias is not None}")
        elif isinstance(m, nn.BatchNorm2d):
            act = f" act={type(m.act).__name__}" if hasattr(m, "act") else ""
            lines.append(f"  {name:28s} {kind:14s} {m.num_features:4d} eps={m.eps:g} momentum={m.momentum}{act}")
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            lines.append(f"  {name:28s} {kind:14s} k={m.kernel_size} s={m.stride} p={m.padding} "
                         f"ceil={m.ceil_mode} dilation={getattr(m, 'dilation', None)}")
        elif hasattr(m, "has_skip") or kind in ("BasicBlock", "Bottleneck"):
            extra = f"has_skip={m.has_skip}" if hasattr(m, "has_skip") else f"downsample={m.downsample is not None}"
            act = [f"{n}={type(a).__name__}" for n, a in m.named_children() if n.startswith("act")]
            lines.append(f"  {name:28s} {kind:14s} {extra} {' '.join(act)}")
        elif name in ("act1", "global_pool", "classifier", "fc", "conv_head", "act2"):
            lines.append(f"  {name:28s} {kind:14s} {m}")
    return "\n".join(lines)


def config(arch, model, size):
    default = timm.create_model(arch, pretrained=False).pretrained_cfg
    cfg = {k: default[k] for k in CFG_KEYS if k in default}
    cfg["input_size"] = [3, size, size]
    cfg["num_classes"] = model.num_classes
    cfg["pool_size"] = [size // 32, size // 32]
    cfg = {"tag": "random_init", "custom_load": False, **{k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in cfg.items()}}
    return {"architecture": arch, "num_classes": model.num_classes, "num_features": model.num_features,
            "pretrained_cfg": cfg}


STATE_DICT_ARCHS = ("efficientnet_lite0", "resnet18", "resnet50")
STATE_DICT_CLASSES = 10


def state_dict_shapes(model):
    """[[tensor name, shape]] of the model's state_dict in order, without num_batches_tracked."""
    return [[name, list(t.shape)] for name, t in model.state_dict().items()
            if not name.endswith("num_batches_tracked")]


def state_dicts_json(timm_version, shapes):
    """timm_state_dicts.json's text: {"timm", "num_classes", "models": {arch: [[name, shape]]}},
    one [name, shape] pair a line."""
    lines = ["{", '  "made_by": "scripts/make_vision_fixture.py",', f'  "timm": {json.dumps(timm_version)},',
             f'  "num_classes": {STATE_DICT_CLASSES},', '  "models": {']
    for i, (arch, pairs) in enumerate(shapes.items()):
        lines.append(f"    {json.dumps(arch)}: [")
        lines += [f"      {json.dumps(pair)}{',' if j + 1 < len(pairs) else ''}" for j, pair in enumerate(pairs)]
        lines.append("    ]" + ("," if i + 1 < len(shapes) else ""))
    return "\n".join(lines + ["  }", "}", ""])


def write_state_dicts(out):
    shapes = {arch: state_dict_shapes(timm.create_model(arch, pretrained=False, num_classes=STATE_DICT_CLASSES))
              for arch in STATE_DICT_ARCHS}
    text = state_dicts_json(timm.__version__, shapes)
    assert json.loads(text)["models"] == shapes
    path = os.path.join(out, "timm_state_dicts.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"== {path}: " + ", ".join(f"{arch} {len(pairs)} tensors" for arch, pairs in shapes.items())
          + f", {os.path.getsize(path)} B")
    return os.path.getsize(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/vision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    total = 0
    for i, (name, arch, build, size) in enumerate(MODELS):
        torch.manual_seed(SEED + i)
        model = build()
        randomise_bn(model)
        model.eval()
        out_dir = os.path.join(args.out, name)
        os.makedirs(out_dir, exist_ok=True)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                 if not k.endswith("num_batches_tracked")}
        assert all(v.dtype == torch.float32 for v in state.values())
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model(x)
            assert torch.allclose(model.get_classifier()(feats), logits, atol=1e-5)
            model.train()
            train_logits = model(x)
        bn1 = model.bn1
        tensors = {
            "input": x, "logits": logits, "features": feats, "train_logits": train_logits,
            "bn1_running_mean_after": bn1.running_mean.detach().clone(),
            "bn1_running_var_after": bn1.running_var.detach().clone(),
        }
        # The update the Rust side implements, recomputed by hand from the stem's output.
        with torch.no_grad():
            stem = model.conv_stem(x) if hasattr(model, "conv_stem") else model.conv1(x)
            mean, var = stem.mean((0, 2, 3)), stem.var((0, 2, 3), unbiased=True)
        assert torch.allclose(tensors["bn1_running_mean_after"], 0.9 * state["bn1.running_mean"] + 0.1 * mean, atol=1e-6)
        assert torch.allclose(tensors["bn1_running_var_after"], 0.9 * state["bn1.running_var"] + 0.1 * var, atol=1e-5)
        meta = {"made_by": "scripts/make_vision_fixture.py", "torch": torch.__version__,
                "timm": timm.__version__, "model": CONSTRUCTION[name], "seed": str(SEED + i),
                "bn_momentum": "0.1"}
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "fixture.safetensors"),
                  metadata={"fixture": json.dumps(meta, sort_keys=True)})
        for f in ("model.safetensors", "fixture.safetensors"):  # save_file leaves them 0600
            os.chmod(os.path.join(out_dir, f), 0o644)
        cfg = config(arch, model, size)
        with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

        # Cross-check: a strict load of the written file into a fresh model gives the same logits.
        fresh = build().eval()
        fresh.load_state_dict(load_file(os.path.join(out_dir, "model.safetensors")), strict=True)
        with torch.no_grad():
            assert torch.equal(fresh(x), logits)

        sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
        total += sum(sizes.values())
        params = sum(v.numel() for v in state.values())
        print(f"== {name} ({arch}): {len(state)} tensors, {params} floats, input {tuple(x.shape)}, "
              f"features {tuple(feats.shape)}, logits {tuple(logits.shape)}")
        print(f"   logits {logits.flatten().tolist()[:6]}")
        print(f"   train_logits {train_logits.flatten().tolist()[:6]}")
        print(f"   max |logits - train_logits| {(logits - train_logits).abs().max().item():.4f}")
        print("   files " + ", ".join(f"{f} {n} B" for f, n in sizes.items()))
        print(describe(model))
        print("   tensors: " + " ".join(f"{k}{list(v.shape)}" for k, v in state.items()))
    total += write_state_dicts(args.out)
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
