"""One-call GPU check of the plain Keras CMT on the JAX and PyTorch backends (no TensorFlow anywhere).

On a lent GPU machine (one H200; Python 3.12 with jax, torch, timm, numpy; no TensorFlow, no network), from the
repository root, with Keras importable (a carried wheel or folder on PYTHONPATH) and the CMT-Ti fixture carried:

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --official PATH/cmt.py \\
        --ti_fixture_dir PATH/fixtures --output_dir $OUT [--budget_s 480] [--train_batch 128] [--compile_official]

Preparing that call here (the folder `.carry` ignored through .git/info/exclude, never committed; Keras 3 needs
namex and optree, which that image lacks):

    echo /.carry/ >> .git/info/exclude; mkdir -p .carry/whl .carry/fixtures .carry/official
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        -d .carry/whl keras==3.15.1 namex optree
    cp ../shared/fixtures/cmt_ti_seed0.pth ../shared/fixtures/cmt_ti_seed0_io.npz .carry/fixtures/
    git -C /work/.mirror/huawei-noah+Efficient-AI-Backbones/repo show HEAD:cmt_pytorch/cmt.py > .carry/official/cmt.py

and the device command (carry [".carry"], timeout_s 600):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl && \\
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --official .carry/official/cmt.py \\
        --ti_fixture_dir .carry/fixtures --output_dir $OUT 2>&1 | tee $OUT/gpu_check.log

and here, without a GPU, the same checks at tiny sizes on the CPU (what the smoke test runs; `--tiny` forces it):

    python -m benchmarks.gpu_check --official /tmp/official_cmt/cmt.py --output_dir /tmp/gpu_check

Why: the project's GPU claims (official logits to 1e-4 on every backend and layout, bfloat16 mixed-precision
training, speed beside the official model) cannot be tested on the CPU-only development machine, and a lent GPU
has minutes of device time, so everything runs in one command under one time budget. Each part runs in its own
process (a Keras backend is fixed at import), in this order, each given what is left of `--budget_s`:

1. `checks` on JAX, then on PyTorch:
   (a) fp32 parity: the official micro fixture (tests/fixtures/cmt_micro_seed0*, 64x64, 10 classes) and CMT-Ti
       (`--ti_fixture_dir`/cmt_ti_seed0*, 160x160; skipped, and said so, when absent), channels_last and
       channels_first, `model.predict_on_batch` against the official logits, max |difference| under three matmul
       settings: `fp32` (TF32 off: `jax.default_matmul_precision("highest")`; torch `fp32_precision = "ieee"` for
       cuBLAS and cuDNN convolutions, or `allow_tf32 = False` on older torch) must be <= 1e-4; `tf32` (forced on)
       and `default` (the backend's own setting, untouched; run first) are reported, since TF32's 10-bit
       mantissa is expected to exceed 1e-4. On a CPU (no TF32) only `fp32` runs.
   (b) bfloat16 mixed precision (`keras.mixed_precision.set_global_policy("mixed_bfloat16")`): the micro model
       trained `--bf16_steps` (30) steps with AdamW on one fixed random batch; every step's loss (recovered from
       Keras' running mean) must be finite and the mean of the last five below the mean of the first five.
2. `train`: CMT-S@224 training throughput in bfloat16, batch `--train_batch` (128), AdamW (1e-3, weight decay
   0.05), cross-entropy on random labels, the batch resident on the GPU: the official model (`--official`, eager,
   `torch.autocast(bfloat16)`, optionally `torch.compile` with `--compile_official`), then ours through
   `model.fit` on each of `--train_configs` (default: jax channels_last; jax under `keras.distribution.DataParallel`
   over every local device, the path of `train --distribution=data_parallel`; torch channels_first); images/s = batch /
   the median step time after `--train_warmup` steps (Keras: the interval between `on_train_batch_end` callbacks,
   which read the loss and so wait for the step), with peak GPU memory. cuDNN autotuning
   (`torch.backends.cudnn.benchmark`) is on for both PyTorch processes, as in the official training recipe.

Prints a line per result and a summary table; writes `gpu_check.json` to `--output_dir` after every part, so an
interrupted run keeps what finished. A part that would outlast the budget stops early (fewer timed steps) or is
skipped, and says so. Exit status 0 even when a check fails: read the table ("FAIL" marks it).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.training_backends import (
    load_atomic_files,
    machine_description,
    peak_rss_mib,
    run_measuring_child,
    step_timer,
)
from benchmarks import variant_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
RESULT_MARKER = "GPU_CHECK_RESULT "
TOLERANCE = 1e-4
TRAIN_CONFIGS = {
    "jax": ("jax", "channels_last"),
    # Keras' distribution API over every local device, as `train --distribution=data_parallel` trains.
    "jax-data_parallel": ("jax", "channels_last"),
    "jax-channels_first": ("jax", "channels_first"),
    "torch": ("torch", "channels_last"),
    "torch-channels_first": ("torch", "channels_first"),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--official", default=None, help="path to the official cmt_pytorch/cmt.py (for part 2)")
    parser.add_argument(
        "--ti_fixture_dir",
        default=None,
        help="folder with cmt_ti_seed0.pth and cmt_ti_seed0_io.npz (default: ../shared/fixtures or "
        "shared/fixtures beside/inside the repository)",
    )
    parser.add_argument("--output_dir", default=os.environ.get("OUT") or "/tmp/gpu_check")
    parser.add_argument("--budget_s", type=float, default=480, help="total seconds for everything")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    parser.add_argument("--skip_checks", action="store_true", help="only part 2")
    parser.add_argument("--skip_train", action="store_true", help="only part 1")
    parser.add_argument("--bf16_steps", type=int, default=30)
    parser.add_argument(
        "--train_configs",
        nargs="+",
        default=["jax", "jax-data_parallel", "torch-channels_first"],
        choices=list(TRAIN_CONFIGS),
    )
    parser.add_argument("--train_variant", default="cmt_s", choices=list(variant_table()))
    parser.add_argument("--train_size", type=int, default=224)
    parser.add_argument("--train_batch", type=int, default=128)
    parser.add_argument("--train_steps", type=int, default=20, help="timed steps")
    parser.add_argument("--train_warmup", type=int, default=5)
    parser.add_argument("--steps_per_execution", type=int, default=1, help="Keras, JAX backend only")
    parser.add_argument("--compile_official", action="store_true", help="torch.compile the official model")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized run (automatic without a GPU)")
    parser.add_argument("--child", nargs=2, metavar=("PART", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- child helpers


class _NoTensorFlow:
    """An import hook that makes `import tensorflow` raise ImportError, as on the GPU machine, so that a hidden
    TensorFlow import fails on a machine that has TensorFlow too (Keras takes the ImportError for "not installed").
    Its spec has no origin, which `importlib.util.find_spec` users (torch._dynamo) read as "nothing to trace"."""

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, self, origin=None)
        return None

    def create_module(self, spec):
        raise ImportError(f"benchmarks.gpu_check: {spec.name} is not available on the GPU machine")

    def exec_module(self, module):
        raise ImportError(f"benchmarks.gpu_check: {module.__name__} is not available on the GPU machine")


def block_tensorflow():
    """Installs `_NoTensorFlow` where TensorFlow is installed (not on the GPU machine, where it is absent)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        sys.meta_path.insert(0, _NoTensorFlow())


def time_left(args):
    return float("inf") if args.deadline is None else args.deadline - time.time()


def device_description(backend):
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    import torch

    return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]


def set_torch_tf32(enabled):
    """Turns TF32 on or off for cuBLAS matmuls and cuDNN convolutions; returns the settings now in force."""
    import torch

    mode = "tf32" if enabled else "ieee"
    try:  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
        return {"matmul": torch.backends.cuda.matmul.fp32_precision, "conv": torch.backends.cudnn.conv.fp32_precision}
    except AttributeError:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
        return {"matmul_allow_tf32": enabled, "cudnn_allow_tf32": enabled}


def precision_setting(backend, setting):
    """A context manager for "default" / "tf32" / "fp32" float32 matmul and convolution precision."""
    import contextlib

    if setting == "default":
        return contextlib.nullcontext()
    if backend == "jax":
        import jax

        value = "tensorfloat32" if setting == "tf32" else "highest"
        if hasattr(jax, "default_matmul_precision"):
            return jax.default_matmul_precision(value)
        jax.config.update("jax_default_matmul_precision", value)  # stays set: "default" runs first
        return contextlib.nullcontext()
    set_torch_tf32(setting == "tf32")
    return contextlib.nullcontext()


def find_ti_fixture(args):
    folders = (
        [args.ti_fixture_dir]
        if args.ti_fixture_dir
        else [os.path.join(os.path.dirname(REPO), "shared", "fixtures"), os.path.join(REPO, "shared", "fixtures")]
    )
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "cmt_ti_seed0.pth")):
            return folder
    return None


def parity(args, backend):
    """(a): max |logit - official| per fixture, data format and precision setting."""
    import keras
    import numpy as np

    import keras_cmt

    with open(os.path.join(FIXTURES, "cmt_micro_seed0.json")) as f:
        micro = json.load(f)["official_CMT_kwargs"]
    micro_config = dict(
        depths=micro["depths"],
        embed_dims=micro["embed_dims"],
        num_heads=micro["num_heads"],
        mlp_ratios=micro["mlp_ratios"],
        stem_channels=micro["stem_channel"],
        head_channels=micro["fc_dim"],
        classes=micro["num_classes"],
    )
    fixtures = [("micro", FIXTURES, "cmt_micro_seed0", 64, lambda **kw: keras_cmt.CMT(**micro_config, **kw))]
    ti_folder = find_ti_fixture(args)
    rows = []
    if ti_folder:
        fixtures.append(("cmt_ti", ti_folder, "cmt_ti_seed0", 160, keras_cmt.CMTTiny))
    else:
        rows.append(
            {
                "check": "parity",
                "fixture": "cmt_ti",
                "status": "skipped",
                "note": "cmt_ti_seed0.pth not found: pass --ti_fixture_dir (carry ../shared/fixtures)",
            }
        )
    for name, folder, stem, size, builder in fixtures:
        io = np.load(os.path.join(folder, stem + "_io.npz"))
        for data_format in ("channels_last", "channels_first"):
            if time_left(args) < 20:
                rows.append(
                    {
                        "check": "parity",
                        "fixture": name,
                        "data_format": data_format,
                        "status": "skipped",
                        "note": "time budget",
                    }
                )
                continue
            keras.config.set_image_data_format(data_format)
            shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
            model = builder(weights=os.path.join(folder, stem + ".pth"), classifier_activation=None, input_shape=shape)
            x = io["input_nhwc"] if data_format == "channels_last" else io["input_nchw"]
            for setting in ("fp32",) if args.tiny else ("default", "fp32", "tf32"):  # CPUs have no TF32
                if time_left(args) < 15:
                    rows.append(
                        {
                            "check": "parity",
                            "fixture": name,
                            "data_format": data_format,
                            "precision": setting,
                            "status": "skipped",
                            "note": "time budget",
                        }
                    )
                    continue
                with precision_setting(backend, setting):
                    model.predict_function = None  # a fresh jit trace under this setting
                    error = float(np.abs(np.asarray(model.predict_on_batch(x)) - io["logits"]).max())
                required = setting == "fp32"
                rows.append(
                    {
                        "check": "parity",
                        "fixture": name,
                        "data_format": data_format,
                        "precision": setting,
                        "max_abs_error": error,
                        "tolerance": TOLERANCE if required else None,
                        "status": ("PASS" if error <= TOLERANCE else "FAIL") if required else "info",
                    }
                )
            del model
            keras.backend.clear_session()
    keras.config.set_image_data_format("channels_last")
    return rows


def loss_recorder(args, min_steps):
    """`benchmarks.training_backends.step_timer` (step end times and running-mean losses), stopping training near
    the deadline once `min_steps` steps are done."""
    return step_timer(stop_when=lambda steps: steps >= min_steps and time_left(args) < 15)


def per_step_losses(running_means):
    """Each step's loss from Keras' running mean over equal-sized batches: l_k = k m_k - (k - 1) m_(k-1)."""
    return [k * m - (k - 1) * prev for k, (m, prev) in enumerate(zip(running_means, [0.0] + running_means), 1)]


def bf16_training(args, backend):
    """(b): the micro model trained in mixed_bfloat16 on one fixed batch: finite, falling loss."""
    import keras
    import numpy as np

    import keras_cmt

    if time_left(args) < 30:
        return [{"check": "bf16_training", "status": "skipped", "note": "time budget"}]
    with open(os.path.join(FIXTURES, "cmt_micro_seed0.json")) as f:
        micro = json.load(f)["official_CMT_kwargs"]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = keras_cmt.CMT(
            depths=micro["depths"],
            embed_dims=micro["embed_dims"],
            num_heads=micro["num_heads"],
            mlp_ratios=micro["mlp_ratios"],
            stem_channels=micro["stem_channel"],
            head_channels=micro["fc_dim"],
            classes=10,
            input_shape=(64, 64, 3),
            classifier_activation=None,
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        rng = np.random.default_rng(0)
        batch = 4 if args.tiny else 32
        x = rng.uniform(-1, 1, (batch, 64, 64, 3)).astype("float32")
        y = rng.integers(0, 10, batch).astype("int32")
        recorder = loss_recorder(args, min_steps=10)
        model.fit(_repeat(x, y), steps_per_epoch=args.bf16_steps, epochs=1, verbose=0, callbacks=[recorder])
        losses = per_step_losses(recorder.losses)
        first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
        ok = bool(np.all(np.isfinite(losses))) and last < first
        return [
            {
                "check": "bf16_training",
                "steps": len(losses),
                "batch": batch,
                "losses": losses,
                "first5_mean": first,
                "last5_mean": last,
                "compute_dtype": model.layers[-2].compute_dtype,
                "variable_dtype": model.layers[-2].variable_dtype,
                "status": "PASS" if ok else "FAIL",
            }
        ]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _repeat(*arrays):
    import keras

    tensors = tuple(keras.ops.convert_to_tensor(a) for a in arrays)  # on the backend's default device
    while True:
        yield tensors


def gpu_memory_peak_mib(backend):
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20 or None
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    except Exception:
        return None


def train_sizes(args):
    if args.tiny:
        return dict(size=64, batch=2, steps=3, warmup=1)
    return dict(size=args.train_size, batch=args.train_batch, steps=args.train_steps, warmup=args.train_warmup)


def train_keras(args, config):
    """(c), ours: `model.fit` of the chosen variant in mixed_bfloat16."""
    import keras
    import numpy as np

    import keras_cmt
    from benchmarks.trained_like_weights import randomize_like_trained

    backend, data_format = TRAIN_CONFIGS[config]
    if backend == "torch":
        import torch

        torch.backends.cudnn.benchmark = True
    s = train_sizes(args)
    keras.config.set_image_data_format(data_format)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    extra = {}
    if config.endswith("data_parallel"):
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        extra["data_parallel_devices"] = len(devices)
    shape = (s["size"], s["size"], 3) if data_format == "channels_last" else (3, s["size"], s["size"])
    model = randomize_like_trained(
        keras_cmt.build_model(args.train_variant, input_shape=shape, classifier_activation=None)
    )
    per_execution = args.steps_per_execution if backend == "jax" else 1
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=per_execution,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(s["batch"],) + shape).astype("float32")
    y = rng.integers(0, 1000, s["batch"]).astype("int32")
    warmup_executions = -(-s["warmup"] // per_execution)
    timed_executions = -(-s["steps"] // per_execution)
    recorder = loss_recorder(args, min_steps=warmup_executions + 2)
    model.fit(
        _repeat(x, y),
        steps_per_epoch=(warmup_executions + timed_executions) * per_execution,
        epochs=1,
        verbose=0,
        callbacks=[recorder],
    )
    periods = [b - a for a, b in zip(recorder.ends, recorder.ends[1:])]
    steps = [p / per_execution for p in periods[warmup_executions:]]
    return throughput_row(
        config,
        s,
        steps,
        sum(periods[:warmup_executions]),
        recorder.losses[-1],
        gpu_memory_peak_mib(backend),
        jit_compile=bool(model.jit_compile),
        steps_per_execution=per_execution,
        data_format=data_format,
        **extra,
    )


def train_official(args, compiled):
    """(c), the official model: eager (or torch.compile), bfloat16 autocast, AdamW."""
    import torch

    from benchmarks.official_pytorch import build_official, load_official, randomize_official_like_trained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    s = train_sizes(args)
    module = load_official(args.official)
    torch.manual_seed(0)
    model = randomize_official_like_trained(build_official(module, args.train_variant, s["size"])).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    forward = torch.compile(model) if compiled else model
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(s["batch"], 3, s["size"], s["size"], device=device)
    y = torch.randint(0, 1000, (s["batch"],), device=device)
    times, loss = [], None
    for i in range(s["warmup"] + s["steps"]):
        if i >= s["warmup"] + 2 and time_left(args) < 15:
            break
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        loss = loss.item()  # waits for the step
        times.append(time.perf_counter() - start)
    name = "official-compiled" if compiled else "official"
    return throughput_row(
        name,
        s,
        times[s["warmup"] :],
        sum(times[: s["warmup"]]),
        loss,
        gpu_memory_peak_mib("torch"),
        timm=module.TIMM_SOURCE,
        data_format="channels_first",
    )


def throughput_row(config, sizes, step_times, warmup_s, last_loss, gpu_peak_mib, **extra):
    median = statistics.median(step_times) if step_times else None
    return dict(
        check="train_throughput",
        config=config,
        image_size=sizes["size"],
        batch=sizes["batch"],
        timed_steps=len(step_times),
        step_times_s=step_times,
        median_step_s=median,
        images_per_s=sizes["batch"] / median if median else None,
        warmup_s=warmup_s,
        last_loss=last_loss,
        gpu_peak_mib=gpu_peak_mib,
        status="info" if median else "FAIL",
        **extra,
    )


def run_child(args):
    part, config = args.child
    block_tensorflow()
    start = time.perf_counter()
    if part == "checks":
        rows, backend = parity(args, config) + bf16_training(args, config), config
    elif config.startswith("official"):
        rows, backend = [train_official(args, compiled=config == "official-compiled")], "torch"
    else:
        rows, backend = [train_keras(args, config)], TRAIN_CONFIGS[config][0]
    versions = {
        n: getattr(sys.modules[n], "__version__", "?") for n in ("keras", "jax", "torch", "numpy") if n in sys.modules
    }
    for row in rows:
        row.update(
            part=part,
            backend=backend,
            devices=device_description(backend),
            versions=versions,
            tensorflow_imported="tensorflow" in sys.modules,
        )
    print(
        RESULT_MARKER
        + json.dumps({"rows": rows, "process_s": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()}),
        flush=True,
    )


# ----------------------------------------------------------------------------------------------- orchestration


def detect_gpu():
    """The GPU's name from nvidia-smi, or None (this process imports no framework)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out.startswith("GPU") else None


def child_env(backend, gpu):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    )
    if not gpu:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def plan(args):
    """(part, config, backend) in the order they run."""
    tasks = []
    if not args.skip_checks:
        tasks += [("checks", b, b) for b in args.backends]
    if not args.skip_train:
        if args.official:
            tasks.append(("train", "official", "torch"))
            if args.compile_official:
                tasks.append(("train", "official-compiled", "torch"))
        tasks += [("train", c, TRAIN_CONFIGS[c][0]) for c in args.train_configs if TRAIN_CONFIGS[c][0] in args.backends]
    return tasks


def run_task(args, part, config, backend, gpu, deadline):
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--child",
        part,
        config,
        "--deadline",
        str(deadline),
        "--bf16_steps",
        str(args.bf16_steps),
        "--train_variant",
        args.train_variant,
        "--train_size",
        str(args.train_size),
        "--train_batch",
        str(args.train_batch),
        "--train_steps",
        str(args.train_steps),
        "--train_warmup",
        str(args.train_warmup),
        "--steps_per_execution",
        str(args.steps_per_execution),
    ]
    command += ["--tiny"] if args.tiny else []
    command += ["--official", os.path.abspath(args.official)] if args.official else []
    command += ["--ti_fixture_dir", os.path.abspath(args.ti_fixture_dir)] if args.ti_fixture_dir else []
    start = time.time()
    records, error = run_measuring_child(
        command, child_env(backend, gpu), RESULT_MARKER, timeout=max(5.0, deadline - time.time() + 10), tail_lines=20
    )
    if records:
        return dict(records[0], wall_s=time.time() - start)
    row = {"part": part, "config": config, "backend": backend, "status": "FAIL"}
    if "stderr_tail" not in error:
        return {"rows": [dict(row, note="killed at the time budget")]}
    return {"rows": [dict(row, note=error["error"], stderr_tail=error["stderr_tail"])], "wall_s": time.time() - start}


def describe(row):
    if row.get("check") == "parity" and "max_abs_error" in row:
        return (
            f"parity {row['fixture']:6s} {row['data_format']:14s} {row['precision']:7s} "
            f"max|err| {row['max_abs_error']:.2e}"
        )
    if row.get("check") == "bf16_training" and "losses" in row:
        return (
            f"bf16 training, {row['steps']} steps, batch {row['batch']}: loss {row['first5_mean']:.3f} -> "
            f"{row['last5_mean']:.3f} (first/last five), compute {row['compute_dtype']}"
        )
    if row.get("check") == "train_throughput" and row.get("images_per_s"):
        memory = f", GPU peak {row['gpu_peak_mib']:,.0f} MiB" if row.get("gpu_peak_mib") else ""
        return (
            f"train {row['config']:20s} {row['images_per_s']:9.1f} images/s (median of {row['timed_steps']} steps,"
            f" {row['median_step_s'] * 1e3:.1f} ms; warm-up {row['warmup_s']:.0f} s{memory})"
        )
    return " ".join(f"{k}={row[k]}" for k in ("check", "fixture", "data_format", "config", "note") if k in row)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args)
    atomic_files = load_atomic_files()
    start = time.time()
    gpu = detect_gpu()
    args.tiny = args.tiny or gpu is None
    print(f"GPU: {gpu or 'none found: running the checks on the CPU at tiny sizes'}", flush=True)
    report = {
        "benchmark": "gpu_check",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": gpu,
        "tiny": args.tiny,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "deadline")},
        "machine": machine_description(),
        "parts": [],
    }
    output = os.path.join(args.output_dir, "gpu_check.json")
    for part, config, backend in plan(args):
        left = args.budget_s - (time.time() - start)
        if left < 30:
            report["parts"].append(
                {
                    "part": part,
                    "config": config,
                    "rows": [
                        {"part": part, "config": config, "backend": backend, "status": "skipped", "note": "time budget"}
                    ],
                }
            )
            print(f"{part} {config}: skipped (time budget)", flush=True)
            continue
        result = run_task(args, part, config, backend, gpu, deadline=time.time() + left - 10)
        report["parts"].append(dict(result, part=part, config=config))
        for row in result["rows"]:
            print(f"[{row.get('status', 'info'):7s}] {backend:5s} {describe(row)}", flush=True)
            for line in row.get("stderr_tail", []):
                print("      " + line)
        print(
            f"    ({part} {config}: {result.get('wall_s', 0):.0f} s, peak RSS "
            f"{result.get('peak_rss_mib', 0):,.0f} MiB)",
            flush=True,
        )
        atomic_files.write_json(output, report)
    rows = [r for p in report["parts"] for r in p["rows"]]
    report["failed"] = [describe(r) for r in rows if r.get("status") == "FAIL"]
    report["tensorflow_imported"] = any(r.get("tensorflow_imported") for r in rows)
    report["total_s"] = time.time() - start
    print_summary(rows, report)
    atomic_files.write_json(output, report)
    print(f"\nsaved {output} ({report['total_s']:.0f} s)")
    return report


def print_summary(rows, report):
    print("\n| backend | check | setting | result | status |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        if r.get("check") == "parity" and "max_abs_error" in r:
            print(
                f"| {r['backend']} | parity {r['fixture']} | {r['data_format']}, {r['precision']} | "
                f"{r['max_abs_error']:.2e} | {r['status']} |"
            )
        elif r.get("check") == "bf16_training" and "losses" in r:
            print(
                f"| {r['backend']} | bf16 training (micro) | {r['steps']} steps | "
                f"{r['first5_mean']:.3f} -> {r['last5_mean']:.3f} | {r['status']} |"
            )
        elif r.get("check") == "train_throughput" and r.get("images_per_s"):
            print(
                f"| {r['backend']} | train {r['config']} | {r['image_size']}px batch {r['batch']}, bf16 | "
                f"{r['images_per_s']:.1f} images/s | {r['status']} |"
            )
        else:
            print(
                f"| {r.get('backend', '-')} | {r.get('check', r.get('part', '-'))} | {r.get('config', '')} | "
                f"{r.get('note', '')} | {r.get('status', '-')} |"
            )
    print(f"\nfailed: {len(report['failed'])}; TensorFlow imported: {report['tensorflow_imported']}")


if __name__ == "__main__":
    main()
