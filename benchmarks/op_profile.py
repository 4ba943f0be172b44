"""Where the time goes: per-op-type profile of a CMT forward pass on TensorFlow (CPU).

    python -m benchmarks.op_profile [--variant cmt_ti] [--batch 1] [--threads 2] [--runs 5] [--form fused]
                                    [--output benchmarks/results/op_profile_cmt_ti_b1.json]

Runs the model's inference graph (variables frozen to constants, as a deployed graph has them, so Grappler folds
BatchNorm into the convolutions) in a TF1 session with full tracing and sums the kernel times per op type over
several runs, with weights from `benchmarks.trained_like_weights` (non-zero biases, as trained weights have): the
table to read before changing an op form, and again after. Kernel times are wall-clock: on a loaded machine they
all stretch, so read the shares. `--form fused` profiles `keras_cmt.fuse_for_inference(model)`.
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


def profile(variant, batch, threads, runs, form="training"):
    import tensorflow as tf

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    v = keras_cmt.get_variant(variant)
    model = randomize_like_trained(keras_cmt.build_model(v.name))
    if form == "fused":
        model = keras_cmt.fuse_for_inference(model)
    spec = tf.TensorSpec((batch, v.default_size, v.default_size, 3), tf.float32)
    per_type, _, wall = trace_kernels(lambda x: model(x, training=False), spec, threads, runs)
    total = sum(per_type.values())
    rows = [
        {"op": op, "ms_per_run": us / runs / 1e3, "share": us / total}
        for op, us in per_type.most_common()
    ]
    return {"variant": v.name, "form": form, "batch": batch, "threads": threads, "runs": runs,
            "traced_wall_ms_median": sorted(wall)[len(wall) // 2] / 1e3, "ops": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="cmt_ti")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--form", default="training", choices=["training", "fused"],
                        help="the model as built, or keras_cmt.fuse_for_inference(model)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result = profile(args.variant, args.batch, args.threads, args.runs, args.form)
    print(f"{result['variant']} ({result['form']}) batch {result['batch']}, {result['threads']} threads: "
          f"traced wall {result['traced_wall_ms_median']:.1f} ms (median of {args.runs})")
    print("| op | ms per run | share |\n| --- | --- | --- |")
    for row in result["ops"][:20]:
        print(f"| {row['op']} | {row['ms_per_run']:.2f} | {row['share'] * 100:.1f}% |")
    output = args.output or f"benchmarks/results/op_profile_{result['variant']}_{args.form}_b{result['batch']}.json"
    from keras_cmt import atomic_files

    atomic_files.write_json(output, result)


if __name__ == "__main__":
    main()
