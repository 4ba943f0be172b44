"""Would Dense layers train faster than 1x1 Conv2D layers for CMT's pointwise projections on TensorFlow's CPU?

    python -m benchmarks.pointwise_forms [--rounds 15] [--output benchmarks/results/pointwise_forms_<date>.json]

The IRFFN's pair (1x1 expansion to `int(C * 3.6)`, exact GELU, 1x1 projection back to C) at CMT-Ti@160's four stage
shapes, batch 32, as two Keras models with the same weights: Conv2D(k=1) layers and Dense layers. One training-step
gradient (forward + backward, `tf.GradientTape` in a `tf.function`) per call; the two forms alternate call by call
after 3 warm-up calls each, 2 threads; the median of `--rounds` calls each. Prints a table and saves JSON.
"""

import argparse
import statistics
import sys
import time

STAGES = [(40, 46), (20, 92), (10, 184), (5, 368)]  # CMT-Ti@160: (resolution, channels) per stage
BATCH = 32


def pair(kind, channels):
    import keras

    hidden = int(channels * 3.6)
    inputs = keras.Input((None, None, channels))
    layer = (lambda units: keras.layers.Conv2D(units, 1)) if kind == "conv" else keras.layers.Dense
    x = keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=False))(layer(hidden)(inputs))
    return keras.Model(inputs, layer(channels)(x))


def gradient_step(model):
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x)))
        return tape.gradient(loss, model.trainable_weights)

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", default=f"benchmarks/results/pointwise_forms_{time.strftime('%Y-%m-%d')}.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import numpy as np
    import tensorflow as tf

    from benchmarks.training_backends import load_atomic_files, machine_description

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for size, channels in STAGES:
        conv, dense = pair("conv", channels), pair("dense", channels)
        for c, d in zip(conv.weights, dense.weights):  # same numbers; non-zero biases as trained weights have
            value = rng.normal(0, 0.05, d.shape).astype("float32")
            d.assign(value)
            c.assign(value.reshape(c.shape))
        x = tf.constant(rng.normal(size=(BATCH, size, size, channels)).astype("float32"))
        steps = {"conv": gradient_step(conv), "dense": gradient_step(dense)}
        for step in steps.values():
            for _ in range(3):
                [g.numpy() for g in step(x)]
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                [g.numpy() for g in step(x)]
                times[name].append((time.perf_counter() - start) * 1e3)
        row = {
            "shape": [BATCH, size, size, channels],
            "hidden": int(channels * 3.6),
            "conv_ms": statistics.median(times["conv"]),
            "dense_ms": statistics.median(times["dense"]),
            "times_ms": times,
        }
        row["dense_over_conv"] = row["dense_ms"] / row["conv_ms"]
        rows.append(row)
    print("\n| input | Conv2D 1x1 pair, ms | Dense pair, ms | Dense / Conv2D |\n| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {tuple(r['shape'])} -> {r['hidden']} | {r['conv_ms']:.1f} | {r['dense_ms']:.1f} | "
            f"{r['dense_over_conv']:.2f} |"
        )
    report = {
        "benchmark": "pointwise_forms",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rounds": args.rounds,
        "machine": machine_description(),
        "rows": rows,
    }
    load_atomic_files().write_json(args.output, report)
    print(f"\nsaved {args.output}")
    return report


if __name__ == "__main__":
    main()
