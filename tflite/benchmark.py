"""Latency, memory and delegation of `.tflite` files with the LiteRT interpreter and XNNPACK.

    python -m keras_cmt.tflite.benchmark MODEL.tflite [MODEL2.tflite ...] [--threads 1 2 4] [--runs 50]
        [--warmup 10] [--no_xnnpack] [--interleave] [--json results.json]

Each (model, threads) pair runs in a fresh subprocess so that its peak memory (VmHWM) is its own:
`peak_rss_mb` is the process peak, `model_mem_mb` the growth over the interpreter-less baseline.
Prints a table and writes the JSON. Latency is the median of `--runs` invokes after `--warmup` invokes,
batch 1, one fixed random input in the model's input range. `cpu ms` is the median CPU time of the
process per invoke (all threads): on a shared machine it is the figure that other load disturbs least
(with 1 thread it is the compute cost itself); wall-clock medians are what an app sees on a quiet core.

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
    return {"median_ms": statistics.median(times), "p10_ms": ordered[len(times) // 10],
            "p90_ms": ordered[(len(times) * 9) // 10]}


def measure(model_path: str, threads: int, runs: int, warmup: int, use_xnnpack: bool = True) -> dict:
    """Runs in the current process; `run()` calls it in a subprocess per configuration."""
    import numpy as np

    from keras_cmt.tflite.runner import LiteRTModel

    baseline = _vm_hwm_mb()
    t0 = time.perf_counter()
    model = LiteRTModel(model_path, num_threads=threads, use_xnnpack=use_xnnpack)
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
    delegation = model.delegation()
    peak = _vm_hwm_mb()
    return {
        "model": os.path.basename(model_path),
        "path": os.path.abspath(model_path),
        "file_mb": os.path.getsize(model_path) / 1e6,
        "input_shape": list(shape),
        "input_dtype": np.dtype(model.input_dtype).name,
        "threads": threads,
        "xnnpack": use_xnnpack,
        "runs": runs,
        "warmup": warmup,
        **_latency_stats(times),
        "median_cpu_ms": statistics.median(cpu_times),
        "init_ms": init_ms,
        "peak_rss_mb": peak,
        "model_mem_mb": peak - baseline,
        **delegation.as_dict(),
    }


def run(model_path: str, threads: int, runs: int, warmup: int, use_xnnpack: bool = True) -> dict:
    """`measure` in a fresh Python process (isolated peak memory)."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"TFLite model not found: {model_path}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "keras_cmt.tflite.benchmark", "--_worker", model_path, "--threads", str(threads),
           "--runs", str(runs), "--warmup", str(warmup)] + ([] if use_xnnpack else ["--no_xnnpack"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark of {model_path} with {threads} threads failed: {tail}")
    return json.loads(lines[-1])


def measure_interleaved(model_paths: list, threads: int, runs: int, warmup: int, use_xnnpack: bool = True) -> list:
    """Invokes the models in turn, `runs` rounds after `warmup`; one dict per model with `ratio_to_first`."""
    from keras_cmt.tflite.runner import LiteRTModel

    for path in model_paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
    models = [LiteRTModel(path, num_threads=threads, use_xnnpack=use_xnnpack) for path in model_paths]
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
    for path, model, series in zip(model_paths, models, times):
        results.append({
            "model": os.path.basename(path), "path": os.path.abspath(path), "threads": threads,
            "xnnpack": use_xnnpack, "runs": runs, "warmup": warmup, "interleaved": True, **_latency_stats(series),
            "ratio_to_first": statistics.median(series) / first, "file_mb": os.path.getsize(path) / 1e6,
            **model.delegation().as_dict(),
        })
    return results


def format_interleaved_table(results: list) -> str:
    lines = ["| model | threads | median ms | p10 ms | p90 ms | ratio to first | partitions |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['model']} | {r['threads']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['ratio_to_first']:.3f} | {r['xnnpack_partitions']} |")
    return "\n".join(lines)


def format_table(results: list) -> str:
    header = ("model", "threads", "median ms", "p90 ms", "cpu ms", "file MB", "peak MB", "model MB",
              "partitions", "default nodes", "default ops")
    rows = [header]
    for r in results:
        ops = ", ".join(f"{k}x{v}" for k, v in r["default_kernel_ops"].items()) or "-"
        rows.append((r["model"], str(r["threads"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                     f"{r['median_cpu_ms']:.2f}", f"{r['file_mb']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['model_mem_mb']:.0f}",
                     str(r["xnnpack_partitions"]), str(r["nodes_on_default_kernels"]), ops))
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
    p.add_argument("--no_xnnpack", action="store_true", help="TFLite's built-in kernels only")
    p.add_argument("--interleave", action="store_true",
                   help="run all models in one process, in turn, and report ratios to the first (A/B on a busy machine)")
    p.add_argument("--json", default=None, help="write the results here (default: benchmark_results.json)")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(measure(args.models[0], args.threads[0], args.runs, args.warmup, not args.no_xnnpack)))
        return 0
    results = []
    try:
        if args.interleave:
            for threads in args.threads:
                batch = measure_interleaved(args.models, threads, args.runs, args.warmup, not args.no_xnnpack)
                results.extend(batch)
                print(format_interleaved_table(batch))
        else:
            for model in args.models:
                for threads in args.threads:
                    results.append(run(model, threads, args.runs, args.warmup, not args.no_xnnpack))
                    print(f"{results[-1]['model']} threads={threads}: {results[-1]['median_ms']:.2f} ms",
                          file=sys.stderr)
    except (FileNotFoundError, RuntimeError) as e:
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
