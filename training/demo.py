"""The main job, offline: train CMT-Ti on the bundled digits, convert it to TFLite, report.

    python -m keras_cmt.training.demo [--model_dir runs/demo] [--epochs 15] [--image_size 64] [--batch_size 64]
                            [--overwrite]

1. `python -m keras_cmt.training.train --model=cmt_ti --dataset=digits ...` (scikit-learn's 8x8 handwritten digits, real
   images shipped with the package, upsampled; a stratified 20% held out for validation). A finished run in
   `--model_dir` is reused unless `--overwrite`; an interrupted one resumes from its backup.
2. `keras_cmt.tflite.convert`: the trained `model.keras` to an fp32 file, a `dynamic` one (int8 convolution weights, the
   fastest on CPUs) and a full-int8-where-XNNPACK-can one (calibrated on the training digits), each with Android
   metadata and the digit labels.
3. Validation accuracy of the files with LiteRT, agreement with fp32, XNNPACK delegation and latency.

Prints a table and writes `report.json` in the model folder (atomically).
"""

import argparse
import json
import os
import subprocess
import sys
import time

# keras_cmt.tflite.convert's --quantize modes the demo converts to, and the name each file and table row gets.
MODES = {"none": "fp32", "dynamic": "dynamic", "int8": "int8"}


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m keras_cmt.training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for the latency figures")
    parser.add_argument("--overwrite", action="store_true", help="train again even if model_dir holds a run")
    return parser.parse_args(argv)


def _train(args):
    results_path = os.path.join(args.model_dir, "results.json")
    if os.path.exists(results_path) and not args.overwrite:
        print(f"[1/3] reusing the finished run in {args.model_dir} (--overwrite to train again)", flush=True)
    else:
        print(f"[1/3] training cmt_ti on digits for {args.epochs} epochs -> {args.model_dir}", flush=True)
        cmd = [sys.executable, "-m", "keras_cmt.training.train", "--model=cmt_ti", "--dataset=digits",
               f"--image_size={args.image_size}", f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
               f"--model_dir={args.model_dir}", "--verbose=2"] + (["--overwrite"] if args.overwrite else [])
        subprocess.run(cmd, check=True)
    with open(results_path) as f:
        return json.load(f)


def _convert(args, labels):
    from keras_cmt.tflite import convert

    keras_path = os.path.join(args.model_dir, "model.keras")
    outputs = {}
    for mode in MODES:
        path = os.path.join(args.model_dir, f"cmt_ti_digits_{MODES[mode]}.tflite")
        print(f"[2/3] converting {keras_path} -> {path}", flush=True)
        convert.convert(keras_path, path, quantize=mode, labels=labels,
                        representative_data="digits" if mode == "int8" else None)
        outputs[mode] = path
    return outputs


def run(args):
    from keras_cmt.tflite import benchmark, evaluate
    from keras_cmt import atomic_files

    os.makedirs(args.model_dir, exist_ok=True)
    start = time.time()
    trained = _train(args)
    tflite_files = _convert(args, [str(i) for i in range(10)])
    print("[3/3] evaluating the TFLite files with LiteRT", flush=True)
    accuracy = evaluate.evaluate([tflite_files[mode] for mode in MODES], "digits",
                                 reference=tflite_files["none"], threads=args.threads)
    rows = []
    for mode, entry in zip(MODES, accuracy["models"]):
        path = tflite_files[mode]
        speed = benchmark.run(path, args.threads, runs=30, warmup=5)
        rows.append({
            "format": MODES[mode], "file": path,
            "file_mb": round(speed["file_mb"], 2), "val_accuracy": entry["accuracy"],
            "top1_agreement_with_fp32": entry.get("top1_agreement_with_reference"),
            "median_ms": round(speed["median_ms"], 2), "xnnpack_partitions": speed["xnnpack_partitions"],
            "nodes_on_default_kernels": speed["nodes_on_default_kernels"],
        })
    report = {
        "keras": {"val_accuracy": trained["val_accuracy"], "val_top5": trained["val_top5"],
                  "epochs": trained["epochs"], "train_wall_time_s": trained["wall_time_s"]},
        "tflite": rows, "threads": args.threads, "total_wall_time_s": round(time.time() - start, 1),
    }
    print(f"\nCMT-Ti on digits at {args.image_size}x{args.image_size}: Keras val top-1 "
          f"{trained['val_accuracy'] * 100:.2f}% after {trained['epochs']} epochs "
          f"({trained['wall_time_s'] / 60:.1f} min of training)")
    print("| format | file (MB) | val top-1 | agreement with fp32 | median latency, "
          f"{args.threads} threads (ms) | XNNPACK partitions | nodes left to default kernels |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        agreement = "-" if r["format"] == "fp32" else f"{r['top1_agreement_with_fp32'] * 100:.1f}%"
        print(f"| {r['format']} | {r['file_mb']} | {r['val_accuracy'] * 100:.2f}% | {agreement} | "
              f"{r['median_ms']} | {r['xnnpack_partitions']} | {r['nodes_on_default_kernels']} |")
    path = os.path.join(args.model_dir, "report.json")
    atomic_files.write_json(path, report)
    print(f"\nwrote {path}")
    return report


def main(argv=None):
    run(_parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
