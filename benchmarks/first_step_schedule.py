"""What the learning-rate schedule and the per-variable bias correction cost the main job's first training step
(tracing and Grappler), on TensorFlow.

    python -m benchmarks.first_step_schedule [--rounds 2] [--output benchmarks/results/first_step_schedule_<date>.json]

Keras 3.15's TensorFlow AdamW reads `optimizer.learning_rate` once per weight-decayed variable (each run records
how many), and each read evaluates the warm-up cosine schedule again: a `cond` with both branches, put into the
traced train step once per decayed variable; and its update of each variable computes the step's bias correction
again. This times the first `model.fit` call of the main job's model and recipe (CMT-Ti@64, batch 64, the
small-data preset's schedule, two steps of one in-memory batch) with Keras' AdamW, with keras_cmt's
(`keras_cmt.optimizers.AdamW`: both once per step; what `training.train.build_optimizer` returns) and with Keras'
AdamW at a constant learning rate, each in its own process, alternated round by round.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("keras_adamw_schedule", "keras_cmt_adamw_schedule", "keras_adamw_constant_rate")
MARKER = "FIRST_STEP_RESULT "


def child(config):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_cmt
    from keras_cmt.training import presets, train

    recipe = presets.SMALL_DATA_PRESET
    model = train.build_model("cmt_ti", recipe.image_size, 10, recipe.drop_path)
    optimizer = train.build_optimizer(recipe, model, 22, recipe.epochs, recipe.batch_size)
    assert isinstance(optimizer, keras_cmt.optimizers.AdamW)
    if config == "keras_adamw_schedule":
        optimizer = keras.optimizers.AdamW.from_config(optimizer.get_config())
    elif config == "keras_adamw_constant_rate":
        optimizer = keras.optimizers.AdamW(learning_rate=recipe.base_lr, weight_decay=recipe.weight_decay)
    optimizer.exclude_from_weight_decay(var_list=train.no_decay_variables(model))
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.random((recipe.batch_size, recipe.image_size, recipe.image_size, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, recipe.batch_size)]
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, verbose=0)
    first_fit_s, first_fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    decayed = sum(1 for v in model.trainable_variables if optimizer._use_weight_decay(v))
    # The optimizer's share of the traced step, in graph operations (traced only, never run): noise-free.
    grads = [tf.zeros_like(v.value) for v in model.trainable_variables]
    apply = tf.function(lambda: optimizer.apply(grads, model.trainable_variables))
    apply_ops = len(apply.get_concrete_function().graph.get_operations())
    record = {"config": config, "first_fit_s": first_fit_s, "first_fit_cpu_s": first_fit_cpu_s}
    print(MARKER + json.dumps(dict(record, decayed_variables=decayed, optimizer_apply_graph_ops=apply_ops)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=f"benchmarks/results/first_step_schedule_{time.strftime('%Y-%m-%d')}.json")
    parser.add_argument("--child", choices=CONFIGS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    runs = {c: [] for c in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            cmd = [sys.executable, "-m", "benchmarks.first_step_schedule", "--child", config]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            record = json.loads(next(line for line in out.splitlines() if line.startswith(MARKER))[len(MARKER) :])
            runs[config].append(record)
            print(f"{config}: first fit {record['first_fit_s']:.2f} s", flush=True)
    medians = {c: statistics.median(r["first_fit_s"] for r in runs[c]) for c in CONFIGS}
    cpu = {c: statistics.median(r["first_fit_cpu_s"] for r in runs[c]) for c in CONFIGS}
    print(
        "\n| optimizer, learning rate | first fit, 2 steps: wall (s), median | runs | CPU (s), median | apply's ops |"
    )
    print("| --- | --- | --- | --- | --- |")
    for c in CONFIGS:
        times = ", ".join(f"{r['first_fit_s']:.2f}" for r in runs[c])
        print(f"| {c} | {medians[c]:.2f} | {times} | {cpu[c]:.2f} | {runs[c][0]['optimizer_apply_graph_ops']} |")
    keras_share = medians["keras_adamw_schedule"] - medians["keras_adamw_constant_rate"]
    ours_share = medians["keras_cmt_adamw_schedule"] - medians["keras_adamw_constant_rate"]
    print(
        f"\nagainst Keras' AdamW at a constant rate: Keras' AdamW with the schedule {keras_share:+.2f} s, "
        f"keras_cmt's {ours_share:+.2f} s"
    )
    from benchmarks.training_backends import load_atomic_files

    load_atomic_files().write_json(
        args.output, {"runs": runs, "median_first_fit_s": medians, "median_first_fit_cpu_s": cpu}
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
