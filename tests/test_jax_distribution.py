"""`--distribution` (Keras' distribution API, JAX): a CMT of the full structure with few channels
(`helpers.TINY_MODEL`) at 32 px for a few steps on two virtual CPU devices in one process and as two processes on
127.0.0.1, against a one-device run on the same global batch; and the flag combinations that cannot work, each
refused in one line. The runs use XLA's fast settings: they time nothing."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

sys.path.insert(0, helpers.REPO)

from keras_cmt.training import callbacks as cb  # noqa: E402
from keras_cmt.training import keras_distribution  # noqa: E402
from keras_cmt.training.keras_distribution import DistributionError, check_flags  # noqa: E402

# --deterministic: the same batches in every run, so that runs differing only in how they are distributed compare.
CONFIG = [
    "--model=cmt_ti",
    "--model_overrides=" + helpers.TINY_MODEL,
    "--dataset=digits",
    "--image_size=32",
    "--batch_size=8",
    "--steps_per_epoch=2",
    "--deterministic",
    "--progress=epoch",
]
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def jax_env(devices=1, **extra):
    return helpers.env(
        KERAS_BACKEND="jax", XLA_FLAGS=f"{FAST_XLA} --xla_force_host_platform_device_count={devices}", **extra
    )


def start(model_dir, *args, devices=1, **extra_env):
    command = [sys.executable, "-m", "keras_cmt.training.train", *CONFIG, f"--model_dir={model_dir}", *args]
    return subprocess.Popen(
        command,
        cwd=helpers.REPO,
        env=jax_env(devices, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process, timeout=420):
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out[-3000:]
    return out


def weights_of(path):
    import h5py
    import numpy as np

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: arrays.__setitem__(name, np.array(item)) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def test_two_devices_match_one_device_on_the_same_global_batch(tmp_path):
    """data_parallel (2 replicas) and model_parallel (the head split over 2 devices) against no distribution."""
    import numpy as np

    runs = {
        "none": ["--jit_compile"],
        "data_parallel": ["--distribution=data_parallel"],
        "model_parallel": ["--distribution=model_parallel", "--model_parallel_size=2"],
    }
    processes = {name: start(tmp_path / name, "--epochs=2", *args, devices=2) for name, args in runs.items()}
    outputs = {name: finish(p) for name, p in processes.items()}
    assert "2 replicas, global batch 8" in outputs["data_parallel"]
    assert "1 replica, global batch 8" in outputs["model_parallel"]  # the mesh's batch axis has one device
    rows = {name: helpers.read_csv_rows(tmp_path / name / "metrics.csv") for name in runs}
    reference = weights_of(tmp_path / "none" / "model.weights.h5")
    for name in ("data_parallel", "model_parallel"):
        assert json.loads((tmp_path / name / "results.json").read_text())["distribution"] == name
        assert len(rows[name]) == 2
        for ours, theirs in zip(rows[name], rows["none"]):
            for key in ("loss", "val_loss", "val_accuracy"):
                assert math.isclose(float(ours[key]), float(theirs[key]), rel_tol=1e-4, abs_tol=1e-5), (name, key)
        weights = weights_of(tmp_path / name / "model.weights.h5")
        assert weights.keys() == reference.keys()
        worst = max(float(np.abs(weights[k] - reference[k]).max()) for k in reference)
        assert worst <= 1e-4, (name, worst)
    # The export of the run with split weights is a whole model, here on this test's backend.
    import keras

    exported = keras.saving.load_model(tmp_path / "model_parallel" / "model.keras")
    logits = np.asarray(exported.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0))
    assert logits.shape == (1, 10) and np.isfinite(logits).all()
    np.testing.assert_array_equal(
        np.asarray(exported.get_layer("head").kernel),
        weights_of(tmp_path / "model_parallel" / "model.weights.h5")["layers/dense/vars/0"],
    )


def _backup(model_dir, process):
    return model_dir / "backup" / f"process-{process}" / "train"


def _backup_epoch(model_dir, process):
    metadata = cb.read_backup_metadata(str(_backup(model_dir, process)))
    return metadata["epoch"] if metadata else 0


def test_two_processes_resume_after_sigkill_with_identical_weights(tmp_path):
    """bfloat16 over two processes joined by keras.distribution.initialize, killed after two epochs, with process 1
    then an epoch behind (as when a kill falls between the two processes' backups); run again, both resume from
    the older backup and end after all the epochs with the same weights and finite losses."""
    model_dir = tmp_path / "run"

    def start_both(epochs):
        port = helpers.free_ports(1)[0]
        return [
            start(
                model_dir,
                f"--epochs={epochs}",
                "--distribution=data_parallel",
                "--mixed_precision",
                "--num_processes=2",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--process_id={i}",
            )
            for i in range(2)
        ]

    first = start_both(epochs=6)
    deadline = time.time() + 420
    try:
        while min(_backup_epoch(model_dir, i) for i in range(2)) < 2:
            assert all(p.poll() is None for p in first), [p.communicate()[0][-3000:] for p in first]
            assert time.time() < deadline, "no two epochs completed in time"
            time.sleep(0.1)
    finally:
        for p in first:
            p.send_signal(signal.SIGKILL)
            p.wait()
    assert not (model_dir / "results.json").exists(), "the run finished before it was killed"
    chief_epoch = _backup_epoch(model_dir, 0)
    behind = cb.read_backup_metadata(str(_backup(model_dir, 1)), epoch=chief_epoch - 1)
    assert behind is not None, "process 1 kept no backup of the epoch before the chief's"
    (_backup(model_dir, 1) / "training_metadata.json").write_text(json.dumps(behind))

    outputs = [finish(p) for p in start_both(epochs=6)]
    assert f"another process's backup is of epoch {chief_epoch - 1}: every process resumes after it" in outputs[0]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["resumed"] and results["replicas"] == 2 and results["epochs_logged"] == 6
    fingerprints = [
        [line.split()[2:] for line in out.splitlines() if line.startswith("FINAL_WEIGHTS_SHA256")] for out in outputs
    ]
    assert len(fingerprints[0]) == len(fingerprints[1]) == 1 and fingerprints[0] == fingerprints[1], fingerprints
    rows = helpers.read_csv_rows(model_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(6))  # the epoch run twice is logged once
    assert all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["val_loss"])) for r in rows)


@pytest.mark.parametrize(
    "kwargs, environ, message",
    [
        (dict(distribution="data_parallel", backend="tensorflow"), {}, "runs on JAX: set KERAS_BACKEND=jax"),
        (dict(distribution="data_parallel", strategy="mirrored"), {}, "--strategy=mirrored exclude each other"),
        (dict(distribution="none", num_processes=2), {}, "--num_processes needs --distribution"),
        (
            dict(distribution="data_parallel", num_processes=2, coordinator_address="127.0.0.1:1234"),
            {},
            "--num_processes=2 needs --process_id",
        ),
        (
            dict(distribution="data_parallel", num_processes=2, process_id=2, coordinator_address="h:1"),
            {},
            "--process_id=2 is not in 0..1",
        ),
        (dict(distribution="data_parallel", num_processes=2, process_id=1), {}, "needs --coordinator_address"),
        (
            dict(distribution="data_parallel", num_processes=2, process_id=1, coordinator_address="10.0.0.1"),
            {},
            "--coordinator_address='10.0.0.1' is not host:port",
        ),
        (
            dict(distribution="data_parallel"),
            {"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"},
            "KERAS_DISTRIBUTION_NUM_PROCESSES='two' is not an integer",
        ),
        (dict(distribution="model_parallel", model_parallel_size=1), {}, "--model_parallel_size=1 must be at least 2"),
    ],
)
def test_flags_that_cannot_work_are_refused_in_one_line(kwargs, environ, message):
    kwargs.setdefault("backend", "jax")
    with pytest.raises(DistributionError) as error:
        check_flags(**kwargs, environ=environ)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_processes_from_flags_or_from_keras_environment_variables():
    environ = {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": "1",
    }
    assert check_flags("data_parallel", backend="jax", environ=environ) == (2, 1, "10.0.0.1:1234")
    assert check_flags("data_parallel", backend="jax", process_id=0, environ=environ) == (2, 0, "10.0.0.1:1234")
    assert check_flags("data_parallel", backend="jax", environ={}) == (1, 0, None)
    assert check_flags("none", backend="tensorflow", environ=environ) == (1, 0, None)


def test_model_parallel_needs_classes_that_split():
    keras_distribution.check_model_parallel_classes("model_parallel", 10, 2)
    keras_distribution.check_model_parallel_classes("data_parallel", 10, 3)
    with pytest.raises(DistributionError, match="the dataset has 10 classes"):
        keras_distribution.check_model_parallel_classes("model_parallel", 10, 3)


def test_the_command_refuses_in_one_line_before_any_work(tmp_path):
    """On TensorFlow, and a global batch that does not split over the devices (after JAX has found them)."""
    command = [sys.executable, "-m", "keras_cmt.training.train", *CONFIG, "--epochs=1"]
    on_tf = subprocess.run(
        [*command, "--distribution=data_parallel", f"--model_dir={tmp_path / 'tf'}"],
        cwd=helpers.REPO,
        env=helpers.env(KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    odd = subprocess.run(
        [*command, "--distribution=data_parallel", "--batch_size=7", f"--model_dir={tmp_path / 'odd'}"],
        cwd=helpers.REPO,
        env=jax_env(2),
        capture_output=True,
        text=True,
        timeout=120,
    )
    for result, message in (
        (on_tf, "runs on JAX: set KERAS_BACKEND=jax (it is tensorflow"),
        (odd, "--batch_size=7 cannot be split over 2 replicas"),
    ):
        assert result.returncode == 2, result.stderr[-2000:]
        # (The helpers' CUDA_VISIBLE_DEVICES="" can add XLA's cuInit record above it on a machine with CUDA.)
        errors = [line for line in result.stderr.splitlines() if "error" in line and "cuInit" not in line]
        assert errors == [result.stderr.strip().splitlines()[-1]] and message in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "tf").exists() and not (tmp_path / "odd").exists()
