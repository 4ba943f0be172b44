"""The main job, offline: train CMT-Ti on the bundled digits, convert it to TFLite, report.

    python -m keras_cmt.training.demo [--model_dir runs/demo] [--seed 0] [--epochs 10] [--overwrite] [--verbose]

1. `python -m keras_cmt.training.train --model=cmt_ti --dataset=digits ...`, run in this process (scikit-learn's 8x8
   handwritten digits, real images shipped with the package, upsampled to 64x64; a stratified 20% held out for
   validation, never trained on). A finished run in `--model_dir` with the same settings is reused, an interrupted
   one resumes from its last completed epoch; `--overwrite` trains again.
2. `keras_cmt.tflite.convert`: the trained `model.keras` to an fp32 file, a `dynamic` one (int8 convolution weights,
   the fastest on CPUs) and a full-int8-where-XNNPACK-can one (calibrated on training digits, by the converter's
   command in a second process meanwhile: started with the job, it has imported TensorFlow while training began),
   each with Android metadata and the digit labels.
3. Validation accuracy of the files with LiteRT, agreement with fp32, XNNPACK delegation, and latency measured side
   by side (the three files in turn, in this process).

Prints a line per stage and a table, and writes `report.json` (atomically) beside the files. Library log lines and
warnings are hidden unless `--verbose`.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from keras_cmt import quiet
from keras_cmt.training import presets

# keras_cmt.tflite.convert's --quantize modes the demo converts to, and the name each file and table row gets.
MODES = {"none": "fp32", "dynamic": "dynamic", "int8": "int8"}
# Training digits the int8 file is calibrated on: TFLite's calibrator runs them one at a time without XNNPACK
# (38 ms each for CMT-Ti@64 on 2 cores); 100 cover the ten classes' ranges as 200 did, in half the time.
CALIBRATION_IMAGES = 100
# The small-data preset's schedule, which the README's figures were measured with (keras_cmt.training.benchmark_digits).
DEFAULTS = {
    "epochs": presets.SMALL_DATA_PRESET.epochs,
    "image_size": presets.SMALL_DATA_PRESET.image_size,
    "batch_size": presets.SMALL_DATA_PRESET.batch_size,
}


class DemoError(RuntimeError):
    """A failed stage; one line."""


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m keras_cmt.training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--image_size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--batch_size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initialisation, shuffling and augmentation (the validation split stays the same)",
    )
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for the latency figures")
    parser.add_argument("--overwrite", action="store_true", help="train again even if model_dir holds a run")
    quiet.add_verbose_argument(parser)
    return parser.parse_args(argv)


def _finished_run(args):
    """results.json of a finished run with the demo's settings, None when there is none; DemoError when the
    folder holds a finished run with other settings."""
    path = os.path.join(args.model_dir, "results.json")
    if args.overwrite or not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    wanted = {
        "epochs": args.epochs,
        "image_size": args.image_size,
        "global_batch_size": args.batch_size,
        "seed": args.seed,
        "model": "cmt_ti",
        "dataset": "digits",
    }
    differs = {k: results.get(k) for k, v in wanted.items() if results.get(k) != v}
    if differs:
        raise DemoError(
            f"--model_dir={args.model_dir} holds a finished run with other settings "
            f"({', '.join(f'{k}={v}' for k, v in differs.items())}); use another --model_dir or "
            "--overwrite"
        )
    return results


def _train(args):
    finished = _finished_run(args)
    if finished is not None:
        print(f"[1/3] reusing the finished run in {args.model_dir} (--overwrite to train again)", flush=True)
        return finished
    print(
        f"[1/3] training cmt_ti on digits at {args.image_size}x{args.image_size} for {args.epochs} epochs, "
        f"seed {args.seed}",
        flush=True,
    )
    argv = [
        "keras_cmt.training.train",
        "--model=cmt_ti",
        "--dataset=digits",
        f"--image_size={args.image_size}",
        f"--epochs={args.epochs}",
        f"--batch_size={args.batch_size}",
        f"--seed={args.seed}",
        f"--model_dir={args.model_dir}",
        "--progress=epoch",
    ]
    argv += ["--overwrite"] if args.overwrite else []
    argv += ["--verbose"] if args.verbose else []
    results = _run_training(argv)
    # The traced training step's objects stay alive with this process; frozen, the conversion's garbage
    # collections no longer walk them.
    gc.freeze()
    return results


def _run_training(argv):
    """`python -m keras_cmt.training.train ARGV`, in this process: TensorFlow is imported once for the whole job.
    Its results dict; DemoError when it failed (its one-line error already printed)."""
    import logging as python_logging

    from absl import flags, logging

    from keras_cmt.training import flags as training_flags
    from keras_cmt.training import train

    absl_level = python_logging.getLogger("absl").level  # parsing absl's flags sets it from --verbosity
    training_flags.define_flags()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(argv)
    except flags.Error as e:  # a value the training command's validators refuse, e.g. --epochs 0
        raise DemoError(str(e)) from None
    logging.set_verbosity(logging.WARNING if quiet.is_quiet() else logging.INFO)  # as the training command's
    try:
        return train.run()
    except SystemExit as e:
        raise DemoError(f"training failed (exit status {e.code}); its error is above") from None
    finally:
        python_logging.getLogger("absl").setLevel(absl_level)  # the converter's absl warnings stay hidden


def _tflite_paths(args):
    return {mode: os.path.join(args.model_dir, f"cmt_ti_digits_{name}.tflite") for mode, name in MODES.items()}


def _convert(args, labels, int8):
    """The three files; `int8` the waiting `_Int8Conversion`, told to go unless the files are reused."""
    import keras

    from keras_cmt.tflite import convert

    keras_path = os.path.join(args.model_dir, "model.keras")
    paths = _tflite_paths(args)
    # A reused run whose files were converted from this very model.keras (written atomically, after it) keeps them.
    if all(os.path.isfile(p) and os.path.getmtime(p) >= os.path.getmtime(keras_path) for p in paths.values()):
        print(f"[2/3] reusing the TFLite files converted from {keras_path}", flush=True)
        return paths
    # The int8 file's calibration runs TFLite's interpreter one image at a time on one core: the converter's own
    # command writes it in a second process while this one writes the float files on the other.
    print(f"[2/3] converting {keras_path} to {MODES['int8']} in a second process: {paths['int8']}", flush=True)
    int8.go()
    model = keras.saving.load_model(keras_path, compile=False)
    for mode in ("none", "dynamic"):
        print(f"[2/3] converting {keras_path} to {MODES[mode]}: {paths[mode]}", flush=True)
        convert.convert(model, paths[mode], quantize=mode, labels=labels)
    status = int8.wait()
    if status != 0:
        raise DemoError(f"converting {keras_path} to int8 failed: {int8.error_line(status)}")
    return paths


class _Int8Conversion:
    """`python -m keras_cmt.tflite.convert --quantize int8 ...` (its labels, '0' to '9', are its default for ten
    classes) in a second process, as a context manager around the job. Started before training, it imports
    TensorFlow and the converter (about 5 s on one core, while this process imports and traces on the other) and
    waits with `--wait_for_go`: `go()` lets it convert `model.keras`; leaving the context without `go()` stops it,
    having written nothing (it also exits by itself when this process dies, as its stdin closes). Its stderr goes
    to a file (a pipe nobody reads while this process converts could fill and block it), or to the screen with
    --verbose."""

    def __init__(self, args):
        command = [
            sys.executable,
            "-m",
            "keras_cmt.tflite.convert",
            f"--model={os.path.join(args.model_dir, 'model.keras')}",
            "--quantize=int8",
            "--representative_data=digits",
            f"--num_calibration_images={CALIBRATION_IMAGES}",
            f"--output={_tflite_paths(args)['int8']}",
            "--wait_for_go",
        ]
        self.stderr = None if args.verbose else tempfile.TemporaryFile(mode="w+")
        command += ["--verbose"] if args.verbose else []
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr, text=True
        )
        self.told = False

    def go(self):
        self.told = True
        try:
            self.process.stdin.write("go\n")
            self.process.stdin.close()
        except BrokenPipeError:  # it has already exited: wait() gives its status and error_line() its error
            pass

    def wait(self):
        return self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        """Never left running: told nothing, it is stopped (it has written nothing; a failed training's error is
        not held up by its imports); told to go, it finishes (its file is written atomically)."""
        if not self.told:
            self.process.terminate()
            self.process.stdin.close()  # nothing was written to it
        self.process.wait()

    def error_line(self, status):
        if self.stderr is None:
            return f"exit status {status}; its error is above"
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        return lines[-1] if lines else f"exit status {status}"


def _measure(args, tflite_files):
    from keras_cmt.tflite import benchmark, evaluate

    print(f"[3/3] evaluating the TFLite files with LiteRT ({args.threads} threads)", flush=True)
    paths = [tflite_files[mode] for mode in MODES]
    accuracy = evaluate.evaluate(paths, "digits", reference=tflite_files["none"], threads=args.threads)
    speed = benchmark.measure_interleaved(paths, args.threads, runs=50, warmup=5)
    rows = []
    for mode, entry, timing in zip(MODES, accuracy["models"], speed):
        rows.append(
            {
                "format": MODES[mode],
                "file": tflite_files[mode],
                "file_mb": round(timing["file_mb"], 2),
                "val_accuracy": entry["accuracy"],
                "top1_agreement_with_fp32": entry.get("top1_agreement_with_reference"),
                "median_ms": round(timing["median_ms"], 2),
                "ratio_to_fp32": round(timing["ratio_to_first"], 3),
                "xnnpack_partitions": timing["xnnpack_partitions"],
                "nodes_on_default_kernels": timing["nodes_on_default_kernels"],
            }
        )
    return rows


def _print_report(args, trained, rows, report_path):
    print(
        f"\nCMT-Ti on digits at {args.image_size}x{args.image_size}, seed {args.seed}: Keras val top-1 "
        f"{trained['val_accuracy'] * 100:.2f}% after {trained['epochs']} epochs "
        f"({trained['wall_time_s'] / 60:.1f} min of training)"
    )
    print(
        f"| format | file (MB) | val top-1 | agreement with fp32 | median latency, {args.threads} threads (ms) | "
        "XNNPACK partitions | nodes left to default kernels |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        agreement = "-" if r["format"] == "fp32" else f"{r['top1_agreement_with_fp32'] * 100:.1f}%"
        print(
            f"| {r['format']} | {r['file_mb']} | {r['val_accuracy'] * 100:.2f}% | {agreement} | "
            f"{r['median_ms']} | {r['xnnpack_partitions']} | {r['nodes_on_default_kernels']} |"
        )
    print(f"\nfiles: {', '.join(r['file'] for r in rows)}")
    print(f"report: {report_path}; training curves: {os.path.join(args.model_dir, 'curves.png')}")


def run(args):
    from keras_cmt import atomic_files

    start = time.time()
    # The int8 conversion's process starts now, so that its imports overlap training's.
    with _Int8Conversion(args) as int8:
        trained = _train(args)
        trained_s = time.time() - start
        tflite_files = _convert(args, [str(i) for i in range(10)], int8)
    converted_s = time.time() - start - trained_s
    rows = _measure(args, tflite_files)
    report = {
        "keras": {
            "val_accuracy": trained["val_accuracy"],
            "val_top5": trained["val_top5"],
            "epochs": trained["epochs"],
            "seed": args.seed,
            "train_wall_time_s": trained["wall_time_s"],
        },
        "tflite": rows,
        "threads": args.threads,
        "stage_wall_time_s": {
            "train": round(trained_s, 1),
            "convert": round(converted_s, 1),
            "evaluate": round(time.time() - start - trained_s - converted_s, 1),
        },
        "total_wall_time_s": round(time.time() - start, 1),
    }
    path = os.path.join(args.model_dir, "report.json")
    atomic_files.write_json(path, report)
    _print_report(args, trained, rows, path)
    return report


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except DemoError as e:
        sys.stderr.write(f"keras_cmt.training.demo: error: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"\ninterrupted: run the same command again to resume the training in {args.model_dir} "
            "after its last completed epoch\n"
        )
        sys.exit(130)
    gc.freeze()  # the report is written: exit without a last collection of TensorFlow's objects (as train.py)


if __name__ == "__main__":
    main()
