"""Keras inference latency per CMT variant on TensorFlow: the baseline the performance work improves.

    python -m benchmarks.keras_latency [--variants cmt_ti cmt_s] [--batch_sizes 1 32] [--threads 2]
                                       [--forms training fused] [--repeats 20]
                                       [--output benchmarks/results/keras_latency.json]

Weights are random with non-zero biases and BatchNorm statistics (`benchmarks.trained_like_weights`): an
initialised model's zero biases let Grappler drop ops that trained weights keep. Times a compiled graph
(`tf.function` around `model(x, training=False)`), the form `model.predict` runs per batch, after warm-up, for
the model as built ("training" form), for `keras_cmt.fuse_for_inference(model)` ("fused") and for the fused
model with every attention in the query-side form ("fused_query_side", what "fused" was before the key-side
form), interleaving them so that load on a shared machine hits all alike. Reports the median and the interquartile
range: these machines are shared and noisy, so medians are what to compare, and only within one run.
"""

import argparse
import os
import platform
import statistics
import sys
import time

from keras_cmt.variants import VARIANTS


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs at batch 1 (fewer at large batches)")
    parser.add_argument("--jit_compile", action="store_true", help="compile with XLA")
    parser.add_argument("--forms", nargs="+", default=["training", "fused"], choices=FORMS)
    parser.add_argument("--output", default="benchmarks/results/keras_latency.json")
    return parser.parse_args(argv)


FORMS = ("training", "fused", "fused_query_side")


def _build_form(model, form):
    import keras_cmt

    if form == "training":
        return model
    return keras_cmt.fuse_for_inference(model, key_side_projections=form == "fused")


def _time_interleaved(fns, x, warmup, repeats):
    for fn in fns.values():
        for _ in range(warmup):
            fn(x).numpy()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x).numpy()
            times[name].append(time.perf_counter() - start)
    return times


def _peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    rows = []
    for name in args.variants:
        variant = keras_cmt.get_variant(name)
        model = randomize_like_trained(keras_cmt.build_model(variant.name))
        fns = {
            form: tf.function(lambda x, m=_build_form(model, form): m(x, training=False), jit_compile=args.jit_compile)
            for form in args.forms
        }
        size = variant.default_size
        for batch in args.batch_sizes:
            x = tf.random.normal((batch, size, size, 3), seed=0)
            repeats = max(5, args.repeats // max(1, batch // 8))
            for form, times in _time_interleaved(fns, x, args.warmup, repeats).items():
                q = statistics.quantiles(times, n=4)
                median = statistics.median(times)
                rows.append(
                    {
                        "variant": variant.name,
                        "form": form,
                        "input": size,
                        "batch": batch,
                        "median_ms": median * 1e3,
                        "iqr_ms": (q[2] - q[0]) * 1e3,
                        "images_per_s": batch / median,
                        "repeats": repeats,
                        "peak_rss_mib": _peak_rss_mib(),
                    }
                )
                print(
                    f"{variant.name:7s} {form:16s} {size:4d} batch {batch:3d}: median {median * 1e3:9.1f} ms "
                    f"(IQR {(q[2] - q[0]) * 1e3:6.1f} ms, {batch / median:7.1f} img/s)",
                    flush=True,
                )
        del model, fns
        keras.backend.clear_session()

    print("\n| variant | form | input | batch | median latency (ms) | IQR (ms) | images/s | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['form']} | {r['input']} | {r['batch']} | {r['median_ms']:.1f} | "
            f"{r['iqr_ms']:.1f} | {r['images_per_s']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    result = {
        "benchmark": "keras_latency",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "threads": args.threads,
        "jit_compile": args.jit_compile,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "rows": rows,
    }
    from keras_cmt import atomic_files

    atomic_files.write_json(args.output, result)
    print(f"\nsaved {args.output}")
    return result


def main(argv=None):
    run(_parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
