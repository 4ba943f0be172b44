"""Why JAX (and TensorFlow with XLA) train CMT slowly on a CPU: one Keras layer at a time, on each backend.

    python -m benchmarks.cpu_convolutions [--threads 2] [--runs 10]
        [--output benchmarks/results/cpu_convolutions_<date>.json]

CMT-Ti@160's first stage at batch 32, (32, 40, 40, 46): a 3x3 DepthwiseConv2D (the LPU and the IRFFN's middle), a
1x1 Conv2D 46 -> 165 (the IRFFN's expansion) and a LayerNormalization, each as a one-layer Keras model. Per layer and
configuration: the median of `--runs` calls of `predict_on_batch` (forward) and of `train_on_batch` (forward, backward
and an SGD update; mean-squared error against zeros), after 3 warm-up calls, each configuration in its own process
with `--threads` CPUs (`benchmarks.training_backends` sets the threads). The same Keras code everywhere; what differs
is the engine under it: TensorFlow's oneDNN kernels, XLA's CPU emitters (`tensorflow-xla`, `jax`), PyTorch's ATen.
"""

import argparse
import json
import statistics
import sys
import time

CONFIGS = {
    "tensorflow": ("tensorflow", False),
    "tensorflow-xla": ("tensorflow", True),
    "jax": ("jax", "auto"),
    "torch": ("torch", "auto"),
}
SHAPE = (32, 40, 40, 46)
MARKER = "CPU_CONVOLUTIONS_RESULT "


def layers():
    import keras

    return {
        "DepthwiseConv2D 3x3": lambda: keras.layers.DepthwiseConv2D(3, padding="same"),
        "Conv2D 1x1, 46 -> 165": lambda: keras.layers.Conv2D(165, 1),
        "LayerNormalization": lambda: keras.layers.LayerNormalization(epsilon=1e-6),
    }


def child(config, runs):
    import numpy as np
    import keras

    _, jit_compile = CONFIGS[config]
    x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    result = {}
    for name, make in layers().items():
        model = keras.Sequential([keras.Input(SHAPE[1:]), make()])
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=jit_compile)
        y = np.zeros(model.output_shape[:0] + (SHAPE[0],) + model.output_shape[1:], "float32")
        timings = {}
        for kind, call in (
            ("forward_ms", lambda: np.asarray(model.predict_on_batch(x))),
            ("train_step_ms", lambda: float(model.train_on_batch(x, y))),
        ):
            for _ in range(3):
                call()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e3)
            timings[kind] = statistics.median(times)
        result[name] = timings
    print(MARKER + json.dumps(result), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--output", default=f"benchmarks/results/cpu_convolutions_{time.strftime('%Y-%m-%d')}.json")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.training_backends import (
        child_environment,
        load_atomic_files,
        machine_description,
        pin_to_cpus,
        run_measuring_child,
        set_framework_threads,
    )

    if args.child:
        pin_to_cpus(args.threads)
        set_framework_threads(CONFIGS[args.child][0], args.threads, 1)
        return child(args.child, args.runs)
    report = {
        "benchmark": "cpu_convolutions",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "shape": SHAPE,
        "threads": args.threads,
        "runs": args.runs,
        "machine": machine_description(),
        "results": {},
    }
    for config, (backend, _) in CONFIGS.items():
        records, error = run_measuring_child(
            [
                sys.executable,
                "-m",
                "benchmarks.cpu_convolutions",
                "--child",
                config,
                "--threads",
                str(args.threads),
                "--runs",
                str(args.runs),
            ],
            child_environment(backend, args.threads),
            MARKER,
            tail_lines=5,
        )
        if not records:
            report["results"][config] = error
            print(f"{config}: FAILED ({error['error']})", *error["stderr_tail"], sep="\n    ")
            continue
        report["results"][config] = records[-1]
    print(f"\nms per call, input {SHAPE}, {args.threads} threads, median of {args.runs}\n")
    configs = [c for c in CONFIGS if "error" not in report["results"][c]]
    print("| layer | " + " | ".join(f"{c} forward | {c} train step" for c in configs) + " |")
    print("| --- | " + " | ".join("--- | ---" for _ in configs) + " |")
    for name in report["results"][configs[0]] if configs else []:
        cells = [
            f"{report['results'][c][name]['forward_ms']:.1f} | {report['results'][c][name]['train_step_ms']:.1f}"
            for c in configs
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    load_atomic_files().write_json(args.output, report)
    print(f"\nsaved {args.output}")
    return report


if __name__ == "__main__":
    main()
