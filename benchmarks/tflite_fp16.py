"""What fp16 inference costs a `--quantize float16` file in accuracy, and what it does to latency on this CPU.

    python -m benchmarks.tflite_fp16 [--variant cmt_ti] [--weights ../shared/fixtures/cmt_ti_seed0.pth]
        [--io ../shared/fixtures/cmt_ti_seed0_io.npz] [--threads 2] [--runs 30]
        [--output benchmarks/results/tflite_fp16_<variant>_<date>.json]

A phone with ARMv8.2 FP16 arithmetic runs a float16 file marked "fp16accfp16" in fp16 (XNNPACK's fp16 path); this
x86 CPU has no native fp16, so the marker does nothing here and LiteRT's `CompiledModel` with XNNPACK's FORCE_FP16
flag is the way to run the same fp16 graph (emulated: fp32 arithmetic, every result rounded to fp16). Four rows,
one Keras model converted twice (logits out, normalised input):

| row | file | runtime |
| --- | --- | --- |
| fp32 | `none` | LiteRT `Interpreter` (XNNPACK) |
| float16 weights | `float16` | LiteRT `Interpreter` (weights dequantized to fp32 at load: fp32 arithmetic) |
| float16, CompiledModel | `float16` | `CompiledModel`, CPU accelerator, default flags |
| float16, fp16 forced | `float16` | `CompiledModel` with FORCE_FP16: the fp16 graph a phone runs |

Error: the largest absolute logit difference from the official logits of `--io` (the shared fixture; Keras's own
logits when `--io` is not given), also relative to the largest logit, and top-1 agreement. Latency: median wall ms
per batch-1 invoke, every runtime invoked in turn in one process (`--runs` rounds after 5 warm-up rounds), so a
busy machine slows all alike; the fp16-forced row's latency is an x86 emulation and says nothing about phones.
Without `--weights`, the model gets trained-like random weights (`benchmarks.trained_like_weights`).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

from benchmarks import variant_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--variant", default="cmt_ti", choices=list(variant_table()))
    parser.add_argument(
        "--weights",
        default=None,
        help="official .pth or .weights.h5 (default: the CMT-Ti "
        "fixture for cmt_ti, trained-like random weights otherwise)",
    )
    parser.add_argument("--io", default=None, help="fixture .npz with input_nhwc and official logits")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.variant == "cmt_ti" and args.weights is None and args.io is None:
        args.weights = os.path.join(FIXTURES, "cmt_ti_seed0.pth")
        args.io = os.path.join(FIXTURES, "cmt_ti_seed0_io.npz")
    for flag in ("weights", "io"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag}: no such file: {path}")
    args.output = args.output or f"benchmarks/results/tflite_fp16_{args.variant}_{time.strftime('%Y-%m-%d')}.json"
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import keras

    import keras_cmt
    from benchmarks.training_backends import load_atomic_files, machine_description
    from keras_cmt.tflite import convert
    from keras_cmt.tflite.runner import CompiledModelRunner, LiteRTModel, fp16_rounded

    kwargs = {"input_shape": (args.image_size, args.image_size, 3)} if args.image_size else {}
    model = keras_cmt.build_model(args.variant, weights=args.weights, classifier_activation=None, **kwargs)
    if args.weights is None:
        from benchmarks.trained_like_weights import randomize_like_trained

        randomize_like_trained(model, seed=0)
    size = model.input_shape[1]
    if args.io:
        io = np.load(args.io)
        x, reference, reference_name = io["input_nhwc"].astype(np.float32), io["logits"], "official logits"
    else:
        x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
        reference, reference_name = None, "Keras logits"
    keras_logits = model.predict(x, verbose=0)
    reference = keras_logits if reference is None else reference
    files = {
        mode: convert.convert(model, quantize=mode, input_range="normalized", with_metadata=False)
        for mode in ("none", "float16")
    }
    runners = {
        "fp32": LiteRTModel(files["none"], num_threads=args.threads),
        "float16 weights": LiteRTModel(files["float16"], num_threads=args.threads),
        "float16, CompiledModel": CompiledModelRunner(files["float16"], num_threads=args.threads),
        "float16, fp16 forced": CompiledModelRunner(files["float16"], num_threads=args.threads, force_fp16=True),
    }
    rows = []
    for name, runner in runners.items():
        logits = runner.predict(x)
        error = float(np.abs(logits - reference).max())
        rows.append(
            {
                "row": name,
                "max_abs_error": error,
                "relative_error": error / float(np.abs(reference).max()),
                "max_abs_diff_vs_keras": float(np.abs(logits - keras_logits).max()),
                "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
                "fp16_rounded_output": fp16_rounded(logits),
                "times_ms": [],
            }
        )
    one = x[:1]
    for _ in range(5):
        for runner in runners.values():
            runner.invoke_raw(one)
    for _ in range(args.runs):
        for row, runner in zip(rows, runners.values()):
            start = time.perf_counter()
            runner.invoke_raw(one)
            row["times_ms"].append((time.perf_counter() - start) * 1e3)
    for row in rows:
        row["median_ms"] = statistics.median(row["times_ms"])
        row["ratio_to_fp32"] = row["median_ms"] / rows[0]["median_ms"]
    report = {
        "benchmark": "tflite_fp16",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "variant": args.variant,
        "image_size": size,
        "weights": args.weights or "trained-like random",
        "reference": reference_name,
        "images": int(len(x)),
        "threads": args.threads,
        "runs": args.runs,
        "keras": keras.__version__,
        "file_mb": {mode: len(data) / 1e6 for mode, data in files.items()},
        "machine": machine_description(),
        "rows": rows,
    }
    print(
        f"\n{args.variant}@{size}, {len(x)} images, errors against the {reference_name}; batch 1, "
        f"{args.threads} threads, median of {args.runs} interleaved runs\n"
    )
    print("| row | max abs error | relative | top-1 agreement | fp16 outputs | median ms | ratio to fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['row']} | {row['max_abs_error']:.2e} | {row['relative_error']:.2e} | "
            f"{row['top1_agreement']:.2f} | {'yes' if row['fp16_rounded_output'] else 'no'} | "
            f"{row['median_ms']:.2f} | {row['ratio_to_fp32']:.2f} |"
        )
    load_atomic_files().write_json(args.output, report)
    print(f"\nsaved {args.output}")
    return report


if __name__ == "__main__":
    main()
