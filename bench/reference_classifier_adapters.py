"""The Python reference for serving many LoRA classifiers of one base: peft loads the same
fine-tune (temper's PEFT export, `examples/classifier_adapters.rs train`) N times as N named
adapters on one AutoModelForSequenceClassification of all-MiniLM-L6-v2, then classifies the
Rotten Tomatoes test texts spread round-robin over the adapters: per adapter, set_adapter
and batches of 64 (dynamic padding, no grad), as temper's round runs one forward per
adapter. Prints one JSON line: texts/s, the process's memory with the adapters loaded and at
its peak, and every text's predicted label.

    .venv-bench/bin/python bench/reference_classifier_adapters.py --assets assets \
        --adapter /tmp/ckpt/peft-adapter [--fine-tunes 10] [--texts 512] [--threads 2]
"""
import argparse
import os
import time

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common import emit, peak_rss_mb_self, read_split

BATCH = 64


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--fine-tunes", type=int, default=10)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base_dir = os.path.join(args.assets, "models/sentence-transformers/all-MiniLM-L6-v2")
    _, train_labels = read_split(os.path.join(args.assets, "data/rotten_tomatoes/train.csv"))
    labels = sorted(set(train_labels))
    texts, _ = read_split(os.path.join(args.assets, "data/rotten_tomatoes/test.csv"), args.texts)

    rss_start = rss_mb()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(labels))
    names = [f"ft{i}" for i in range(args.fine_tunes)]
    model = PeftModel.from_pretrained(base, args.adapter, adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(args.adapter, adapter_name=name)
    model.eval()
    rss_loaded = rss_mb()

    predicted = [None] * len(texts)
    start = time.perf_counter()
    with torch.no_grad():
        for a, name in enumerate(names):
            model.set_adapter(name)
            members = list(range(a, len(texts), len(names)))
            for b in range(0, len(members), BATCH):
                rows = members[b:b + BATCH]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                  max_length=128, return_tensors="pt")
                logits = model(**batch).logits
                for i, k in zip(rows, logits.argmax(-1).tolist()):
                    predicted[i] = labels[k]
    seconds = time.perf_counter() - start
    emit({
        "side": "peft", "fine_tunes": args.fine_tunes, "texts": len(texts),
        "texts_per_s": round(len(texts) / seconds, 1),
        "rss_start_mib": round(rss_start, 1), "rss_loaded_mib": round(rss_loaded, 1),
        "rss_growth_mib": round(rss_loaded - rss_start, 1), "peak_rss_mib": round(peak_rss_mb_self(), 1),
        "labels": predicted,
    })


if __name__ == "__main__":
    main()
