"""Where a training step's CPU time goes, from a `perf record --call-graph dwarf` profile.

    perf record -F 250 --call-graph dwarf,16384 -o step.data <temper or examples/train_speed ...>
    perf script -i step.data -F comm,tid,time,ip,sym > step.txt
    python3 bench/profile_step.py step.txt [--json]

Only samples inside the training window count: from the first to the last sample whose stack
holds a training forward or an optimizer step (so model loading, tokenization, the
validation before the first step and generation afterwards are left out; validation passes
and checkpoint writes inside the window are their own rows). Every sample of every thread
in the window is put in one category by its innermost frame, with the stack deciding where
the frame alone cannot (an addition inside the backward is gradient accumulation, inside
the forward a residual). Percentages are of all samples in the window: CPU time, both cores.
"""
import argparse
import collections
import json
import re

# (category, substrings of the innermost frame), first match wins.
BY_FRAME = [
    # The gemm crate's, then OpenBLAS's (zoo::cpu::blas; its drivers sgemm_nn.. included).
    ("matmul: gemm kernels", ["gemm_f32::microkernel", "gemm_f64::microkernel", "sgemm_kernel_",
                              "sgemm_small_kernel", "sgemm_beta", "sgemm_nn", "sgemm_nt",
                              "sgemm_tn", "sgemm_tt", "cblas_sgemm"]),
    ("matmul: operand packing", ["pack_operands", "vectorize::imp_fastcall", "gemm_common::pack",
                                 "sgemm_incopy", "sgemm_itcopy", "sgemm_oncopy", "sgemm_otcopy"]),
    ("attention (softmax, masks)", ["FusedAttention", "VarlenAttention", "softmax", "MaskedSoftmax",
                                    "__expf", "expf", "CausalPrefix"]),
    ("norms and activations", ["LayerNorm", "RmsNorm", "GeluErf", "gelu", "silu", "Rope", "erf"]),
    ("dropout", ["Dropout", "dropout", "rand::", "xflowf", "with_errnof"]),
    ("optimizer (AdamW, clipping)", ["StepScalars", "AdamW", "InPlaceUpdate", "sum_of_squares",
                                     "global_norm"]),
    ("thread sync (spin, yield, sleep)", ["sched_yield", "__schedule", "finish_task_switch",
                                          "futex", "_raw_spin", "do_sched_yield", "Sleep::",
                                          "wait_until", "LockLatch", "CoreLatch", "syscall"]),
    ("allocation, copies, zero fills", ["memmove", "memcpy", "memset", "malloc", "_int_free",
                                        "_int_malloc", "free", "copy_strided", "page_fault",
                                        "clear_page", "index_add", "index_select", "zeros_impl",
                                        "copy_folio", "madvise", "mmap", "munmap"]),
]
ELEMENTWISE = ["binary_map", "unary_map", "Map1::map", "Map2::map", "reduce_op", "vec_sum",
               "BarrierPool", "affine"]


def read_samples(path):
    samples, current = [], None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if current:
                    samples.append(current)
                current = None
            elif not line.startswith("\t"):
                parts = line.split()
                current = (float(parts[-1].rstrip(":")), [])
            elif current is not None:
                frame = line.strip().split(" ", 1)[-1]
                current[1].append(re.sub(r"\+0x[0-9a-f]+$", "", frame))
    if current:
        samples.append(current)
    return samples


# Frames that say nothing about the work: closures and iterator adapters inlined into
# rayon's loops. The first frame below them that names a function decides.
GENERIC = ["core::ops::function", "core::iter::", "rayon::iter", "Producer::fold_with",
           "LocalKey", "from_iter", "rayon_core::"]


def innermost_named(stack):
    for frame in stack:
        if not any(g in frame for g in GENERIC):
            return frame
    return stack[0] if stack else ""


def category(stack):
    inner = innermost_named(stack)
    joined = " | ".join(stack)
    if "Trainer::save" in joined or "write_checkpoint" in joined:
        return "checkpoint writes"
    # A training forward may run through an `evaluate` module's batch code (the
    # classifier's does): only a stack without a training forward is a validation pass.
    training = "forward_train" in joined or "backward" in joined or "AdamW" in joined
    if ("::evaluate" in joined or "evaluate_batches" in joined) and not training:
        return "validation passes"
    for name, needles in BY_FRAME:
        if any(n in inner for n in needles):
            return name
    if any(n in inner for n in ["num_cpus", "show_cpuinfo", "vsnprintf", "format_decode",
                                "memchr", "seq_read", "get_num_physical"]):
        return "thread count read from /proc/cpuinfo per matmul"
    if "__rust_begin_short_backtrace" in inner:
        # Nothing but the thread's entry is named: a parallel kernel loop inlined into a
        # rayon task (GELU, LayerNorm, dropout, the AdamW update, attention rows).
        return "fused kernels (inlined pool tasks)"
    if any(n in inner for n in ELEMENTWISE):
        if "backprop" in joined and ("Tensor::add" in joined or "or_insert" in joined):
            return "autograd: gradient accumulation"
        return "other element-wise (candle ops)"
    if "backprop" in inner or "GradStore" in inner or "sorted_nodes" in inner:
        return "autograd: graph walk"
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script_output")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    samples = read_samples(args.script_output)
    marks = [t for t, stack in samples
             if any("forward_train" in f or "AdamW::step" in f for f in stack)]
    if not marks:
        raise SystemExit("no training step in this profile")
    start, end = min(marks), max(marks)
    window = [stack for t, stack in samples if start <= t <= end]
    counts = collections.Counter(category(stack) for stack in window)
    total = sum(counts.values())
    table = {name: round(100 * n / total, 1) for name, n in counts.most_common()}
    if args.json:
        print(json.dumps({"window_s": round(end - start, 2), "samples": total, "percent": table}))
        return
    print(f"training window {end - start:.1f} s, {total} samples")
    for name, share in table.items():
        print(f"{share:5.1f} %  {name}")


if __name__ == "__main__":
    main()
