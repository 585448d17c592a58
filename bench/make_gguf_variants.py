"""Makes the GGUF files that the llama.cpp sides of the serving benchmark (bench/serving.py)
load: SmolLM2-135M-Instruct's weights at the dtypes temper serves them in.

    .venv-bench/bin/python bench/make_gguf_variants.py OUT_DIR [--assets assets] [--types f32,q8_0]
        [--quantize-embeddings]

The source is the Q4_1 GGUF that temper and the transformers reference load
(ASSETS/models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf: Q4_1 projections, a Q8_0 token
embedding that is also the tied output layer, F32 norms). Files written, each only when it is
not there yet (written to a temp name, then renamed, so a file that exists is complete):
- OUT_DIR/SmolLM2-135M-Instruct-F32.gguf: every tensor dequantized to F32 with gguf-py's
  `gguf.quants.dequantize` (what temper's default CPU serving and transformers compute with).
  All metadata is copied (architecture and hyperparameters, tokenizer vocabulary, merges,
  token types and special ids, chat template), except `general.file_type`, set to ALL_F32.
  Tensor order and llama.cpp's Q/K row order are kept as they are.
- OUT_DIR/SmolLM2-135M-Instruct-Q8_0.gguf (and -Q4_0 with `--types ...,q4_0`): the F32 file
  quantized by llama.cpp itself, `llama_cpp.llama_model_quantize` (llama-cpp-python, installed by
  `scripts/bench-env.sh --llama-cpp`) with ftype MOSTLY_Q8_0 / MOSTLY_Q4_0. The token
  embedding (the output layer too: it is tied) is kept F32, as temper's `--serve-dtype q8_0`
  keeps it (only the layers' projections become blocks; norms stay F32 either way);
  `--quantize-embeddings` leaves llama.cpp's default instead (the embedding quantized too).
- OUT_DIR/SmolLM2-135M-Instruct-BF16.gguf (`--types ...,bf16`): the same with ftype MOSTLY_BF16,
  every matrix bf16, the tied embedding too (as temper's `--serve-dtype bf16` stores it).
Prints one JSON line: {"f32": path, "q8_0": path, ...}.
"""
import argparse
import json
import os
import sys

import numpy as np

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
STEM = "SmolLM2-135M-Instruct"
# llama.cpp's ftype for each quantized dtype (llama.h: LLAMA_FTYPE_*, via llama_cpp).
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "bf16": "LLAMA_FTYPE_MOSTLY_BF16"}


def variant_path(out_dir, dtype):
    return os.path.join(out_dir, f"{STEM}-{dtype.upper()}.gguf")


def source_path(assets):
    path = os.path.join(assets, "models", MODEL + ".gguf")
    if not os.path.exists(path):
        raise SystemExit(f"{path} missing: run scripts/fetch-assets.sh {assets} --llm")
    return path


def write_f32(source, target):
    """Dequantizes every tensor of `source` to F32 into `target`, with all its metadata."""
    import gguf
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    tmp = target + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    for key, field in reader.fields.items():
        # The writer writes the header fields (GGUF.*) and general.architecture itself.
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        # numpy's shape is GGUF's dimensions reversed (ne0 is the innermost, contiguous one).
        shape = tuple(int(n) for n in reversed(tensor.shape))
        writer.add_tensor(tensor.name, np.ascontiguousarray(data, dtype=np.float32).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, target)


def write_quantized(f32_path, target, dtype, quantize_embeddings):
    """llama.cpp's own quantizer over the F32 file."""
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama_cpp missing: run scripts/bench-env.sh --llama-cpp (llama-cpp-python quantizes)")
    import ctypes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[dtype])
    params.nthread = os.cpu_count() or 1
    # bf16: the embedding / tied output layer in bf16 too, as temper's `--serve-dtype bf16` keeps it.
    if not quantize_embeddings and dtype != "bf16":
        params.token_embedding_type = llama_cpp.GGML_TYPE_F32
        params.output_tensor_type = llama_cpp.GGML_TYPE_F32
    tmp = target + ".tmp"
    rc = llama_cpp.llama_model_quantize(f32_path.encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({dtype}) returned {rc}")
    os.replace(tmp, target)


def make_variants(out_dir, assets="assets", types=("f32", "q8_0"), quantize_embeddings=False):
    """{dtype: path} of the requested variants, each made when missing."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    f32 = variant_path(out_dir, "f32")
    if not os.path.exists(f32):
        print(f"writing {f32} ...", file=sys.stderr)
        write_f32(source_path(assets), f32)
    if "f32" in types:
        paths["f32"] = f32
    for dtype in types:
        if dtype == "f32":
            continue
        if dtype not in FTYPES:
            raise SystemExit(f"unknown dtype {dtype!r}: f32, " + ", ".join(FTYPES))
        path = variant_path(out_dir, dtype)
        if not os.path.exists(path):
            print(f"writing {path} ...", file=sys.stderr)
            write_quantized(f32, path, dtype, quantize_embeddings)
        paths[dtype] = path
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="where the GGUF files go (e.g. bench/out/gguf)")
    parser.add_argument("--assets", default="assets", help="scripts/fetch-assets.sh --llm destination")
    parser.add_argument("--types", default="f32,q8_0", help="comma-separated: f32, q8_0, q4_0, bf16")
    parser.add_argument("--quantize-embeddings", action="store_true",
                        help="let llama.cpp quantize the token embedding / output layer too")
    args = parser.parse_args()
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    print(json.dumps(make_variants(args.out_dir, args.assets, types, args.quantize_embeddings), sort_keys=True))


if __name__ == "__main__":
    main()
