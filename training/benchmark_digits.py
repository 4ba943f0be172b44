"""Benchmark for the README: CMT-Ti on `digits` (accuracy, minutes) and CMT-Ti training throughput (images/s).

    python -m keras_cmt.training.benchmark_digits   # saves training/results/benchmark_digits.json

1. Runs the README's offline command in a fresh folder and reads its results.json:
   python -m keras_cmt.training.train --model=cmt_ti --dataset=digits --image_size=64 --epochs=15 --batch_size=64
   (target: validation top-1 >= 0.95; the small-data preset).
2. Times the compiled training step of CMT-Ti at 160x160, batch 32 (the same optimizer, loss and metrics as
   keras_cmt.training.train, synthetic in-memory data so that only the model is measured): the median over the steps after
   warm-up, as images/s.
Prints a table and saves JSON with the machine's description. Not a test: the figures depend on the machine.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("out", "training/results/benchmark_digits.json", "Where to save the JSON results.")
flags.DEFINE_integer("epochs", 15, "Epochs of the digits run.")
flags.DEFINE_integer("image_size", 64, "Input size of the digits run.")
flags.DEFINE_integer("batch_size", 64, "Batch size of the digits run.")
flags.DEFINE_string("work_dir", None, "model_dir of the digits run (default: a temporary folder).")
flags.DEFINE_bool("skip_accuracy", False, "Only measure throughput.")
flags.DEFINE_bool("skip_throughput", False, "Only run the digits training.")
flags.DEFINE_integer("throughput_size", 160, "Input size for the throughput measurement.")
flags.DEFINE_integer("throughput_batch", 32, "Batch size for the throughput measurement.")
flags.DEFINE_integer("warmup_steps", 3, "Steps not timed (tracing, allocation).")
flags.DEFINE_integer("timed_steps", 15, "Steps timed.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_accuracy(model_dir):
    command = [sys.executable, "-m", "keras_cmt.training.train", "--model=cmt_ti", "--dataset=digits",
               f"--image_size={FLAGS.image_size}", f"--epochs={FLAGS.epochs}", f"--batch_size={FLAGS.batch_size}",
               f"--model_dir={model_dir}", "--verbose=2", "--overwrite"]
    print("$", " ".join(command[1:]), flush=True)
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    minutes = (time.time() - start) / 60
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    return {"command": "python " + " ".join(command[1:-1]), "val_top1": results["val_accuracy"],
            "val_top5": results["val_top5"], "epochs": results["epochs"], "minutes": round(minutes, 2),
            "train_minutes": round(results["wall_time_s"] / 60, 2), "target_top1": 0.95,
            "meets_target": results["val_accuracy"] >= 0.95}


def training_throughput(size, batch):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_cmt.training import presets, train

    recipe = presets.IMAGENET_PRESETS["cmt_ti"].replace(image_size=size, batch_size=batch)
    model = train.build_model("cmt_ti", size, 1000, recipe.drop_path)
    steps = FLAGS.warmup_steps + FLAGS.timed_steps
    model.compile(optimizer=train.build_optimizer(recipe, model, steps, 1, batch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = tf.one_hot(rng.integers(0, 1000, batch), 1000).numpy()
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch_index, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch_index, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Timer()])
    timed = times[FLAGS.warmup_steps:]
    median = statistics.median(timed)
    return {"model": "cmt_ti", "image_size": size, "batch_size": batch, "timed_steps": len(timed),
            "median_step_s": round(median, 4), "images_per_s": round(batch / median, 2),
            "min_step_s": round(min(timed), 4), "max_step_s": round(max(timed), 4)}


def main(argv):
    del argv
    import tensorflow as tf

    # The load average says whether other processes shared the CPUs (figures scale with it on a busy machine).
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                          "tensorflow": tf.__version__, "load_average_at_start": os.getloadavg()}}
    if not FLAGS.skip_accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            report["digits"] = digits_accuracy(FLAGS.work_dir or os.path.join(tmp, "digits"))
    if not FLAGS.skip_throughput:
        report["throughput"] = training_throughput(FLAGS.throughput_size, FLAGS.throughput_batch)
    import keras

    report["machine"]["keras"] = keras.__version__
    report["machine"]["load_average_at_end"] = os.getloadavg()
    print()
    print("| benchmark | result |")
    print("| --- | --- |")
    if "digits" in report:
        d = report["digits"]
        print(f"| CMT-Ti digits {FLAGS.image_size}px, {d['epochs']} epochs, batch {FLAGS.batch_size}: val top-1 "
              f"| {d['val_top1']:.4f} (target 0.95) |")
        print(f"| ... val top-5 | {d['val_top5']:.4f} |")
        print(f"| ... wall time (whole command) | {d['minutes']:.1f} min |")
    if "throughput" in report:
        t = report["throughput"]
        print(f"| CMT-Ti {t['image_size']}px batch {t['batch_size']} training, median of {t['timed_steps']} steps "
              f"| {t['images_per_s']:.1f} images/s ({t['median_step_s']:.3f} s/step) |")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    from keras_cmt import atomic_files

    atomic_files.write_json(FLAGS.out, report)
    print(f"\nsaved {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
