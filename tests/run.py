"""Runs the test suite once per Keras backend, each in its own process (Keras fixes its backend at import).

    python3 tests/run.py [--jobs N] [pytest arguments ...]

TensorFlow runs every test except those needing channels-first convolutions (TensorFlow has none on the CPU); JAX
and PyTorch run the tests marked `all_backends` (the model, its weights and inference) and `channels_first`. JAX
compiles with XLA's fast settings: the tests time nothing, and XLA's optimising passes dominate their run time.

The backends run side by side, `--jobs` at a time (default 2: the TensorFlow run keeps both cores of a CI machine
busy only part of the time, while JAX's is mostly single-threaded compilation). Each run's output is printed whole
when it ends. A backend whose package is not installed is a failure, not a skip. Exit status 0 only if every
backend passed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = (  # the longest first
    ("tensorflow", "not channels_first"),
    ("jax", "all_backends or channels_first"),
    ("torch", "all_backends or channels_first"),
)


def _start(backend, marks, pytest_args, folder):
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                            " --xla_llvm_disable_expensive_passes=true").strip()
    # Each run its own pytest temporary folder: concurrent runs must not clean up each other's.
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", marks,
               f"--basetemp={os.path.join(folder, backend)}", HERE, *pytest_args]
    log = open(os.path.join(folder, f"{backend}.log"), "w+")
    print(f"=== KERAS_BACKEND={backend}: pytest -m '{marks}' started", flush=True)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.time()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="backends run at once (default 2)")
    args, pytest_args = parser.parse_known_args(argv)
    folder = tempfile.mkdtemp(prefix="keras_cmt_tests_")
    pending, running, results = list(RUNS), {}, []
    try:
        while pending or running:
            while pending and len(running) < max(1, args.jobs):
                backend, marks = pending.pop(0)
                running[backend] = _start(backend, marks, pytest_args, folder)
            time.sleep(1)
            for backend, (process, log, start) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[backend]
                seconds = time.time() - start
                log.seek(0)
                print(f"\n=== KERAS_BACKEND={backend}: exit {process.returncode} after {seconds:.0f} s", flush=True)
                print(log.read(), flush=True)
                log.close()
                results.append((backend, process.returncode, seconds))
    finally:
        for process, log, _ in running.values():
            process.kill()
            log.close()
        shutil.rmtree(folder, ignore_errors=True)
    print("=== summary")
    for backend, code, seconds in results:
        print(f"{backend:<11} {'passed' if code == 0 else f'FAILED (exit {code})':<16} {seconds:6.0f} s")
    return 0 if len(results) == len(RUNS) and all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
