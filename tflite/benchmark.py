"""Latency, memory and what runs where, for `.tflite` files on LiteRT with XNNPACK.

    python -m keras_cmt.tflite.benchmark MODEL.tflite [MODEL2.tflite ...] [--threads 1 2 4] [--runs 50]
        [--warmup 10] [--runtime interpreter compiled compiled_fp16] [--no_xnnpack] [--interleave]
        [--json results.json]

Each (model, runtime, threads) runs in a fresh subprocess so that its peak memory (VmHWM) is its own:
`peak_rss_mb` is the process peak, `model_mem_mb` the growth over the interpreter-less baseline.
Prints a table and writes the JSON. Latency is the median of `--runs` invokes after `--warmup` invokes,
batch 1, one fixed random input in the model's input range. `cpu ms` is the median CPU time of the
process per invoke (all threads): on a shared machine it is the figure that other load disturbs least
(with 1 thread it is the compute cost itself); wall-clock medians are what an app sees on a quiet core.

Runtimes: `interpreter` (LiteRT's `Interpreter`, the default), `compiled` (LiteRT's `CompiledModel` API on the
CPU accelerator, what Android apps use now) and `compiled_fp16` (the same with XNNPACK's FORCE_FP16 flag: every
float operator in fp16; on x86 an emulation, so its latency says nothing about phones, its error does). Every
row also tells what runs where, read after the timing: the XNNPACK partitions and the nodes left to TFLite's
default kernels (the `Interpreter`'s delegated plan), the GPU delegate verdict of TFLite's Analyzer, and the
largest difference of this runtime's output from the `Interpreter`'s on the fixed input (`fp16_rounded_output`
tells whether the outputs are all float16 numbers, i.e. fp16 really ran).

`--interleave` is for A/B comparisons on a shared machine: all models run in one process, one invoke of each
in turn, so a busy period slows every model alike; it reports medians and each model's ratio to the first
(no per-model memory: the process is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from keras_cmt import quiet


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _fixed_input(model):
    """One fixed random image in the model's input range (quantized for int8 inputs)."""
    import numpy as np

    x = np.random.default_rng(0).uniform(0.0, 255.0, model.input_shape).astype(np.float32)
    return model._quantize_input(x) if model.input_dtype != np.float32 else x


def _latency_stats(times: list) -> dict:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(times),
        "p10_ms": ordered[len(times) // 10],
        "p90_ms": ordered[(len(times) * 9) // 10],
    }


RUNTIMES = ("interpreter", "compiled", "compiled_fp16")
RUNTIME_LABELS = {
    "interpreter": "Interpreter",
    "compiled": "CompiledModel",
    "compiled_fp16": "CompiledModel, fp16 forced",
}


def _check_runtime(runtime: str, use_xnnpack: bool) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime != "interpreter" and not use_xnnpack:
        raise ValueError("--no_xnnpack applies to the interpreter runtime only")


def _load(model_path: str, threads: int, use_xnnpack: bool, runtime: str):
    from keras_cmt.tflite.runner import CompiledModelRunner, LiteRTModel

    if runtime == "interpreter":
        return LiteRTModel(model_path, num_threads=threads, use_xnnpack=use_xnnpack)
    return CompiledModelRunner(model_path, num_threads=threads, force_fp16=runtime == "compiled_fp16")


def where_it_runs(
    model_path: str, threads: int, use_xnnpack: bool = True, interpreter=None, outputs=None, x=None
) -> dict:
    """XNNPACK partitions / nodes left to default kernels, the Analyzer's GPU verdict and, given another
    runtime's `outputs` for the input `x`, their largest difference from the `Interpreter`'s."""
    import numpy as np

    from keras_cmt.tflite import compatibility
    from keras_cmt.tflite.runner import LiteRTModel, fp16_rounded

    if interpreter is None:
        interpreter = LiteRTModel(model_path, num_threads=threads, use_xnnpack=use_xnnpack)
    with open(model_path, "rb") as f:
        result = {**interpreter.delegation().as_dict(), **compatibility.gpu_verdict(f.read())}
    if outputs is not None:
        reference = interpreter._dequantize_output(interpreter.invoke_raw(x))
        outputs = np.asarray(outputs, dtype=np.float32)
        result["max_abs_diff_vs_interpreter"] = float(np.abs(outputs - reference).max())
        result["fp16_rounded_output"] = fp16_rounded(outputs)
    return result


def measure(
    model_path: str, threads: int, runs: int, warmup: int, use_xnnpack: bool = True, runtime: str = "interpreter"
) -> dict:
    """Runs in the current process; `run()` calls it in a subprocess per configuration."""
    import numpy as np

    _check_runtime(runtime, use_xnnpack)
    baseline = _vm_hwm_mb()
    t0 = time.perf_counter()
    model = _load(model_path, threads, use_xnnpack, runtime)
    init_ms = (time.perf_counter() - t0) * 1e3
    shape = model.input_shape
    x = _fixed_input(model)
    for _ in range(warmup):
        model.invoke_raw(x)
    times, cpu_times = [], []
    for _ in range(runs):
        c = time.process_time()
        t = time.perf_counter()
        model.invoke_raw(x)
        times.append((time.perf_counter() - t) * 1e3)
        cpu_times.append((time.process_time() - c) * 1e3)
    peak = _vm_hwm_mb()  # before anything below loads the model again
    if runtime == "interpreter":
        where = where_it_runs(model_path, threads, use_xnnpack, interpreter=model)
    else:
        where = where_it_runs(model_path, threads, outputs=model.invoke_raw(x), x=x)
        where["fully_accelerated"] = model.is_fully_accelerated()
    return {
        "model": os.path.basename(model_path),
        "path": os.path.abspath(model_path),
        "file_mb": os.path.getsize(model_path) / 1e6,
        "input_shape": list(shape),
        "input_dtype": np.dtype(model.input_dtype).name,
        "runtime": runtime,
        "threads": threads,
        "xnnpack": use_xnnpack,
        "runs": runs,
        "warmup": warmup,
        **_latency_stats(times),
        "median_cpu_ms": statistics.median(cpu_times),
        "init_ms": init_ms,
        "peak_rss_mb": peak,
        "model_mem_mb": peak - baseline,
        **where,
    }


def run(
    model_path: str, threads: int, runs: int, warmup: int, use_xnnpack: bool = True, runtime: str = "interpreter"
) -> dict:
    """`measure` in a fresh Python process (isolated peak memory)."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"TFLite model not found: {model_path}")
    _check_runtime(runtime, use_xnnpack)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "keras_cmt.tflite.benchmark",
        "--_worker",
        model_path,
        "--threads",
        str(threads),
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
        "--runtime",
        runtime,
    ] + ([] if use_xnnpack else ["--no_xnnpack"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark of {model_path} ({runtime}) with {threads} threads failed: {tail}")
    return json.loads(lines[-1])


def measure_interleaved(
    model_paths: list, threads: int, runs: int, warmup: int, use_xnnpack: bool = True, runtimes=("interpreter",)
) -> list:
    """Invokes every (model, runtime) in turn, `runs` rounds after `warmup`; one dict each, with
    `ratio_to_first` (the first model on the first runtime)."""
    for path in model_paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
    for runtime in runtimes:
        _check_runtime(runtime, use_xnnpack)
    entries = [(path, runtime) for path in model_paths for runtime in runtimes]
    models = [_load(path, threads, use_xnnpack, runtime) for path, runtime in entries]
    inputs = [_fixed_input(model) for model in models]
    for _ in range(warmup):
        for model, x in zip(models, inputs):
            model.invoke_raw(x)
    times = [[] for _ in models]
    for _ in range(runs):
        for model, x, series in zip(models, inputs, times):
            t = time.perf_counter()
            model.invoke_raw(x)
            series.append((time.perf_counter() - t) * 1e3)
    first = statistics.median(times[0])
    results = []
    for (path, runtime), model, x, series in zip(entries, models, inputs, times):
        if runtime == "interpreter":
            where = where_it_runs(path, threads, use_xnnpack, interpreter=model)
        else:
            where = where_it_runs(path, threads, outputs=model.invoke_raw(x), x=x)
        results.append(
            {
                "model": os.path.basename(path),
                "path": os.path.abspath(path),
                "runtime": runtime,
                "threads": threads,
                "xnnpack": use_xnnpack,
                "runs": runs,
                "warmup": warmup,
                "interleaved": True,
                **_latency_stats(series),
                "ratio_to_first": statistics.median(series) / first,
                "file_mb": os.path.getsize(path) / 1e6,
                **where,
            }
        )
    return results


def _runtime_label(r: dict) -> str:
    return RUNTIME_LABELS.get(r.get("runtime", "interpreter"), r.get("runtime", "interpreter"))


def _gpu_cell(r: dict) -> str:
    from keras_cmt.tflite.compatibility import gpu_verdict_text

    return gpu_verdict_text(r) if "gpu_compatible" in r else "-"


def _diff_cell(r: dict) -> str:
    if "max_abs_diff_vs_interpreter" not in r:
        return "-"
    return f"{r['max_abs_diff_vs_interpreter']:.2g}" + (" (fp16)" if r.get("fp16_rounded_output") else "")


def format_interleaved_table(results: list) -> str:
    lines = [
        "| model | runtime | threads | median ms | p10 ms | p90 ms | ratio to first | partitions | "
        "default nodes | GPU Analyzer | max diff vs Interpreter |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {_runtime_label(r)} | {r['threads']} | {r['median_ms']:.2f} | "
            f"{r['p10_ms']:.2f} | {r['p90_ms']:.2f} | {r['ratio_to_first']:.3f} | {r['xnnpack_partitions']} | "
            f"{r['nodes_on_default_kernels']} | {_gpu_cell(r)} | {_diff_cell(r)} |"
        )
    return "\n".join(lines)


def format_table(results: list) -> str:
    header = (
        "model",
        "runtime",
        "threads",
        "median ms",
        "p90 ms",
        "cpu ms",
        "file MB",
        "peak MB",
        "model MB",
        "XNNPACK partitions",
        "default nodes",
        "default ops",
        "GPU Analyzer",
        "max diff vs Interpreter",
    )
    rows = [header]
    for r in results:
        ops = ", ".join(f"{k}x{v}" for k, v in r["default_kernel_ops"].items()) or "-"
        rows.append(
            (
                r["model"],
                _runtime_label(r),
                str(r["threads"]),
                f"{r['median_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['median_cpu_ms']:.2f}",
                f"{r['file_mb']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['model_mem_mb']:.0f}",
                str(r["xnnpack_partitions"]),
                str(r["nodes_on_default_kernels"]),
                ops,
                _gpu_cell(r),
                _diff_cell(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_cmt.tflite.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--runtime",
        nargs="+",
        default=["interpreter"],
        choices=RUNTIMES,
        help="interpreter (LiteRT Interpreter), compiled (CompiledModel, CPU), compiled_fp16 "
        "(CompiledModel with XNNPACK's fp16 inference forced)",
    )
    p.add_argument("--no_xnnpack", action="store_true", help="TFLite's built-in kernels only (interpreter)")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="run all models in one process, in turn, and report ratios to the first (A/B on a busy machine)",
    )
    p.add_argument("--json", default=None, help="write the results here (default: benchmark_results.json)")
    quiet.add_verbose_argument(p)
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(
            json.dumps(
                measure(
                    args.models[0],
                    args.threads[0],
                    args.runs,
                    args.warmup,
                    not args.no_xnnpack,
                    runtime=args.runtime[0],
                )
            )
        )
        return 0
    results = []
    try:
        if args.interleave:
            for threads in args.threads:
                batch = measure_interleaved(
                    args.models, threads, args.runs, args.warmup, not args.no_xnnpack, runtimes=args.runtime
                )
                results.extend(batch)
                print(format_interleaved_table(batch))
        else:
            for model in args.models:
                for runtime in args.runtime:
                    for threads in args.threads:
                        results.append(run(model, threads, args.runs, args.warmup, not args.no_xnnpack, runtime))
                        print(
                            f"{results[-1]['model']} {runtime} threads={threads}: {results[-1]['median_ms']:.2f} ms",
                            file=sys.stderr,
                        )
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.interleave:
        print(format_table(results))
    out = args.json or "benchmark_results.json"
    from keras_cmt.tflite.convert import write_atomically

    write_atomically(out, (json.dumps({"results": results}, indent=1) + "\n").encode())
    print(f"wrote {os.path.abspath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
