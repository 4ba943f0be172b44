"""Inference latency of our model beside the official PyTorch CMT (eager), process by process, round by round.

    python -m benchmarks.side_by_side_pytorch --official /tmp/official_cmt/cmt.py
        [--forms pytorch tf_fused tf_built] [--variants cmt_ti cmt_xs cmt_s cmt_b] [--batch_sizes 1 32]
        [--rounds 2] [--repeats 30] [--repeats_large 5] [--warmup 2] [--threads 2]
        [--output benchmarks/results/side_by_side_pytorch_<date>.json]

The figures behind RESULTS.md's "side by side with the official PyTorch model" tables, in one command: for each
variant at its default size (CMT-Ti 160, XS 192, S 224, B 256) and each batch size, the median latency of

| form | what runs |
| --- | --- |
| pytorch | the official `cmt_pytorch/cmt.py` (`--official`; not part of this project), eager, NCHW, |
|  | `model.eval()` under `torch.inference_mode()` |
| tf_fused | our `keras_cmt.fuse_for_inference(model)` on TensorFlow: a `tf.function` of |
|  | `model(x, training=False)`, as `benchmarks.keras_latency` times it (what `predict` runs per batch) |
| tf_built | the model as built, the same way |
| jax_built, jax_built_channels_first | the model as built on Keras' JAX backend, `predict_on_batch` (jit) |
| torch_built, torch_built_channels_first | the model as built on Keras' torch backend, `predict_on_batch` (eager) |
| jax_fused, torch_fused | `fuse_for_inference(model)` on those backends (channels_last) |

Both sides use random weights with non-zero biases and BatchNorm statistics (`benchmarks.trained_like_weights`,
`benchmarks.official_pytorch`): zero biases let graph optimisers drop work that trained weights keep. Each
(form, variant) runs in its own process (a backend is fixed at import), the batch sizes in increasing order, so
the process's peak RSS read after each batch size is that batch size's peak (later, larger batches cannot lower
it). The forms alternate process by process within each round and the rounds repeat the whole sequence, so a slow
phase of this shared, noisy machine hits every form alike. `--repeats` timed runs at batch 1, `--repeats_large`
at larger batches, after `--warmup` untimed runs. Threads: as `benchmarks.training_backends` (`--threads` for
TensorFlow's intra-op pool, `torch.set_num_threads`, CPU affinity for XLA; inter-op 1).

Prints a line per measurement and a table with a row per (variant, batch, form): the median ms of each round, the
median over the rounds, the ratio to PyTorch per round and of the medians (ours / PyTorch: below 1 is faster),
and the process's peak RSS. Saves JSON (every timed run included).
Expected duration with the defaults (three forms, four variants, batch 1 and 32, two rounds, 2 cores): about
20-25 minutes, three quarters of it in CMT-S and CMT-B at batch 32.
"""

import argparse
import os
import statistics
import sys
import time

from benchmarks.training_backends import (
    child_environment,
    load_atomic_files,
    machine_description,
    peak_rss_mib,
    pin_to_cpus,
    run_measuring_child,
    set_framework_threads,
)
from benchmarks import variant_table

RESULT_MARKER = "SIDE_BY_SIDE_RESULT "
FORMS = {
    "pytorch": dict(backend="official", data_format="channels_first", fused=False),
    "tf_fused": dict(backend="tensorflow", data_format="channels_last", fused=True),
    "tf_built": dict(backend="tensorflow", data_format="channels_last", fused=False),
    "jax_built": dict(backend="jax", data_format="channels_last", fused=False),
    "jax_built_channels_first": dict(backend="jax", data_format="channels_first", fused=False),
    "jax_fused": dict(backend="jax", data_format="channels_last", fused=True),
    "torch_built": dict(backend="torch", data_format="channels_last", fused=False),
    "torch_built_channels_first": dict(backend="torch", data_format="channels_first", fused=False),
    "torch_fused": dict(backend="torch", data_format="channels_last", fused=True),
}
DEFAULT_SIZES = {name: v.default_size for name, v in variant_table().items()}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--forms", nargs="+", default=["pytorch", "tf_fused", "tf_built"], choices=list(FORMS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_SIZES), choices=list(DEFAULT_SIZES))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--image_size", type=int, default=None, help="override every variant's default size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--repeats_large", type=int, default=5, help="timed runs at larger batches")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official", default=None, help="path to the official cmt_pytorch/cmt.py")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per process")
    parser.add_argument("--output", default=f"benchmarks/results/side_by_side_pytorch_{time.strftime('%Y-%m-%d')}.json")
    parser.add_argument("--child", nargs=2, metavar=("FORM", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = sorted(set(args.batch_sizes))
    if "pytorch" in args.forms and not args.child and not args.official:
        parser.error("the 'pytorch' form needs --official PATH_TO/cmt_pytorch/cmt.py")
    return args


# ----------------------------------------------------------------------------------------------- one process


def input_batch(batch, size, data_format, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (batch, size, size, 3) if data_format == "channels_last" else (batch, 3, size, size)
    return rng.normal(size=shape).astype("float32")


def official_runner(args, variant, size):
    """A function batch (NCHW numpy) -> None running the official model in eager inference mode."""
    import torch

    from benchmarks.official_pytorch import build_official, load_official, randomize_official_like_trained

    module = load_official(args.official)
    torch.manual_seed(0)
    model = randomize_official_like_trained(build_official(module, variant, size)).eval()

    def run(x):
        with torch.inference_mode():
            model(x)

    return run, (lambda batch: torch.from_numpy(input_batch(batch, size, "channels_first"))), module.TIMM_SOURCE


def keras_runner(form, variant, size):
    """A function batch -> None running our model in this process's Keras backend, in `form`."""
    import keras

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    spec = FORMS[form]
    keras.config.set_image_data_format(spec["data_format"])
    shape = (size, size, 3) if spec["data_format"] == "channels_last" else (3, size, size)
    model = randomize_like_trained(keras_cmt.build_model(variant, input_shape=shape), seed=0)
    if spec["fused"]:
        model = keras_cmt.fuse_for_inference(model)
    if spec["backend"] == "tensorflow":  # as benchmarks.keras_latency: the graph `predict` runs per batch
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False))
        return (lambda x: fn(x).numpy()), (lambda b: tf.constant(input_batch(b, size, spec["data_format"]))), None
    return model.predict_on_batch, (lambda b: input_batch(b, size, spec["data_format"])), None


def time_runs(run, x, warmup, repeats):
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return times


def run_child(args):
    import json

    form, variant = args.child
    spec = FORMS[form]
    cpus = pin_to_cpus(args.threads)
    set_framework_threads(spec["backend"], args.threads, 1)
    size = args.image_size or DEFAULT_SIZES[variant]
    if spec["backend"] == "official":
        run, make_input, timm_source = official_runner(args, variant, size)
    else:
        run, make_input, timm_source = keras_runner(form, variant, size)
    for batch in args.batch_sizes:
        repeats = args.repeats if batch == 1 else args.repeats_large
        times = time_runs(run, make_input(batch), args.warmup, repeats)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        result = {
            "form": form,
            "variant": variant,
            "input": size,
            "batch": batch,
            "repeats": repeats,
            "median_ms": statistics.median(times) * 1e3,
            "iqr_ms": (q[2] - q[0]) * 1e3,
            "times_ms": [t * 1e3 for t in times],
            "peak_rss_mib": peak_rss_mib(),
            "cpus": cpus,
            "backend": spec["backend"],
            "data_format": spec["data_format"],
            "load_average": os.getloadavg(),
        }
        if timm_source:
            result["timm"] = timm_source
        print(RESULT_MARKER + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- orchestration


def run_process(args, form, variant):
    """One (form, variant) process; returns its per-batch results, or one error record."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.side_by_side_pytorch",
        "--child",
        form,
        variant,
        "--batch_sizes",
        *map(str, args.batch_sizes),
        "--repeats",
        str(args.repeats),
        "--repeats_large",
        str(args.repeats_large),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    if args.image_size:
        command += ["--image_size", str(args.image_size)]
    if args.official:
        command += ["--official", os.path.abspath(args.official)]
    results, error = run_measuring_child(
        command, child_environment(FORMS[form]["backend"], args.threads), RESULT_MARKER, timeout=args.timeout
    )
    if error is not None:
        results.append({"form": form, "variant": variant, **error})
    return results


def summarize(args, results):
    """One row per (variant, batch): each form's median ms per round and over the rounds, and its ratio to PyTorch
    (ratio of the medians over the rounds, and per round)."""
    rows = []
    for variant in args.variants:
        for batch in args.batch_sizes:
            row = {"variant": variant, "batch": batch, "forms": {}}
            for form in args.forms:
                found = sorted(
                    (
                        r
                        for r in results
                        if r.get("form") == form and r.get("variant") == variant and r.get("batch") == batch
                    ),
                    key=lambda r: r["round"],
                )
                if found:
                    row["forms"][form] = {
                        "rounds": [r["round"] for r in found],
                        "ms_per_round": [r["median_ms"] for r in found],
                        "median_ms": statistics.median(r["median_ms"] for r in found),
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in found),
                    }
            reference = row["forms"].get("pytorch")
            for form, entry in row["forms"].items():
                if reference and form != "pytorch":
                    entry["ratio_to_pytorch"] = entry["median_ms"] / reference["median_ms"]
                    pytorch_ms = dict(zip(reference["rounds"], reference["ms_per_round"]))
                    entry["ratio_per_round"] = [
                        ms / pytorch_ms[r] for r, ms in zip(entry["rounds"], entry["ms_per_round"]) if r in pytorch_ms
                    ]
            rows.append(row)
    return rows


def print_table(args, rows):
    print(
        "\n| variant | batch | form | ms per round | median ms | / PyTorch per round | / PyTorch (medians) "
        "| peak RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for form in args.forms:
            entry = row["forms"].get(form)
            if entry is None:
                print(f"| {row['variant']} | {row['batch']} | {form} | failed | | | | |")
                continue
            per_round = " / ".join(f"{ms:.1f}" for ms in entry["ms_per_round"])
            ratios = " / ".join(f"{r:.2f}" for r in entry.get("ratio_per_round", [])) or "-"
            ratio = f"{entry['ratio_to_pytorch']:.2f}" if "ratio_to_pytorch" in entry else "-"
            print(
                f"| {row['variant']} | {row['batch']} | {form} | {per_round} | {entry['median_ms']:.1f} | {ratios} | "
                f"{ratio} | {entry['peak_rss_mib']:,.0f} |"
            )


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args)
    atomic_files = load_atomic_files()
    report = {
        "benchmark": "side_by_side_pytorch",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "machine": machine_description(),
        "results": [],
    }
    for round_index in range(1, args.rounds + 1):
        for variant in args.variants:
            for form in args.forms:
                start = time.perf_counter()
                for result in run_process(args, form, variant):
                    result["round"] = round_index
                    report["results"].append(result)
                    if "error" in result:
                        print(f"round {round_index} {variant} {form}: FAILED {result['error']}", flush=True)
                        for line in result.get("stderr_tail", []):
                            print("    " + line)
                    else:
                        print(
                            f"round {round_index} {variant:6s} batch {result['batch']:3d} {form:26s} "
                            f"{result['median_ms']:9.1f} ms (IQR {result['iqr_ms']:7.1f}, {result['repeats']} runs,"
                            f" peak RSS {result['peak_rss_mib']:,.0f} MiB)",
                            flush=True,
                        )
                print(f"    ({variant} {form}: process {time.perf_counter() - start:.0f} s)", flush=True)
                atomic_files.write_json(args.output, report)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["summary"] = summarize(args, [r for r in report["results"] if "error" not in r])
    print_table(args, report["summary"])
    atomic_files.write_json(args.output, report)
    print(f"\nsaved {args.output}")
    return report


if __name__ == "__main__":
    main()
