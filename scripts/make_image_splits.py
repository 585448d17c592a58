#!/usr/bin/env python3
"""Builds the fixed, seeded, class-balanced Fashion-MNIST split that temper's image
classification benchmarks and real-data tests use.

    python3 scripts/make_image_splits.py fashion_mnist IDX_DIR OUT_DIR

Standard library only, and byte-for-byte deterministic, so scripts/fetch-assets.sh can pin the
sha256 of every file it writes wherever it is rebuilt.

Input: IDX_DIR holding Fashion-MNIST's four gzip'd IDX files as Debian 12's
`dataset-fashion-mnist` 0.0~git20200523.55506a9-1 installs them under
/usr/share/datasets/fashion-mnist/: `train-images-idx3-ubyte.gz` / `train-labels-idx1-ubyte.gz`
(60,000 images, 6,000 per class) and `t10k-images-idx3-ubyte.gz` / `t10k-labels-idx1-ubyte.gz`
(10,000, 1,000 per class); 28x28 greyscale, 0 = background.

Rules:
- class names are Fashion-MNIST's, label id order, made file-name safe: T-shirt_top, Trouser,
  Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle_boot;
- with one `random.Random(20240521)`: for each class in id order, 500 train images sampled from
  that class's images of the IDX train set; then, for each class, 100 test images sampled from
  the t10k set (5,000 train / 1,000 test, balanced, no image in both: they come from different
  files);
- an image is named by its index in its IDX file, 5 digits: `Coat/01234.png`.

Output in OUT_DIR:
- `train.zip` / `test.zip`: ImageFolder layout, one `<class name>/<index>.png` entry per image
  (no directory entries), sorted by name, stored (not deflated), every entry dated
  1980-01-01 00:00:00 with mode 0644 and Unix as the creating system;
- `train.jsonl` / `test.jsonl`: the same images, one `{"image": "data:image/png;base64,...",
  "label": "<class name>"}` a line, in a seeded shuffled order (the same `Random`, after the
  sampling), so any prefix of the file mixes the classes.
The PNGs are 8-bit greyscale (colour type 0), 28x28, no interlace, filter 0 on every row, and
their zlib stream is built by hand from stored deflate blocks: the bytes then depend on no zlib
build (zlib and zlib-ng compress the same data to different bytes), at about 0.9 KB an image.
Prints the counts and sha256 of each file.
"""
import base64
import gzip
import hashlib
import json
import os
import random
import struct
import sys
import zipfile
import zlib

SEED = 20240521
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle_boot")
N_TRAIN_PER_CLASS, N_TEST_PER_CLASS = 500, 100
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def read_idx(images_path, labels_path):
    """Returns (rows, cols, list of image bytes, list of labels)."""
    with gzip.open(images_path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051 or len(data) != 16 + n * rows * cols:
        sys.exit(f"{images_path}: not an IDX3 ubyte file")
    images = [data[16 + i * rows * cols:16 + (i + 1) * rows * cols] for i in range(n)]
    with gzip.open(labels_path, "rb") as f:
        data = f.read()
    magic, n_labels = struct.unpack(">II", data[:8])
    if magic != 2049 or n_labels != n or len(data) != 8 + n:
        sys.exit(f"{labels_path}: not an IDX1 ubyte file with {n} labels")
    labels = list(data[8:])
    if max(labels) >= len(CLASSES):
        sys.exit(f"{labels_path}: label {max(labels)} out of range")
    return rows, cols, images, labels


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def stored_zlib(raw):
    """A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951), at most 65,535 bytes each."""
    out = bytearray(b"\x78\x01")
    for start in range(0, max(len(raw), 1), 65535):
        block = raw[start:start + 65535]
        final = 1 if start + 65535 >= len(raw) else 0
        out += bytes([final]) + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block
    return bytes(out + struct.pack(">I", zlib.adler32(raw)))


def grey_png(pixels, rows, cols):
    raw = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", stored_zlib(raw))
            + png_chunk(b"IEND", b""))


def sample(labels, per_class, rng):
    """Per class in id order: `per_class` indices drawn from that class's, sorted."""
    by_class = [[] for _ in CLASSES]
    for i, label in enumerate(labels):
        by_class[label].append(i)
    picked = []
    for c, indices in enumerate(by_class):
        if len(indices) < per_class:
            sys.exit(f"class {CLASSES[c]} has only {len(indices)} images")
        picked += [(c, i) for i in sorted(rng.sample(indices, per_class))]
    return picked


def write_zip(path, entries):
    """entries: (name, bytes), written sorted by name with fixed metadata."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            z.writestr(info, data)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main_fashion_mnist(idx_dir, out_dir):
    sets = {"train": ("train", N_TRAIN_PER_CLASS), "test": ("t10k", N_TEST_PER_CLASS)}
    rng = random.Random(SEED)
    picked = {}
    for name, (prefix, per_class) in sets.items():
        rows, cols, images, labels = read_idx(os.path.join(idx_dir, f"{prefix}-images-idx3-ubyte.gz"),
                                              os.path.join(idx_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        picked[name] = [(f"{CLASSES[c]}/{i:05d}.png", CLASSES[c], grey_png(images[i], rows, cols))
                        for c, i in sample(labels, per_class, rng)]
    os.makedirs(out_dir, exist_ok=True)
    for name, part in picked.items():
        write_zip(os.path.join(out_dir, f"{name}.zip"), [(entry, png) for entry, _, png in part])
        rows = [{"image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "label": label}
                for _, label, png in part]
        rng.shuffle(rows)
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), rows)
        per_class = len(part) // len(CLASSES)
        for ext in ("zip", "jsonl"):
            path = os.path.join(out_dir, f"{name}.{ext}")
            print(f"{name}.{ext}: {len(part)} images ({per_class} per class), sha256 {sha256(path)}")


MODES = {"fashion_mnist": main_fashion_mnist}

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in MODES:
        MODES[sys.argv[1]](sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
