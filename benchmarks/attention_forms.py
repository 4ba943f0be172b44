"""The serving form's two attention forms side by side: query-side (the official order) against key-side.

    python -m benchmarks.attention_forms [--variant cmt_s] [--threads 2] [--runs 30] [--rounds 3] [--output PATH]

`keras_cmt.fuse_for_inference` moves the query and output projections onto the keys and values where that saves
multiply-adds (`key_side_projections=True`, the default). This benchmark is what keeps that second form: the same
trained-like model (`benchmarks.trained_like_weights`) fused both ways, batch 1, timed in the runtimes users serve it
with, interleaved round by round: TensorFlow (Keras `predict_on_batch`), LiteRT/XNNPACK (the converter's fp32
file) and onnxruntime (Keras' ONNX export, `keras_cmt.tflite.export`). Prints a table of medians and ratios (key-side
over query-side) and writes them as JSON.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import variant_table

FORMS = {"query_side": False, "key_side": True}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="cmt_s", choices=list(variant_table()))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per form, runtime and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtimes", nargs="+", default=["tensorflow", "litert", "onnxruntime"])
    parser.add_argument("--output", default=f"benchmarks/results/attention_forms_{time.strftime('%Y-%m-%d')}.json")
    return parser.parse_args(argv)


def _median_ms(call, x, runs):
    call(x)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _callers(model, key_side, runtimes, threads, folder, name):
    """One batch-1 callable per runtime (input already normalised) for `model` fused with the form, as each
    runtime's exporter fuses it (TFLite's per-head products as grouped convolutions)."""
    import keras_cmt

    from keras_cmt.tflite import convert, export
    from keras_cmt.tflite.runner import LiteRTModel

    calls = {}
    fused = keras_cmt.fuse_for_inference(model, key_side_projections=key_side)
    if "tensorflow" in runtimes:
        calls["tensorflow"] = fused.predict_on_batch
    if "litert" in runtimes:
        for_tflite = keras_cmt.fuse_for_inference(model, key_side_projections=key_side, head_projections="conv")
        data = convert.convert(for_tflite, input_range="normalized", with_metadata=False, fuse=False)
        runner = LiteRTModel(data, num_threads=threads)
        calls["litert"] = runner.invoke_raw
    if "onnxruntime" in runtimes:
        import onnxruntime as ort

        path = os.path.join(folder, f"{name}.onnx")
        export.export(fused, path, "onnx", input_range="normalized", fuse=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        calls["onnxruntime"] = lambda x: session.run(None, {input_name: x})
    return calls


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_cmt
    from benchmarks.training_backends import load_atomic_files, machine_description
    from benchmarks.trained_like_weights import randomize_like_trained

    model = randomize_like_trained(keras_cmt.build_model(args.variant, classifier_activation=None), seed=0)
    size = model.input_shape[1]
    x = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    reference = np.asarray(model.predict_on_batch(x))
    callers = {}
    with tempfile.TemporaryDirectory() as folder:
        for form, key_side in FORMS.items():
            fused = keras_cmt.fuse_for_inference(model, key_side_projections=key_side)
            error = float(np.abs(np.asarray(fused.predict_on_batch(x)) - reference).max())
            print(f"{form}: max abs error {error:.2g} from the training form, {keras_cmt.count_macs(fused):,} MACs")
            callers[form] = _callers(model, key_side, args.runtimes, args.threads, folder, form)
        times = {(form, rt): [] for form in FORMS for rt in args.runtimes}
        for _ in range(args.rounds):  # interleaved: each round times every runtime and form once
            for runtime in args.runtimes:
                for form in FORMS:
                    times[form, runtime].append(_median_ms(callers[form][runtime], x, args.runs))
    rows = []
    print(f"\n{args.variant}@{size}, batch 1, {args.threads} threads, median of {args.rounds} round medians (ms)\n")
    print("| runtime | query-side | key-side | key-side / query-side |\n| --- | --- | --- | --- |")
    for runtime in args.runtimes:
        q, k = (statistics.median(times[form, runtime]) for form in FORMS)
        rounds = {form: times[form, runtime] for form in FORMS}
        rows.append({"runtime": runtime, "query_side_ms": q, "key_side_ms": k, "ratio": k / q, "rounds": rounds})
        print(f"| {runtime} | {q:.2f} | {k:.2f} | {k / q:.3f}x |")
    report = {
        "variant": args.variant,
        "image_size": size,
        "threads": args.threads,
        "runs": args.runs,
        "machine": machine_description(),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    load_atomic_files().write_json(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
