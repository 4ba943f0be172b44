"""Our ONNX and OpenVINO files against the official PyTorch model's ONNX, in the same runtimes, side by side.

    python -m benchmarks.onnx_runtimes --official PATH/cmt_pytorch/cmt.py [--variant cmt_s] [--size 224]
        [--batches 1,8] [--threads 2] [--rounds 3] [--repeats 20] [--out benchmarks/results/onnx_runtimes.json]

Both models get the same trained-like weights (the official model randomised by
`randomize_official_like_trained`, its state dict loaded into ours) and so the same outputs, which the script
checks before it times anything. The official model is exported with `torch.onnx.export` (opset 17); ours with
`keras-cmt export --format onnx` / `--format openvino` (Keras' `model.export` on this process's backend, after
`fuse_for_inference`; input already normalised, as the official one's). The sessions are timed one run each in
turn, run after run, so that a change in the machine's load falls on every row alike. Prints a table of medians and
ratios to the official ONNX in onnxruntime, with each graph's node and Transpose counts; writes the JSON.
"""

import argparse
import collections
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, help="the official cmt_pytorch/cmt.py")
    p.add_argument("--variant", default="cmt_s")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/onnx_runtimes.json")
    return p.parse_args(argv)


def official_onnx(args, folder):
    """(path of the official model's ONNX, its state dict as numpy, a function NCHW batch -> logits)."""
    import torch

    from benchmarks.official_pytorch import build_official, load_official, randomize_official_like_trained

    torch.manual_seed(0)
    model = randomize_official_like_trained(build_official(load_official(args.official), args.variant, args.size))
    model.eval()
    path = os.path.join(folder, "official.onnx")
    example = torch.zeros(1, 3, args.size, args.size)
    torch.onnx.export(
        model,
        (example,),
        path,
        opset_version=17,
        input_names=["image"],
        dynamo=False,
        dynamic_axes={"image": {0: "batch"}},
    )
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return path, state, run


def ours(args, state, folder):
    """Paths of our ONNX and OpenVINO files (when this backend can write them) with the official weights."""
    import keras

    import keras_cmt
    from keras_cmt.tflite import export
    from keras_cmt.weights.loading import assign_state_dict

    model = keras_cmt.build_model(args.variant, input_shape=(args.size, args.size, 3), classifier_activation=None)
    assign_state_dict(model, state, source="the official model")
    paths = {}
    for fmt, suffix in (("onnx", ".onnx"), ("openvino", ".xml")):
        path = os.path.join(folder, f"keras_cmt_{keras.backend.backend()}{suffix}")
        try:
            export.export(model, path, fmt, input_range="normalized")
            paths[fmt] = path
        except export.ExportError as e:
            print(f"skipping our {fmt} file: {e}")
    return paths


def graph_counts(path):
    import onnx

    ops = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    return {"nodes": sum(ops.values()), "Transpose": ops.get("Transpose", 0)}


def sessions(args, paths):
    """name -> (function taking an NHWC batch, layout) for every file in every runtime."""
    import onnxruntime as ort
    import openvino as ov

    runners = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    core = ov.Core()
    ov_config = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"}
    for name, (path, layout) in paths.items():
        if path.endswith(".onnx"):
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            input_name = session.get_inputs()[0].name
            runners[f"{name} in onnxruntime"] = (lambda x, s=session, n=input_name: s.run(None, {n: x})[0], layout)
        compiled = core.compile_model(path, "CPU", ov_config)
        runners[f"{name} in OpenVINO"] = (lambda x, c=compiled: np.asarray(c(x)[0]), layout)
    return runners


def main(argv=None):
    args = parse_args(argv)
    import keras

    batches = [int(b) for b in args.batches.split(",")]
    folder = tempfile.mkdtemp(prefix="onnx_runtimes_")
    official_path, state, official_run = official_onnx(args, folder)
    our_paths = ours(args, state, folder)
    paths = {"official ONNX": (official_path, "NCHW")}
    if "onnx" in our_paths:
        paths["keras_cmt ONNX"] = (our_paths["onnx"], "NHWC")
    if "openvino" in our_paths:
        paths["keras_cmt OpenVINO IR"] = (our_paths["openvino"], "NHWC")
    runners = sessions(args, paths)
    rng = np.random.default_rng(0)
    check = rng.normal(size=(2, args.size, args.size, 3)).astype(np.float32)
    reference = official_run(np.ascontiguousarray(check.transpose(0, 3, 1, 2)))
    errors = {}
    for name, (run, layout) in runners.items():
        x = np.ascontiguousarray(check.transpose(0, 3, 1, 2)) if layout == "NCHW" else check
        errors[name] = float(np.max(np.abs(run(x) - reference)))
    times = {(name, b): [] for name in runners for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            x_nhwc = rng.normal(size=(b, args.size, args.size, 3)).astype(np.float32)
            x_nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
            inputs = {name: x_nchw if layout == "NCHW" else x_nhwc for name, (_, layout) in runners.items()}
            for name, (run, _) in runners.items():
                for _ in range(args.warmup):
                    run(inputs[name])
            for _ in range(args.repeats):  # one run of each file in turn, so that a change in load hits all alike
                for name, (run, _) in runners.items():
                    start = time.perf_counter()
                    run(inputs[name])
                    times[(name, b)].append((time.perf_counter() - start) * 1e3)
    counts = {name: graph_counts(path) for name, (path, _) in paths.items() if path.endswith(".onnx")}
    rows = []
    for b in batches:
        base = statistics.median(times[("official ONNX in onnxruntime", b)])
        for name in runners:
            median = statistics.median(times[(name, b)])
            graph = counts.get(name.rsplit(" in ", 1)[0], {})
            rows.append(
                {
                    "file and runtime": name,
                    "batch": b,
                    "median_ms": round(median, 2),
                    "vs_official_onnxruntime": round(median / base, 3),
                    "max_abs_vs_official_logits": errors[name],
                    **graph,
                }
            )
    print(
        f"{args.variant}@{args.size}, {args.threads} threads, {args.rounds} rounds x {args.repeats} runs, "
        f"our files from the {keras.backend.backend()} backend, OpenVINO in f32"
    )
    print(
        "| file in runtime | batch | median (ms) | vs official ONNX in onnxruntime | nodes | Transpose | "
        "max abs vs official |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['file and runtime']} | {r['batch']} | {r['median_ms']:.2f} | {r['vs_official_onnxruntime']:.2f}x "
            f"| {r.get('nodes', '-')} | {r.get('Transpose', '-')} | {r['max_abs_vs_official_logits']:.2g} |"
        )
    import onnxruntime
    import openvino

    result = {
        "variant": args.variant,
        "size": args.size,
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "backend": keras.backend.backend(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from keras_cmt import atomic_files

    atomic_files.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
