"""Runs the test suite once per Keras backend, each in its own process (Keras fixes its backend at import).

    python3 tests/run.py [--jobs N] [pytest arguments ...]

TensorFlow runs every test except those needing channels-first convolutions (TensorFlow has none on the CPU); JAX
and PyTorch run the tests marked `all_backends` (the model, its weights and inference) and `channels_first`. JAX
compiles with XLA's fast settings: the tests time nothing, and XLA's optimising passes dominate their run time.

The runs go side by side, `--jobs` at a time (default 2: one pytest process keeps both cores of a CI machine busy
only part of the time, and JAX's is mostly single-threaded compilation). TensorFlow's run, the longest, is split
in two by test file (most training tests, the main job and the JAX distribution runs; the rest), so the two slots
finish close together. Each run's output is printed whole when it ends. A backend whose package is not installed
is a failure, not a skip. Exit status 0 only if every backend passed.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# TensorFlow's "training" half: the training tests, the main job's, and the JAX training runs that the
# distribution tests start as subprocesses.
TRAINING_FILES = ("test_training_*.py", "test_demo.py", "test_jax_distribution.py")
# These training tests run in the other half, to even the two slots: the unit tests, the run-folder storage tests,
# the SIGKILL resume and the tfds fine-tuning (about 130 s together on a quiet 2-core machine).
NOT_TRAINING = (
    "test_training_units.py",
    "test_training_storage.py",
    "test_training_resume.py",
    "test_training_tfds_finetune.py",
)
# Two slots: TensorFlow's other tests then PyTorch's, and TensorFlow's training tests then JAX's; the files are
# split so that the two finish close together on a 2-core CI machine (each run lists its slowest tests).
RUNS = (  # (name, backend, marks, which files)
    ("tensorflow", "tensorflow", "not channels_first", "others"),
    ("tensorflow-training", "tensorflow", "not channels_first", "training"),
    ("jax", "jax", "all_backends or channels_first", "all"),
    ("torch", "torch", "all_backends or channels_first", "all"),
)


def _files(which):
    training = sorted(
        {
            p
            for pattern in TRAINING_FILES
            for p in glob.glob(os.path.join(HERE, pattern))
            if os.path.basename(p) not in NOT_TRAINING
        }
    )
    if which == "training":
        return training
    if which == "others":
        return sorted(set(glob.glob(os.path.join(HERE, "test_*.py"))) - set(training))
    return [HERE]


def _start(name, backend, marks, which, pytest_args, folder):
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        ).strip()
    # Each run its own pytest temporary folder: concurrent runs must not clean up each other's.
    paths = [] if any(os.path.exists(a.split("::")[0]) for a in pytest_args) else _files(which)
    # The slowest tests are listed with each run's output: where the suite's time goes, for keeping it short.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-m",
        marks,
        "--durations=15",
        f"--basetemp={os.path.join(folder, name)}",
        *paths,
        *pytest_args,
    ]
    log = open(os.path.join(folder, f"{name}.log"), "w+")
    print(f"=== {name} (KERAS_BACKEND={backend}): pytest -m '{marks}' started", flush=True)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.time()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="backends run at once (default 2)")
    args, pytest_args = parser.parse_known_args(argv)
    folder = tempfile.mkdtemp(prefix="keras_cmt_tests_")
    # Test paths on the command line: one TensorFlow run takes them (the split is for the whole suite).
    named_paths = any(os.path.exists(a.split("::")[0]) for a in pytest_args)
    runs = [run for run in RUNS if not (named_paths and run[3] == "training")]
    pending, running, results = list(runs), {}, []
    try:
        while pending or running:
            while pending and len(running) < max(1, args.jobs):
                name, backend, marks, which = pending.pop(0)
                running[name] = _start(name, backend, marks, which, pytest_args, folder)
            time.sleep(1)
            for name, (process, log, start) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                seconds = time.time() - start
                log.seek(0)
                print(f"\n=== {name}: exit {process.returncode} after {seconds:.0f} s", flush=True)
                output = log.read()
                print(output, flush=True)
                log.close()
                results.append((name, process.returncode, seconds))
    finally:
        for process, log, _ in running.values():
            process.kill()
            log.close()
        shutil.rmtree(folder, ignore_errors=True)
    print("=== summary")
    for name, code, seconds in results:
        print(f"{name:<20} {'passed' if code == 0 else f'FAILED (exit {code})':<16} {seconds:6.0f} s")
    return 0 if len(results) == len(runs) and all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
