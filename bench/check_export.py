"""Checks that a fine-tuned classifier downloaded from temper loads in Hugging Face
transformers and predicts what temper's /v1/classifications predicts.

    .venv-bench/bin/python bench/check_export.py --base-url http://127.0.0.1:8080 --job ftjob-... [--assets assets] [--limit 200]

It downloads GET /v1/fine_tuning/jobs/{id}/download?format=merged (a tar of a Hugging Face
directory), loads it with AutoTokenizer + AutoModelForSequenceClassification (CPU PyTorch),
classifies the test split, and compares with temper's answers for the same texts. It prints
one JSON line: `export_label_agreement` (share of identical labels; 1.0 expected) and
`export_max_prob_diff` (largest |p_temper - p_transformers| over all labels and texts; float
noise only, about 1e-5, is expected). bench/classification.py --check-export runs the same
check after its benchmark.
"""
import argparse
import os
import sys
import tarfile
import tempfile

import httpx

from common import emit, read_split


def download_merged(base_url, api_key, job_id, dest, fmt="merged", marker="config.json"):
    """Streams the `fmt` export's tar into dest and returns the directory holding `marker`."""
    archive = os.path.join(dest, "export.tar")
    url = f"{base_url}/v1/fine_tuning/jobs/{job_id}/download"
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream("GET", url, params={"format": fmt}, headers=headers, timeout=600) as reply:
        if reply.status_code != 200:
            sys.exit(f"download failed: HTTP {reply.status_code} {reply.read()[:500]!r}")
        with open(archive, "wb") as f:
            for chunk in reply.iter_bytes():
                f.write(chunk)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    for root, _, files in os.walk(dest):
        if marker in files:
            return root
    sys.exit(f"the export has no {marker}")


def transformers_probabilities(model_dir, texts, max_seq_len, batch=64):
    """[{label: probability}] for each text, from the exported directory."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    id2label = model.config.id2label
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], truncation=True, max_length=max_seq_len,
                            padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits.float(), dim=-1)
            out += [{id2label[i]: float(p[i]) for i in range(len(p))} for p in probs]
    return out


def peft_probabilities(adapter_dir, base_dir, labels, texts, max_seq_len, batch=64):
    """[{label: probability}] from the PEFT adapter applied to the base model with peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], truncation=True, max_length=max_seq_len,
                            padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits.float(), dim=-1)
            out += [{labels[i]: float(p[i]) for i in range(len(p))} for p in probs]
    return out


def compare(temper_rows, reference):
    """temper_rows: /v1/classifications data rows in input order; reference: label -> prob."""
    agree, max_diff = 0, 0.0
    for row, probs in zip(temper_rows, reference):
        agree += row["label"] == max(probs, key=probs.get)
        for label, p in probs.items():
            max_diff = max(max_diff, abs(float(row["scores"].get(label, 0.0)) - p))
    return {"export_label_agreement": round(agree / len(temper_rows), 4),
            "export_max_prob_diff": float(f"{max_diff:.3g}")}


def check_export(base_url, api_key, job_id, texts, temper_rows, max_seq_len):
    with tempfile.TemporaryDirectory(prefix="temper-export-") as dest:
        model_dir = download_merged(base_url, api_key, job_id, dest)
        return compare(temper_rows, transformers_probabilities(model_dir, texts, max_seq_len))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--job", required=True, help="a succeeded fine-tuning job id")
    parser.add_argument("--assets", default="assets")
    parser.add_argument("--limit", type=int, default=200, help="test texts to compare (0 = all)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--api-key", default=os.environ.get("TEMPER_API_KEY") or "unused")
    parser.add_argument("--format", choices=["merged", "adapter"], default="merged",
                        help="adapter: load the PEFT adapter with peft onto the base model from the assets")
    args = parser.parse_args()

    from openai import OpenAI
    from classification import classify

    base = args.base_url.rstrip("/")
    client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, max_retries=0)
    job = client.fine_tuning.jobs.retrieve(args.job)
    texts, _ = read_split(os.path.join(args.assets, "data", "rotten_tomatoes", "test.csv"), args.limit)
    _, rows = classify(client, job.fine_tuned_model, texts)
    if args.format == "merged":
        result = check_export(base, args.api_key, job.id, texts, rows, args.max_seq_len)
    else:
        # temper numbers labels in sorted order (domain::dataset::label_set).
        labels = sorted(rows[0]["scores"])
        with tempfile.TemporaryDirectory(prefix="temper-adapter-") as dest:
            adapter_dir = download_merged(base, args.api_key, job.id, dest, "adapter", "adapter_config.json")
            base_dir = os.path.join(args.assets, "models", job.model)
            result = compare(rows, peft_probabilities(adapter_dir, base_dir, labels, texts, args.max_seq_len))
    emit({"job": job.id, "fine_tuned_model": job.fine_tuned_model, "texts": len(texts),
          "format": args.format, **result})


if __name__ == "__main__":
    main()
