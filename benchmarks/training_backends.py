"""CPU training throughput of the plain Keras CMT on each Keras backend, beside the official PyTorch model.

    python -m benchmarks.training_backends --official /tmp/official_cmt/cmt.py
        [--configs tensorflow tensorflow-xla jax jax-channels_first torch torch-channels_first official]
        [--variant cmt_ti] [--image_size 160] [--batch 32] [--steps 12] [--warmup 3] [--rounds 3]
        [--steps_per_execution 1] [--threads 2] [--output benchmarks/results/training_backends_<date>.json]

The question it answers (the issue's): which backend trains the plain model fastest on a CPU, CMT-Ti@160 batch 32,
and how each compares with the official PyTorch model, so that the fastest becomes the documented CPU choice.

Each figure comes from its own process (Keras fixes its backend at import), and the configurations alternate
round by round (ABCABC...), so that a slow phase of a shared machine hits all of them alike:

| config | what runs |
| --- | --- |
| tensorflow | `model.fit`, channels_last, `jit_compile=False` (TensorFlow graph, oneDNN) |
| tensorflow-xla | the same with `jit_compile=True` (XLA) |
| jax | channels_last, Keras' default `jit_compile="auto"` (XLA) |
| jax-channels_first | the same with `keras.config.set_image_data_format("channels_first")` |
| torch | channels_last (Keras' default for the torch backend: eager) |
| torch-channels_first | channels_first |
| official | the official `cmt_pytorch/cmt.py` (from `--official`, not part of this project), eager, NCHW |
| torch-compile | `jit_compile=True` on the torch backend: `torch.compile` (Inductor: C++ generated and compiled here) |
| tensorflow-bf16, torch-bf16 | `keras.config.set_dtype_policy("mixed_bfloat16")`: bf16 compute, float32 variables |
| official-bf16 | the official model under `torch.autocast("cpu", dtype=torch.bfloat16)` |

`torch-compile` and the bf16 configurations are not in the default set (`--configs ... torch-compile
tensorflow-bf16 torch-bf16 official-bf16`);
they are for CPUs with native bf16 arithmetic (AVX512_BF16 / AMX), where oneDNN runs bf16 convolutions and matrix
products; their ratios are also given against `official-bf16`.

Every configuration trains the same thing: random weights with non-zero biases and BatchNorm statistics
(`benchmarks.trained_like_weights` / `benchmarks.official_pytorch`), AdamW (learning rate 1e-3, weight decay 0.05),
cross-entropy on logits with random integer labels over 1000 classes (`loss_first` is the first step's loss, `loss_mean`
the mean over all steps: what Keras' `logs["loss"]` holds at the end of an epoch), one synthetic normalised batch held
in memory (a repeating `tf.data` dataset on TensorFlow, a generator of backend tensors on JAX and PyTorch), no metrics.
The step time is the interval between consecutive `on_train_batch_end` callbacks (the loss is read there, which
waits for JAX's asynchronous dispatch), divided by `steps_per_execution`; the first `--warmup` steps (tracing,
compilation, allocation) are left out; images/s = batch / median step time. The official model's step is timed
around zero_grad + forward + loss + backward + `optimizer.step()` + `loss.item()`. Peak RSS is each process's
`resource.getrusage` maximum (model build and compilation included). `steps_per_execution` > 1 is not supported
by Keras' torch backend; the torch configurations and the official model run with 1 and say so.

What controls the threads (`--threads N`), per backend:
- every process: `OMP_NUM_THREADS`, `MKL_NUM_THREADS` = N, and, when N is below the CPUs this process may use, CPU
  affinity to N of them (`os.sched_setaffinity`): XLA's and TensorFlow's thread pools size themselves from the
  affinity mask, and JAX has no other thread-count setting;
- TensorFlow: `tf.config.threading` intra-op = N, inter-op = `--tf_inter_op_threads` (default 1, as
  `benchmarks.keras_latency`);
- JAX (XLA CPU): the affinity above; with N = 1 also `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1`;
- PyTorch (Keras' torch backend and the official model): `torch.set_num_threads(N)`.

Prints one line per process and then a table: config, images/s per round, median, ratio of the medians to
`official`, peak RSS (MiB, the largest over the rounds). Saves everything (per-step times too) as JSON.
Expected duration at the defaults (7 configurations x 3 rounds, 15 steps each, CMT-Ti@160 batch 32 on 2 cores):
about 35-45 minutes (~1.3-2 s per step, plus 20-60 s of start-up and compilation per process).
"""

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from benchmarks import variant_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARKER = "TRAINING_BACKENDS_RESULT "
CONFIGS = {
    "tensorflow": dict(backend="tensorflow", data_format="channels_last", jit_compile=False),
    "tensorflow-bf16": dict(
        backend="tensorflow", data_format="channels_last", jit_compile=False, policy="mixed_bfloat16"
    ),
    "tensorflow-xla": dict(backend="tensorflow", data_format="channels_last", jit_compile=True),
    "jax": dict(backend="jax", data_format="channels_last", jit_compile="auto"),
    "jax-channels_first": dict(backend="jax", data_format="channels_first", jit_compile="auto"),
    "torch": dict(backend="torch", data_format="channels_last", jit_compile="auto"),
    "torch-channels_first": dict(backend="torch", data_format="channels_first", jit_compile="auto"),
    "torch-compile": dict(backend="torch", data_format="channels_last", jit_compile=True),
    "torch-bf16": dict(backend="torch", data_format="channels_last", jit_compile="auto", policy="mixed_bfloat16"),
    "official": dict(backend="official", data_format="channels_first", jit_compile=False),
    "official-bf16": dict(backend="official", data_format="channels_first", jit_compile=False, policy="mixed_bfloat16"),
}
DEFAULT_CONFIGS = [
    "tensorflow",
    "tensorflow-xla",
    "jax",
    "jax-channels_first",
    "torch",
    "torch-channels_first",
    "official",
]
NUM_CLASSES = 1000


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--variant", default="cmt_ti", choices=list(variant_table()))
    parser.add_argument("--image_size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and not timed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration once")
    parser.add_argument("--steps_per_execution", type=int, default=1, help="Keras steps per execution (TF, JAX)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tf_inter_op_threads", type=int, default=1)
    parser.add_argument("--official", default=None, help="path to the official cmt_pytorch/cmt.py")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per process")
    parser.add_argument("--output", default=f"benchmarks/results/training_backends_{time.strftime('%Y-%m-%d')}.json")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(CONFIGS[c]["backend"] == "official" for c in args.configs) and not args.child and not args.official:
        parser.error("the 'official' configuration needs --official PATH_TO/cmt_pytorch/cmt.py")
    return args


# ----------------------------------------------------------------------------------------------- threads


def child_environment(backend, threads):
    """The environment of a child process: backend, thread counts, quiet TensorFlow, the repository importable."""
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND=backend if backend != "official" else "torch",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    )
    if backend == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
        if threads == 1:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            ).strip()
    return env


def pin_to_cpus(threads):
    """Restricts this process to `threads` of its CPUs when it may use more; returns the CPUs it may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
    return sorted(os.sched_getaffinity(0))


def set_framework_threads(backend, threads, tf_inter_op_threads):
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(tf_inter_op_threads)
    if backend in ("torch", "official"):
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- one process


def synthetic_batch(batch, size, data_format, seed=0):
    """One normalised image batch (N(0, 1), as preprocessed images roughly are) and integer labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, size, size, 3) if data_format == "channels_last" else (batch, 3, size, size)
    return rng.normal(size=shape).astype("float32"), rng.integers(0, NUM_CLASSES, batch).astype("int32")


def repeating_dataset(x, y, backend):
    """The same (x, y) batch forever, in the form `model.fit` consumes fastest on `backend`."""
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.data.Dataset.from_tensors((x, y)).repeat()
    import keras

    x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)

    def batches():
        while True:
            yield x, y

    return batches()


def step_statistics(step_times, batch):
    median = statistics.median(step_times)
    return {
        "median_step_s": median,
        "images_per_s": batch / median,
        "min_step_s": min(step_times),
        "max_step_s": max(step_times),
        "timed_steps_s": step_times,
    }


def machine_description():
    """Where a benchmark ran, for its JSON: platform, CPU count, Python and the load when it started."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_timer(stop_when=None):
    """A Keras callback recording the time of every `on_train_batch_end` and the (running mean) loss; with
    `stop_when`, training stops once `stop_when(steps done)` is true."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends, self.losses = [], []

        def on_train_begin(self, logs=None):
            self.ends.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]) if logs and "loss" in logs else float("nan"))  # waits for it
            self.ends.append(time.perf_counter())
            if stop_when is not None and stop_when(len(self.losses)):
                self.model.stop_training = True

    return StepTimer()


def train_keras(args, config):
    """Times `model.fit` of the Keras CMT in this process's backend; returns the result dict."""
    import keras

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    keras.config.set_image_data_format(config["data_format"])
    keras.config.set_dtype_policy(config.get("policy", "float32"))
    size = args.image_size
    shape = (size, size, 3) if config["data_format"] == "channels_last" else (3, size, size)
    model = keras_cmt.build_model(args.variant, input_shape=shape, classes=NUM_CLASSES, classifier_activation=None)
    randomize_like_trained(model, seed=0)
    per_execution = args.steps_per_execution if config["backend"] != "torch" else 1
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=per_execution,
        jit_compile=config["jit_compile"],
    )
    x, y = synthetic_batch(args.batch, size, config["data_format"])
    warmup_executions = math.ceil(args.warmup / per_execution)
    timed_executions = max(1, math.ceil(args.steps / per_execution))
    timer = step_timer()
    model.fit(
        repeating_dataset(x, y, config["backend"]),
        epochs=1,
        verbose=0,
        callbacks=[timer],
        steps_per_epoch=(warmup_executions + timed_executions) * per_execution,
    )
    periods = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    step_times = [p / per_execution for p in periods[warmup_executions:]]
    return dict(
        step_statistics(step_times, args.batch),
        steps_per_execution=per_execution,
        jit_compile=bool(model.jit_compile),
        warmup_s=sum(periods[:warmup_executions]),
        loss_first=timer.losses[0],
        loss_mean=timer.losses[-1],
        keras=keras.__version__,
        policy=keras.config.dtype_policy().name,
    )


def train_official(args, config):
    """Times the official PyTorch model's training step (eager, NCHW; bf16 autocast for a mixed_bfloat16 config);
    returns the result dict."""
    import contextlib

    import torch

    from benchmarks.official_pytorch import build_official, load_official, randomize_official_like_trained

    module = load_official(args.official)
    torch.manual_seed(0)
    model = randomize_official_like_trained(build_official(module, args.variant, args.image_size, NUM_CLASSES))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = synthetic_batch(args.batch, args.image_size, "channels_first")
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    bf16 = config.get("policy") == "mixed_bfloat16"
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    return dict(
        step_statistics(times[args.warmup :], args.batch),
        steps_per_execution=1,
        jit_compile=False,
        warmup_s=sum(times[: args.warmup]),
        loss_first=losses[0],
        loss_mean=statistics.fmean(losses),
        policy="mixed_bfloat16" if bf16 else "float32",
        timm=module.TIMM_SOURCE,
    )


def run_child(args):
    import json

    config = CONFIGS[args.child]
    cpus = pin_to_cpus(args.threads)
    set_framework_threads(config["backend"], args.threads, args.tf_inter_op_threads)
    start, load_at_start = time.perf_counter(), os.getloadavg()
    result = train_official(args, config) if config["backend"] == "official" else train_keras(args, config)
    versions = {}
    for name in ("tensorflow", "jax", "torch"):
        if name in sys.modules:
            versions[name] = getattr(sys.modules[name], "__version__", "?")
    result.update(
        config=args.child,
        backend=config["backend"],
        data_format=config["data_format"],
        cpus=cpus,
        peak_rss_mib=peak_rss_mib(),
        process_s=time.perf_counter() - start,
        versions=versions,
        load_average_at_start=load_at_start,
        load_average_at_end=os.getloadavg(),
    )
    print(RESULT_MARKER + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- orchestration


def load_atomic_files():
    """`keras_cmt.atomic_files` (its `write_json`), loaded from its file: importing the `keras_cmt` package would
    import Keras and TensorFlow into this orchestrating process, which only waits for the measuring ones."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_atomic_files", os.path.join(REPO, "keras_cmt", "atomic_files.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_measuring_child(command, env, marker, timeout=None, tail_lines=15):
    """Runs one measuring process of a benchmark (its repository as working directory). Returns (the JSON records
    it printed after `marker`, an error record or None): the error record ({"error", and "stderr_tail" when the
    process ended}) is there when it timed out, exited with a non-zero status or printed no record."""
    import json

    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], {"error": f"timed out after {timeout} s"}
    records = [json.loads(line[len(marker) :]) for line in done.stdout.splitlines() if line.startswith(marker)]
    if done.returncode == 0 and records:
        return records, None
    tail = (done.stderr or done.stdout).strip().splitlines()[-tail_lines:]
    return records, {"error": f"exit status {done.returncode}", "stderr_tail": tail}


def child_command(args, config):
    command = [
        sys.executable,
        "-m",
        "benchmarks.training_backends",
        "--child",
        config,
        "--variant",
        args.variant,
        "--image_size",
        str(args.image_size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--steps_per_execution",
        str(args.steps_per_execution),
        "--tf_inter_op_threads",
        str(args.tf_inter_op_threads),
    ]
    if args.official:
        command += ["--official", os.path.abspath(args.official)]
    return command


def run_config(args, config):
    """Runs one configuration in a fresh process; returns its result dict (with "error" where it failed)."""
    start = time.perf_counter()
    records, error = run_measuring_child(
        child_command(args, config),
        child_environment(CONFIGS[config]["backend"], args.threads),
        RESULT_MARKER,
        timeout=args.timeout,
    )
    wall = time.perf_counter() - start
    if records:
        return dict(records[0], wall_s=wall)
    result = {"config": config, **error}
    if "stderr_tail" in error:  # it ended by itself (a timed-out process reports no time)
        result["wall_s"] = wall
    return result


def summarize(args, results):
    """One row per configuration: images/s per round, the median, its ratio to the official model's median."""
    rows = []
    for config in args.configs:
        ok = [r for r in results if r["config"] == config and "error" not in r]
        rows.append(
            {
                "config": config,
                "images_per_s": [r["images_per_s"] for r in ok],
                "median_images_per_s": statistics.median([r["images_per_s"] for r in ok]) if ok else None,
                "peak_rss_mib": max([r["peak_rss_mib"] for r in ok], default=None),
                "errors": [r["error"] for r in results if r["config"] == config and "error" in r],
            }
        )
    medians = {row["config"]: row["median_images_per_s"] for row in rows}
    for row in rows:
        official = medians.get("official")
        row["ratio_to_official"] = (
            row["median_images_per_s"] / official if official and row["median_images_per_s"] else None
        )
        # bf16 configurations also against the official model under bf16 autocast, when it ran
        same = "official-bf16" if CONFIGS[row["config"]].get("policy") == "mixed_bfloat16" else "official"
        row["ratio_to_official_same_precision"] = (
            row["median_images_per_s"] / medians[same] if medians.get(same) and row["median_images_per_s"] else None
        )
    return rows


def print_table(rows):
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print(
        "\n| config | images/s per round | median images/s | ratio to official | ratio to official, same "
        "precision | peak RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        per_round = " / ".join(f"{v:.2f}" for v in row["images_per_s"]) or "-"
        failed = f" ({len(row['errors'])} failed)" if row["errors"] else ""
        print(
            f"| {row['config']} | {per_round}{failed} | {fmt(row['median_images_per_s'], '.2f')} | "
            f"{fmt(row['ratio_to_official'], '.3f')} | {fmt(row['ratio_to_official_same_precision'], '.3f')} | "
            f"{fmt(row['peak_rss_mib'], ',.0f')} |"
        )


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args)
    atomic_files = load_atomic_files()

    report = {
        "benchmark": "training_backends",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": machine_description(),
        "results": [],
    }
    for round_index in range(1, args.rounds + 1):
        for config in args.configs:
            result = dict(run_config(args, config), round=round_index)
            report["results"].append(result)
            if "error" in result:
                print(f"round {round_index} {config:22s} FAILED: {result['error']}", flush=True)
                for line in result.get("stderr_tail", []):
                    print("    " + line)
            else:
                print(
                    f"round {round_index} {config:22s} {result['images_per_s']:8.2f} images/s "
                    f"(median step {result['median_step_s'] * 1e3:8.1f} ms, warm-up {result['warmup_s']:6.1f} s, "
                    f"loss {result['loss_first']:.3f}, mean {result['loss_mean']:.3f}, "
                    f"peak RSS {result['peak_rss_mib']:,.0f} MiB, process {result['wall_s']:.0f} s)",
                    flush=True,
                )
            atomic_files.write_json(args.output, report)  # partial results survive an interrupted run
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["summary"] = summarize(args, report["results"])
    print_table(report["summary"])
    atomic_files.write_json(args.output, report)
    print(f"\nsaved {args.output}")
    return report


if __name__ == "__main__":
    main()
