"""Where the time goes: per-op-type profile of a CMT forward pass on TensorFlow (CPU).

    python -m benchmarks.op_profile [--variant cmt_ti] [--batch 1] [--threads 2] [--runs 5]
                                    [--form training|fused|train_step] [--image_size N]
                                    [--output benchmarks/results/op_profile_cmt_ti_b1.json]

Runs the model's inference graph (variables frozen to constants, as a deployed graph has them, so Grappler folds
BatchNorm into the convolutions) in a TF1 session with full tracing and sums the kernel times per op type over
several runs, with weights from `benchmarks.trained_like_weights` (non-zero biases, as trained weights have): the
table to read before changing an op form, and again after. Kernel times are wall-clock: on a loaded machine they
all stretch, so read the shares. `--form fused` profiles `keras_cmt.fuse_for_inference(model)`; `--form train_step`
the forward and backward pass of one training step (BatchNorm on batch statistics through `model.stateless_call`,
cross-entropy against fixed random labels, the gradients of every trainable weight; no optimizer update), the
part of `model.fit`'s step that the model itself decides.
"""

import argparse
import collections
import sys


def trace_kernels(fn, spec, threads=2, runs=1, warmup=2):
    """Runs `fn` (a tensor -> tensor function of `spec`) as a frozen graph in a traced TF1 session.

    Returns (microseconds per kernel type summed over `runs`, kernel launches per run by type, traced wall time of
    each run in microseconds). The kernel types are those that ran after Grappler and the oneDNN rewrites.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(tf.function(fn).get_concrete_function(spec))
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(frozen.graph.as_graph_def(), name="")
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    outputs = [t.name for t in frozen.outputs]
    feed = {frozen.inputs[0].name: tf.random.normal(spec.shape, seed=0).numpy()}
    times, counts, wall = collections.Counter(), collections.Counter(), []
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        for _ in range(warmup):
            sess.run(outputs, feed)
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            meta = tf.compat.v1.RunMetadata()
            sess.run(outputs, feed, options=options, run_metadata=meta)
            start, end = float("inf"), 0
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    # The kernel that ran, from the trace label "name = Op(inputs)": Grappler rewrites nodes
                    # (a BatchNorm Mul folded into its Conv2D keeps the Mul's name), so the graph's op is not it.
                    label = node.timeline_label
                    op = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label else node.node_name
                    times[op] += node.op_end_rel_micros - node.op_start_rel_micros
                    counts[op] += 1
                    start = min(start, node.all_start_micros)
                    end = max(end, node.all_start_micros + node.all_end_rel_micros)
            wall.append(end - start)
    return times, collections.Counter({op: n // runs for op, n in counts.items()}), wall


def train_step_gradients(model, batch, num_classes=1000):
    """x -> the gradients of a cross-entropy loss w.r.t. every trainable weight, and the new BatchNorm statistics,
    computed statelessly (so that the graph can be frozen)."""
    import numpy as np
    import tensorflow as tf
    import keras

    labels = tf.constant(np.random.default_rng(0).integers(0, num_classes, batch))

    def gradients(x):
        trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
        non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            logits, new_statistics = model.stateless_call(trainable, non_trainable, x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return tape.gradient(loss, trainable) + list(new_statistics)

    return gradients


def profile(variant, batch, threads, runs, form="training", image_size=None):
    import tensorflow as tf

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    v = keras_cmt.get_variant(variant)
    size = image_size or v.default_size
    model = randomize_like_trained(
        keras_cmt.build_model(
            v.name, input_shape=(size, size, 3), classifier_activation=None if form == "train_step" else "softmax"
        )
    )
    if form == "fused":
        model = keras_cmt.fuse_for_inference(model)
    size = image_size or v.default_size
    spec = tf.TensorSpec((batch, size, size, 3), tf.float32)
    if form == "train_step":
        per_type, _, wall = trace_kernels(train_step_gradients(model, batch), spec, threads, runs)
    else:
        per_type, _, wall = trace_kernels(lambda x: model(x, training=False), spec, threads, runs)
    total = sum(per_type.values())
    rows = [{"op": op, "ms_per_run": us / runs / 1e3, "share": us / total} for op, us in per_type.most_common()]
    return {
        "variant": v.name,
        "form": form,
        "batch": batch,
        "image_size": size,
        "threads": threads,
        "runs": runs,
        "traced_wall_ms_median": sorted(wall)[len(wall) // 2] / 1e3,
        "ops": rows,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="cmt_ti")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--form",
        default="training",
        choices=["training", "fused", "train_step"],
        help="the model as built, keras_cmt.fuse_for_inference(model), or a training step's forward and backward pass",
    )
    parser.add_argument("--image_size", type=int, default=None, help="default: the variant's")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result = profile(args.variant, args.batch, args.threads, args.runs, args.form, args.image_size)
    print(
        f"{result['variant']} ({result['form']}) batch {result['batch']}, {result['threads']} threads: "
        f"traced wall {result['traced_wall_ms_median']:.1f} ms (median of {args.runs})"
    )
    print("| op | ms per run | share |\n| --- | --- | --- |")
    for row in result["ops"][:20]:
        print(f"| {row['op']} | {row['ms_per_run']:.2f} | {row['share'] * 100:.1f}% |")
    output = args.output or (
        f"benchmarks/results/op_profile_{result['variant']}_{result['image_size']}_{args.form}_b{result['batch']}.json"
    )
    from keras_cmt import atomic_files

    atomic_files.write_json(output, result)


if __name__ == "__main__":
    main()
